"""The bundled synthetic curriculum: the knowledge tables and generator (tools/bundled/) and the committed
JSONL files (icft.bundled)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from icft.bundled import ALIASES, DATA_DIR, SPLITS, bundled_path, load_bundled
from icft.data.schema import YES_NO_MAYBE

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the generator is not installed: it runs from the checkout's tools/
    sys.path.insert(0, str(ROOT))

from tools.bundled.generate import (  # noqa: E402
    LIST_FIELDS,
    STAGES,
    generate,
    load_general,
    load_knowledge,
    main,
    name_pattern,
    summary,
    without_names,
)
from tools.bundled.writer import LookAlikePicker, known  # noqa: E402


@pytest.fixture(scope="module")
def fresh():
    return generate(seed=0)


@pytest.fixture(scope="module")
def committed():
    return {split: load_bundled(split) for split in SPLITS}


def _records(splits):
    return {split: [ex.to_dict() for ex in examples] for split, examples in splits.items()}


def test_generation_is_deterministic(fresh):
    assert _records(generate(seed=0)) == _records(fresh)
    assert _records(generate(seed=1)) != _records(fresh)


def test_committed_files_equal_a_fresh_generation(tmp_path, capsys):
    # Byte for byte, through the command line: the packaged data cannot go stale.
    main(["--out", str(tmp_path), "--seed", "0"])
    assert "| total |" in capsys.readouterr().out
    for split in SPLITS:
        assert bundled_path(split) == DATA_DIR / f"{split}.jsonl"
        assert (tmp_path / f"{split}.jsonl").read_bytes() == bundled_path(split).read_bytes(), (
            f"{split}.jsonl is stale: run python -m tools.bundled.generate"
        )


def test_every_record_validates(committed, fresh):
    # load_bundled runs every line through Example.from_dict.
    assert _records(committed) == _records(fresh)
    ids = [ex.id for examples in committed.values() for ex in examples]
    assert len(ids) == len(set(ids))
    for split, examples in committed.items():
        for ex in examples:
            assert ex.meta["split"] == split and ex.stage
            assert ex.meta["tier"] in STAGES and ex.stage == STAGES[ex.meta["tier"]]
            assert ex.meta["condition"] and ex.meta["specialty"]
            assert ex.source in ("icft-medical", "icft-general")
            assert ex.difficulty is None  # the trainer's scorers set it


def test_unseen_splits_are_by_condition(committed):
    about = {split: {ex.meta["condition"] for ex in examples} for split, examples in committed.items()}
    assert not about["train"] & about["validation-unseen"]
    assert not about["train"] & about["test-unseen"]
    assert not about["validation-unseen"] & about["test-unseen"]
    # retention probes are about training conditions and facts only
    assert about["validation-retention"] <= about["train"] and about["test-retention"] <= about["train"]
    medical = {c["name"] for c in load_knowledge()}
    train_share = len(about["train"] & medical) / len(medical)
    assert 0.6 <= train_share <= 0.8


def test_retention_probes_are_held_out_but_taught(committed):
    train_questions = {ex.question or ex.prompt for ex in committed["train"]}
    train_text = " ".join(ex.text for ex in committed["train"] if ex.kind == "text")
    for split in ("validation-retention", "test-retention"):
        probes = committed[split]
        assert all(ex.kind in ("qa", "preference") and (ex.options or ex.kind == "preference") for ex in probes)
        # a medical probe is never a training question word for word (a general fact's multiple-choice
        # question and answer pair ask the question that train asks open-ended, with options)
        medical = {ex.question or ex.prompt for ex in probes if ex.source == "icft-medical"}
        assert medical and not medical & train_questions
        for stage in ("general", "knowledge", "clinical"):
            assert sum(ex.stage == stage for ex in probes) >= 150, (split, stage)
        # the right answer of every multiple-choice probe is written in a training text
        for ex in probes:
            if ex.kind == "qa" and ex.options != YES_NO_MAYBE and ex.source == "icft-medical":
                assert ex.options[ex.answer] in train_text or ex.meta["template"].endswith("term"), ex.id


def test_aliases_concatenate_retention_and_unseen(committed):
    for alias, parts in ALIASES.items():
        assert [ex.id for ex in load_bundled(alias)] == [ex.id for part in parts for ex in committed[part]]


def test_train_covers_all_kinds_tiers_and_stages(committed):
    train = committed["train"]
    assert {ex.kind for ex in train} == {"text", "qa", "preference", "dialogue"}
    assert {ex.meta["tier"] for ex in train} == {1, 2, 3}
    assert {ex.stage for ex in train} == {"general", "knowledge", "clinical"}
    general = [ex for ex in train if ex.source == "icft-general"]
    assert {ex.kind for ex in general} == {"text", "qa"} and all(ex.stage == "general" for ex in general)
    qa = [ex for ex in train if ex.kind == "qa"]
    assert any(ex.options == YES_NO_MAYBE for ex in qa)
    assert any(ex.options is None for ex in qa)
    assert any(ex.options and len(ex.options) == 4 for ex in qa)


def test_readme_counts_are_the_generators(committed):
    # The counts table in src/icft/bundled/README.md is what `summary` prints for the committed files, column
    # for column (the README leaves out the tier columns: tiers are stages there).
    readme = (DATA_DIR.parent / "README.md").read_text().split("## Counts", 1)[1]
    written = _markdown_table(readme)
    printed = _markdown_table(summary(committed))
    assert written and set(written) == set(printed) == {*SPLITS, "total"}
    for split, row in written.items():
        assert row == {column: printed[split][column] for column in row}, split
    assert all(committed[split] for split in SPLITS)


def _markdown_table(text: str) -> dict[str, dict[str, str]]:
    """{first cell: {column: cell}} of the first markdown table in `text`."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]  # fmt: skip
    header = rows[0] if rows else []
    return {row[0]: dict(zip(header[1:], row[1:])) for row in rows[1:]}


def test_a_training_value_naming_a_held_out_condition_is_left_unsaid():
    heart_failure = next(c for c in load_knowledge() if c["name"] == "Heart failure")
    assert "atrial fibrillation" in heart_failure["causes"]
    row = without_names(heart_failure, name_pattern(["Atrial fibrillation", "DNA"]))
    assert "atrial fibrillation" not in row["causes"] and row["unsaid"] == {"causes": ["atrial fibrillation"]}
    assert known(row, "causes") == row["causes"] + ["atrial fibrillation"]
    assert row["tests"] == heart_failure["tests"]  # fields that name nothing held out are kept whole
    # whole words only: "DNA" does not match inside another word
    assert name_pattern(["DNA"]).search("anti-double-stranded DNA antibodies")
    assert not name_pattern(["DNA"]).search("dnase")


def test_multiple_choice_options(committed):
    conditions = {c["name"]: c for c in load_knowledge()}
    field_of = {"mc-test": "tests", "mc-treatment": "treatments", "mc-symptom": "symptoms", "mc-cause": "causes"}
    for ex in (ex for examples in committed.values() for ex in examples):
        if ex.kind != "qa" or not ex.options:
            continue
        assert 0 <= ex.answer < len(ex.options)
        lowered = [o.lower() for o in ex.options]
        assert len(set(lowered)) == len(lowered), ex.id  # the right option appears exactly once
        if ex.options == YES_NO_MAYBE:
            continue
        field = field_of.get(ex.meta["template"])
        if field:  # wrong options come from other conditions and are never one of this condition's values
            own = {v.lower() for v in conditions[ex.meta["condition"]][field]}
            assert ex.options[ex.answer].lower() in own
            assert not own & (set(lowered) - {ex.options[ex.answer].lower()}), ex.id


def test_preference_pairs_differ(committed):
    pairs = [ex for examples in committed.values() for ex in examples if ex.kind == "preference"]
    assert pairs and all(ex.chosen != ex.rejected for ex in pairs)
    assert {ex.meta["tier"] for ex in pairs} == {1, 2, 3}  # tier 1: general facts, right versus wrong answer


def test_dialogues_end_with_the_doctor(committed):
    dialogues = [ex for examples in committed.values() for ex in examples if ex.kind == "dialogue"]
    assert dialogues and all(ex.turns[-1]["role"] == "assistant" for ex in dialogues)
    assert all(ex.meta["tier"] == 3 for ex in dialogues)


def test_knowledge_table():
    conditions = load_knowledge()
    assert len(conditions) >= 150
    assert len({c["specialty"] for c in conditions}) >= 15
    for c in conditions:
        for field in ("name", "specialty", "definition"):
            assert isinstance(c[field], str) and c[field].strip(), (c["name"], field)
        for field in LIST_FIELDS:
            assert c[field] and all(isinstance(v, str) and v.strip() for v in c[field]), (c["name"], field)
        assert 3 <= len(c["symptoms"]) <= 5, c["name"]
        assert c["definition"].startswith(c["name"]), c["name"]


def test_general_table():
    facts = load_general()
    assert len(facts) >= 80
    assert len({f["subject"] for f in facts}) == len(facts)
    for f in facts:
        assert f["fact"] and f["question"] and f["answer"]
        assert len(set(f["distractors"])) == 3 and f["answer"] not in f["distractors"]


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split"):
        bundled_path("dev")
    with pytest.raises(ValueError, match="unknown split"):
        load_bundled("dev")


def test_load_bundled_names_the_bad_line(tmp_path, monkeypatch):
    import icft.bundled as bundled

    (tmp_path / "train.jsonl").write_text(json.dumps({"id": "x", "kind": "qa", "source": "s"}) + "\n")
    monkeypatch.setattr(bundled, "DATA_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"train.jsonl:1: field 'question'"):
        load_bundled("train")


def test_look_alike_picker_puts_the_answer_on_top_at_chance_and_takes_the_nearest():
    # A planted cue: an option's score is its length. Wrong options are candidates 1..20 characters long.
    picker = LookAlikePicker(lambda kind, options: [float(len(o)) for o in options])
    candidates = ["x" * n for n in range(1, 21)]
    on_top = 0
    for length in range(5, 15):
        for _ in range(12):
            wrong = picker.order("qa", "y" * length, candidates, 3)[:3]
            assert all(abs(len(w) - length) <= 3 for w in wrong)  # the nearest scores, on both sides
            on_top += all(len(w) < length for w in wrong)
    assert on_top == 120 // 4  # exactly chance: the answer is the cue's top pick in 1 of 4 probes
    # Without a candidate above the answer it is on top whatever the tally says, and the order is by distance.
    assert picker.order("qa", "y" * 30, candidates, 2)[:2] == ["x" * 20, "x" * 19]


def test_retention_probes_wrong_options_are_as_likely_as_train_answers_to_have_been_right(committed):
    # The cue the picker removes: answers of retention probes were right options in training, wrong options
    # mostly wrong ones. Per option text, the share of training appearances as the right option is compared.
    from collections import Counter

    from icft.evaluation.baselines import choices, is_choice, item_type

    right, seen = Counter(), Counter()
    for ex in committed["train"]:
        if is_choice(ex):
            options, gold = choices(ex)
            for i, option in enumerate(options):
                right[option.lower()] += i == gold
                seen[option.lower()] += 1
    for split in ("validation-retention", "test-retention"):
        gold_share, wrong_share = [], []
        for ex in committed[split]:
            if is_choice(ex) and item_type(ex) == "mc":
                options, gold = choices(ex)
                shares = [(right[o.lower()] + 1) / (seen[o.lower()] + 4) for o in options]
                gold_share.append(shares[gold])
                wrong_share += [s for i, s in enumerate(shares) if i != gold]
        assert abs(sum(gold_share) / len(gold_share) - sum(wrong_share) / len(wrong_share)) < 0.03, split
