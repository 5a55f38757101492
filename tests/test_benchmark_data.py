"""The bundled evaluation files measure knowledge, not leakage or surface cues.

- No field of a record about training conditions (train, and the retention files: validation-retention is
  the training runs' validation file) names an unseen condition or fact, and no training text quotes an
  unseen condition's facts.
- Simple cheats that read only the surface of an item (first option, longest option, the option repeating
  the question, the most frequent label, a bag-of-words classifier fitted on train) stay within 5 points of
  chance on every evaluation file. `pytest -s` prints the table (also: python benchmarks/cheat_scores.py).
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import pytest

from icft.bundled import SPLITS, load_bundled
from icft.evaluation.baselines import CHEATS, cheat_rules, cheat_scores

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the generator's tables are not installed: they are read from tools/
    sys.path.insert(0, str(ROOT))

from tools.bundled.generate import load_general, load_knowledge  # noqa: E402

EVAL_FILES = SPLITS[1:]
UNSEEN_FILES = ("validation-unseen", "test-unseen")
TRAINED_FILES = ("train", "validation-retention", "test-retention")  # about training conditions and facts
FIELDS = ("symptoms", "causes", "tests", "treatments", "red_flags")


@pytest.fixture(scope="module")
def files():
    return {split: load_bundled(split) for split in SPLITS}


def _strings(value) -> list[str]:
    """Every string in a record: its fields, options, dialogue turns and meta."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


def named_unseen(records: list[dict], names: set[str]) -> list[tuple[str, str]]:
    """(record id, name) for every unseen name found, as a whole word in any case, in any field of a record."""
    patterns = {name: re.compile(r"\b" + re.escape(name) + r"\b", re.IGNORECASE) for name in sorted(names)}
    found = []
    for record in records:
        text = "\n".join(_strings(record)).lower()  # a name never spans two fields
        found += [(record["id"], name) for name, pattern in patterns.items()
                  if name.lower() in text and pattern.search(text)]  # fmt: skip
    return found


def _unseen_names(files) -> set[str]:
    """The conditions and general facts the unseen files are about."""
    return {ex.meta["condition"] for split in UNSEEN_FILES for ex in files[split]}


def test_unseen_files_are_about_every_held_out_condition_and_fact(files):
    # the names the checks below search for: every table entry that has no training example
    trained = {ex.meta["condition"] for ex in files["train"]}
    tables = {c["name"] for c in load_knowledge()} | {f["subject"] for f in load_general()}
    assert _unseen_names(files) == tables - trained


def test_no_record_about_training_conditions_names_an_unseen_one(files):
    names = _unseen_names(files)
    for split in TRAINED_FILES:
        found = named_unseen([ex.to_dict() for ex in files[split]], names)
        assert not found, (split, len(found), found[:10])


def test_the_name_check_finds_a_planted_name_in_real_training_records(files):
    records = copy.deepcopy([ex.to_dict() for ex in files["train"]])
    names = _unseen_names(files)
    name = min(names)
    dialogue = next(r for r in records if r["kind"] == "dialogue")
    dialogue["turns"][-1]["content"] += f" It is not {name.upper()}."  # deep in a field, in another case
    options = next(r for r in records if r["kind"] == "qa" and r.get("options") and r["id"] != dialogue["id"])
    options["options"][0] += f" {name}s-like"  # not a whole word: not a name
    assert named_unseen(records, names) == [(dialogue["id"], name)]


def _all_text(ex) -> str:
    return "\n".join(_strings(ex.to_dict())).lower()


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


def quoted(text: str, phrases: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(condition or fact, phrase) for every phrase of 4 characters or more found as whole words in `text`."""
    return [
        (about, phrase) for about, group in phrases.items() for phrase in group
        if len(phrase) >= 4 and phrase in text  # a plain substring first: the search below is slow on its own
        and re.search(r"(?<![a-z0-9])" + re.escape(phrase) + r"(?![a-z0-9])", text)
    ]  # fmt: skip


def test_no_training_text_quotes_an_unseen_condition_or_fact(files):
    phrases = _unseen_facts(files)
    assert set(phrases) == _unseen_names(files)  # every held-out condition and general fact is checked
    for split in TRAINED_FILES:
        found = quoted("\n".join(_all_text(ex) for ex in files[split]), phrases)
        assert not found, (split, found[:10])


def test_the_quote_check_finds_a_planted_fact_in_real_training_text(files):
    phrases = _unseen_facts(files)
    unseen = min(c for c in phrases if any(len(p) > 30 for p in phrases[c]))  # one with a definition
    definition = max(phrases[unseen], key=len)
    train_text = "\n".join(_all_text(ex) for ex in files["train"])
    assert quoted(train_text, phrases) == []
    planted = train_text.replace("\n", f"\n{definition} ", 1)
    assert (unseen, definition) in quoted(planted, phrases)


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
