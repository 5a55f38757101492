"""The bundled evaluation files measure knowledge, not leakage or surface cues.

- No training example names a condition of an unseen file or quotes one of its facts.
- Simple cheats that read only the surface of an item (first option, longest option, the option repeating
  the question, the most frequent label, a bag-of-words classifier fitted on train) stay within 5 points of
  chance on every evaluation file. `pytest -s` prints the table (also: python benchmarks/cheat_scores.py).
"""

from __future__ import annotations

import re

import pytest

from icft.bundled import SPLITS, load_bundled
from icft.bundled.generate import load_general, load_knowledge
from icft.evaluation.baselines import CHEATS, cheat_rules, cheat_scores

EVAL_FILES = SPLITS[1:]
FIELDS = ("symptoms", "causes", "tests", "treatments", "red_flags")


@pytest.fixture(scope="module")
def files():
    return {split: load_bundled(split) for split in SPLITS}


def _all_text(ex) -> str:
    parts = [ex.text, ex.question, ex.context, ex.prompt, ex.chosen, ex.rejected, *(ex.options or [])]
    parts += [turn["content"] for turn in ex.turns or []]
    return " ".join(p for p in parts if p).lower()


def _unseen_facts(files) -> dict[str, set[str]]:
    """{condition or fact: phrases}: names, definitions and table values of unseen conditions and facts,
    less what training conditions' own table rows say (a value two conditions share, such as a common test,
    or a training condition caused by an unseen one, "atrial fibrillation" for a stroke, is no leak: it
    is the training condition's own fact)."""
    train_conditions = {ex.meta["condition"] for ex in files["train"]}
    conditions, facts = load_knowledge(), load_general()
    own_rows = [c for c in conditions if c["name"] in train_conditions]
    taught = {v.lower() for c in own_rows for f in FIELDS for v in c[f]}
    taught |= {v.lower() for f in facts if f["subject"] in train_conditions for v in (f["answer"], *f["distractors"])}
    row_text = " | ".join(v for c in own_rows for v in (c["definition"], *(x for f in FIELDS for x in c[f]))).lower()
    phrases: dict[str, set[str]] = {}
    for c in conditions:
        if c["name"] not in train_conditions:
            values = {v.lower() for f in FIELDS for v in c[f]} - taught
            found = {c["name"].lower(), c["definition"].lower(), *values}
            phrases[c["name"]] = {p for p in found if p not in row_text}
    for f in facts:
        if f["subject"] not in train_conditions:
            # the sentence and the question: an answer alone is often a common word ("three", "green")
            phrases[f["subject"]] = {f["fact"].lower(), f["question"].lower()}
    return phrases


def test_no_unseen_condition_or_fact_in_training_text(files):
    train_text = "\n".join(_all_text(ex) for ex in files["train"])
    phrases = _unseen_facts(files)
    assert len(phrases) == 27 * 2 + 17 * 2  # every held-out condition and general fact is checked
    leaks = [
        (about, phrase) for about, group in phrases.items() for phrase in group
        if len(phrase) >= 4 and re.search(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", train_text)
    ]  # fmt: skip
    assert not leaks, leaks[:10]


def test_the_leak_check_finds_a_planted_leak(files):
    # the check above is not vacuous: one unseen condition's name in a training text is found
    unseen = next(ex.meta["condition"] for ex in files["validation-unseen"] if ex.source == "icft-medical")
    text = f"Patients sometimes confuse this with {unseen.lower()}."
    assert re.search(r"(?<![a-z0-9])" + re.escape(unseen.lower()) + r"(?![a-z0-9])", text)
    assert unseen in _unseen_facts(files)


@pytest.fixture(scope="module")
def cheats(files):
    rules = cheat_rules(files["train"])
    table = {split: cheat_scores(rules, files[split]) for split in EVAL_FILES}
    print("\n| file | items | chance | " + " | ".join(CHEATS) + " |")
    for split, scores in table.items():
        print(f"| {split} | {int(scores['n'])} | " + " | ".join(f"{scores[k]:.3f}" for k in ("chance", *CHEATS)) + " |")
    return table


@pytest.mark.parametrize("cheat", CHEATS)
@pytest.mark.parametrize("split", EVAL_FILES)
def test_surface_cheats_stay_near_chance(cheats, split, cheat):
    scores = cheats[split]
    assert scores["n"] >= 300
    assert abs(scores[cheat] - scores["chance"]) <= 0.05, (split, cheat, scores)


def test_preference_openings_are_balanced(files):
    for split in SPLITS:
        pairs = [ex for ex in files[split] if ex.kind == "preference" and ex.chosen.startswith(("Yes.", "No."))]
        if pairs:
            yes = sum(ex.chosen.startswith("Yes.") for ex in pairs) / len(pairs)
            assert 0.4 <= yes <= 0.6, (split, yes)
