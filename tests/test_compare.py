"""`icft compare` end to end on a tiny model: every method trains on the same budget, results are aggregated."""

from __future__ import annotations

import json

import pytest

from icft.config import load_config
from icft.recipes.compare import METHOD_OVERRIDES, method_config, results_table, verdicts

pytestmark = pytest.mark.slow


def test_methods_are_config_diffs_of_one_recipe():
    base = load_config(None, ["train.lr=0.003"])
    icft = method_config(base, "icft", seed=5)
    assert icft.memory.enabled and icft.curriculum.order == "curriculum" and icft.curriculum.pacing == "sqrt"
    assert icft.train.seed == 5 and icft.train.max_steps == base.train.max_steps
    mixed = method_config(base, "lora-mixed", 0)
    assert mixed.curriculum.order == "mixed" and not mixed.memory.enabled and mixed.train.lr == 0.003
    seq = method_config(base, "lora-sequential", 0)
    assert seq.curriculum.pacing == "none" and not seq.memory.enabled
    full = method_config(base, "full-ft", 0)
    assert full.peft.method == "full" and full.train.lr == base.compare.full_ft_lr
    assert set(METHOD_OVERRIDES) == set(base.compare.methods)
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        method_config(base, "magic", 0)


def test_verdicts_call_ties_within_one_std():
    results = {
        "icft": {"accuracy": {"mean": 0.60, "std": 0.02}, "forgetting": {"mean": 0.05, "std": 0.01}},
        "lora-mixed": {"accuracy": {"mean": 0.50, "std": 0.02}, "forgetting": {"mean": 0.02, "std": 0.01}},
        "base": {"accuracy": {"mean": 0.59, "std": 0.0}},
    }
    lines = "\n".join(verdicts(results))
    assert "**MC accuracy (test)**: wins vs lora-mixed; ties with base; loses to none." in lines
    assert "**forgetting (val)**: wins vs none; ties with none; loses to lora-mixed." in lines
    assert "0.600 ± 0.020" in results_table(results, load_config())


def test_compare_runs_every_method_and_writes_report(tiny_llama_dir, staged_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    from icft.recipes.compare import compare

    train, val = staged_data
    config = load_config(None, [
        f"model.name={tiny_llama_dir}", "model.max_length=48", f"data.train=[{train}]", f"data.validation=[{val}]",
        "train.max_steps=6", "train.batch_size=4", "train.save_every=6", "train.eval_max_examples=6",
        "memory.ltm_capacity=8", "compare.methods=[base, lora-sequential, icft]", "compare.seeds=[0, 1]",
        f"compare.test=[{train}]", "compare.max_test_examples=3",
    ])  # fmt: skip
    results = compare(config, tmp_path / "cmp")
    saved = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert saved.keys() == {"base", "lora-sequential", "icft"} == results.keys()
    for method in ("lora-sequential", "icft"):
        assert saved[method]["accuracy"]["n"] == 2 and saved[method]["accuracy"]["std"] >= 0
        assert saved[method]["trainable_params"]["mean"] > 0
        assert "forgetting" in saved[method] and "preference_accuracy" in saved[method]
        assert (tmp_path / "cmp" / method / "seed1" / "adapter").is_dir()
    assert saved["base"]["accuracy"]["std"] == 0.0
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| metric | base | lora-sequential | icft |" in report and "Where ICFT wins, ties or loses" in report
    for plot in ("learning_curves.png", "accuracy_matrices.png", "forgetting.png"):
        assert (tmp_path / "cmp" / plot).stat().st_size > 1000
