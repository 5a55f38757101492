"""benchmarks/real_smollm2.py (issue 27): its held-out items are never trained on, and its table and plot
read the per-item scores the way they say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_smollm2.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("real_smollm2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_smollm2"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not (SHARED / "pubmedqa" / "train.jsonl").is_file(),
                    reason="../shared/data (the real medical sets) is not beside this checkout")  # fmt: skip
def test_held_out_items_share_no_id_question_focus_or_group_with_training(bench):
    sizes = bench.Sizes(train=0, test=0, validation=0)  # every item: the check covers all of them
    split = bench.build(SHARED, sizes)
    for name in bench.MEDICAL:
        assert split["test"][name] and split["validation"][name] and split["train"][name], name
    assert set(bench.disjointness(split).values()) == {0}

    def norm(examples, text):
        return {bench.normalise(text(ex)) for ex in examples}

    train, test = split["train"], split["test"]
    # checked here again without the module's helpers: ids, question texts, foci, MEDIQA questions
    all_train = [ex for group in train.values() for ex in group]
    all_held = [ex for part in ("test", "validation") for group in split[part].values() for ex in group]
    assert not {ex.id for ex in all_train} & {ex.id for ex in all_held}
    assert not norm(train["mmlu_medical"], lambda ex: ex.question) & norm(test["mmlu_medical"], lambda ex: ex.question)
    assert not norm(train["medquad"], lambda ex: ex.question) & norm(test["medquad"], lambda ex: ex.question)
    assert not norm(train["medquad"], lambda ex: ex.meta["focus"]) & norm(test["medquad"], lambda ex: ex.meta["focus"])
    assert not norm(train["mediqa"], lambda ex: ex.prompt) & norm(test["mediqa"], lambda ex: ex.prompt)
    assert not ({ex.meta["question_id"] for ex in train["mediqa"]}
                & {ex.meta["question_id"] for ex in test["mediqa"] + split["validation"]["mediqa"]})  # fmt: skip
    assert not norm(train["chatdoctor"], lambda ex: ex.turns[0]["content"]) & norm(
        test["chatdoctor"], lambda ex: ex.turns[0]["content"])  # fmt: skip
    # the general sets are not trained on, and the own-voice questions are not the accuracy questions
    general_ids = {ex.id for ex in test["mmlu_general"]}
    assert not general_ids & {ex.id for ex in all_train}
    assert not general_ids & {ex.id.removeprefix("voice/") for ex in test["voice_prompts"]}
    # the check is not vacuous: a training item moved into the test set is found, by id, text and group
    split["test"]["medquad"].append(train["medquad"][0])
    found = bench.disjointness(split)
    assert found["ids"] == 1 and found["questions"] >= 1 and found["medquad_foci"] >= 1


def _record(seed: int, medical: float, voice: float, general_hits: list[int]) -> dict:
    """A synthetic eval.json: per-item scores on each set the table pools."""
    return {"seed": seed, "sets": {
        "pubmedqa": {"metrics": {"accuracy": 0.5}, "items": {f"p{i}": {"hit": i % 2} for i in range(10)}},
        "chatdoctor": {"metrics": {"answer_nll": medical}, "items": {f"c{i}": {"answer_nll": medical + 0.01 * i}
                                                                     for i in range(10)}},
        "mmlu_general": {"metrics": {"accuracy": sum(general_hits) / len(general_hits)},
                         "items": {f"g{i}": {"hit": h} for i, h in enumerate(general_hits)}},
        "own_voice": {"metrics": {"answer_nll": voice}, "items": {f"v{i}": {"answer_nll": voice} for i in range(10)}},
    }}  # fmt: skip


def test_summary_table_and_plot_on_synthetic_numbers(bench, tmp_path):
    same = [1, 0] * 5
    evals = {
        "base": {0: _record(0, 2.0, 1.0, same)},
        # forgets: its own-voice NLL rises by 0.5 in both seeds; learns: medical NLL drops by 0.4
        "lora-sequential": {0: _record(0, 1.6, 1.5, same), 1: _record(1, 1.6, 1.5, same)},
        "icft": {0: _record(0, 1.7, 1.1, same), 1: _record(1, 1.7, 1.1, same)},
        "icft a=0.5": {0: _record(0, 1.9, 1.0, same), 1: _record(1, 1.9, 1.0, same)},
    }
    summary = bench.summarise(evals)
    seq = summary["vs_base"]["lora-sequential"]
    assert seq["medical_nll"]["mean"] == pytest.approx(0.4) and seq["medical_nll"]["significant"]
    assert seq["own_voice"]["mean"] == pytest.approx(-0.5) and seq["own_voice"]["significant"]
    assert seq["general_accuracy"]["mean"] == 0 and not seq["general_accuracy"]["significant"]
    assert seq["medical_accuracy"]["mean"] == 0  # pubmedqa hits equal to base's
    ours = summary["vs_reference"]["lora-sequential"]
    assert ours["medical_nll"]["mean"] == pytest.approx(-0.1)  # icft gains less medical NLL ...
    assert ours["own_voice"]["mean"] == pytest.approx(0.4)  # ... and keeps more of its voice
    assert "icft" not in summary["vs_reference"]

    table = bench.main_table(summary)
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == {"lora-sequential", "icft", "icft a=0.5"}
    assert "**-0.500 [-0.500, -0.500]**" in rows["lora-sequential"]  # forgetting, bold: it excludes 0
    assert rows["icft"].count("–") == 4  # no icft-minus-icft
    words = "\n".join(bench.plain_words(summary))
    assert "own-voice NLL drop: ahead" in words and "medical answer NLL drop: behind" in words
    assert "a=0.5" not in words

    path = tmp_path / "plot.png"
    bench.plot(summary, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    text = bench.report(summary, evals, {"mmlu_general/accuracy": {"random": 0.25}}, ["setup"], ["note"])
    assert text.count("\n| method |") == 1 and "plot.png" in text and "0.250" in text
