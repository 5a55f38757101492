"""`make demo`'s recipe (icft.recipes.demo): its plumbing on a tiny model and tiny budget, the real
curriculum's held-out items never trained on, and a summary that calls noise noise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icft.config import load_config
from icft.recipes import demo

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = ["train.max_steps=3", "train.batch_size=4", "model.max_length=48", "train.eval_max_examples=2",
        "memory.stm_capacity=8", "memory.ltm_capacity=8"]  # fmt: skip


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("ICFT_QUIET", "1")


def test_configs_load_and_name_the_embedded_default():
    for name in ("demo.yaml", "demo-real.yaml", "compare-demo.yaml"):
        config = load_config(ROOT / "configs" / name)
        assert config.model.name == "smollm2-135m-instruct" and config.memory.enabled
        assert config.curriculum.stages == ["general", "knowledge", "clinical"]


@pytest.mark.slow
def test_demo_on_a_tiny_model_prints_every_step_and_evaluates_both_models_on_the_same_items(
        tiny_llama_dir, tmp_path, capsys):  # fmt: skip
    config = load_config(ROOT / "configs" / "demo.yaml", [f"model.name={tiny_llama_dir}", *TINY])
    sizes = demo.Sizes(bundled_test=3, new_tokens=4)
    out = demo.run_demo(config, tmp_path / "demo", None, sizes)
    printed = capsys.readouterr().out
    for title in ("== 1. Data", "== 2. ICFT training", "== 3. Held-out items", "== 4. Held-out questions",
                  "== 5. What changed", "In plain words:", "one seed"):  # fmt: skip
        assert title in printed
    record = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert record == json.loads(json.dumps(out))
    for group, result in record["evaluation"].items():
        ids = [[item["id"] for item in result[model]["items"]] for model in ("untrained", "trained")]
        assert ids[0] == ids[1] and len(ids[0]) == 3, group  # the same held-out items for both models
        assert result["baselines"]["random"]  # the trivial baselines on those items
    assert {r["group"] for r in record["rows"]} == {"general", "knowledge", "clinical"}
    answers = record["answers"]
    assert len(answers) == 3 and all(len(a["retrieved"]) == demo.RETRIEVE for a in answers)
    memory_ids = {json.loads(line)["example"]["id"] for line in (tmp_path / "demo" / "memory" / "memory.jsonl").open()}
    assert all(hit["id"] in memory_ids for a in answers for hit in a["retrieved"])  # facts from the run's LTM
    assert (tmp_path / "demo" / "adapter").is_dir()


def test_summary_calls_a_change_inside_its_interval_noise_and_says_which_way_the_others_went():
    rows = [demo.Row("pubmedqa", "accuracy", 30, 0.50, 0.60, -0.10, 0.30, 0.55, "majority"),
            demo.Row("medquad", "answer_nll", 12, 2.40, 2.00, -0.60, -0.20),
            demo.Row("mediqa2019", "preference_accuracy", 16, 0.50, 0.25, -0.45, -0.05, 0.5, "random"),
            demo.Row("pubmedqa", "macro_f1", 30, 0.30, 0.35)]  # fmt: skip
    stage_eval = {"stages": ["general", "clinical"], "nll_matrix": [[2.0, 3.0], [2.5, 1.0]]}
    lines = demo.summary(rows, stage_eval, {"steps": 9, "tokens": 900})
    text = "\n".join(lines)
    assert "pubmedqa accuracy on 30 held-out items: no change beyond noise" in text
    assert "above answering without a model (majority 0.550)" in text
    assert "medquad answer_nll on 12 held-out items: better after training, 2.400 -> 2.000" in text
    assert "mediqa2019 preference_accuracy on 16 held-out items: worse after training" in text
    assert "at or below answering without a model (random 0.500)" in text
    assert "no per-item interval" in text and "one seed" in text
    assert "2.000 right after it and 2.500 at the end; it rose" in text


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
def test_real_curriculum_holds_out_groups_never_trained_on():
    split = demo.real_curriculum(SHARED, demo.Sizes(train=400, validation=20))
    train, held = split["train"], split["validation"] + split["test"]
    assert {ex.stage for ex in train} == {"general", "knowledge", "clinical"}
    assert {ex.source.split("/")[0] for ex in split["test"]} == {"pubmedqa", "medquad"}
    assert not {ex.id for ex in train} & {ex.id for ex in held}
    questions = lambda xs: {ex.question or ex.prompt or ex.turns[0]["content"] for ex in xs}  # noqa: E731
    assert not questions(train) & questions(held)
    foci = lambda xs: {ex.meta[k] for ex in xs for k in ("focus", "question_id") if k in ex.meta}  # noqa: E731
    assert foci(held) and not foci(train) & foci(held)  # MedQuAD focus, MEDIQA question: one side only
    assert demo.real_curriculum(SHARED, demo.Sizes(train=400, validation=20)) == split  # the same every time
