"""`icft compare`: methods as config diffs, resuming an output folder, per-item results, the report; and one
end-to-end run on a tiny model (slow)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from icft.config import RunConfig, load_config, save_config
from icft.errors import ConfigError
from icft.evaluation.report import (
    below_baselines,
    difference_table,
    first_stage_table,
    in_plain_words,
    mean_matrix,
    results_table,
)
from icft.recipes import compare as C
from icft.recipes.compare import METHOD_OVERRIDES, method_config


def table(text: str | list[str], header: str) -> dict[str, dict[str, str]]:
    """The markdown table whose first header cell is `header`, parsed: {row name: {column: cell}}."""
    lines = text.splitlines() if isinstance(text, str) else text
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")])
    columns, rows = block[0], block[2:]  # block[1] is the rule
    return {r[0]: dict(zip(columns[1:], r[1:])) for r in rows}


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
    assert set(base.compare.methods) <= set(METHOD_OVERRIDES)
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        method_config(base, "magic", 0)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "scorers"
                   else {prefix + key: value})  # fmt: skip
    return out


def _diff(a: RunConfig, b: RunConfig) -> dict[str, tuple]:
    fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
    return {k: (fa[k], fb[k]) for k in fa if k != "name" and fa[k] != fb[k]}


def test_new_methods_and_ablations_change_only_their_keys():
    base = load_config()
    icft = method_config(base, "icft", 0)
    assert _diff(method_config(base, "icft-no-consistency", 0), icft) == {"loss.consistency": (0.0, 1.0)}
    assert _diff(method_config(base, "icft-no-stm", 0), icft) == {"memory.stm_replay": (0.0, 0.125)}
    assert _diff(method_config(base, "icft-no-ltm", 0), icft) == {"memory.ltm_replay": (0.0, 0.25)}
    assert _diff(method_config(base, "icft-no-pacing", 0), method_config(base, "lora-memory", 0)) == {}
    assert _diff(method_config(base, "lora-mixed-memory", 0), icft) == {"curriculum.order": ("mixed", "curriculum")}
    ewc = method_config(base, "lora-ewc", 0)
    assert _diff(ewc, method_config(base, "lora-sequential", 0)) == {"loss.ewc": (100.0, 0.0)}
    ilora = method_config(base, "lora-ilora", 0)
    assert ilora.memory.teacher == "ema" and ilora.memory.stm_replay == 0.0 and ilora.curriculum.pacing == "none"
    assert ilora.memory.enabled and ilora.memory.ltm_replay == base.memory.ltm_replay


def test_a_method_setting_a_key_the_config_lacks_is_refused(monkeypatch):
    monkeypatch.setitem(METHOD_OVERRIDES, "telepathy", {"loss.mind_reading": 1.0})
    with pytest.raises(ConfigError, match="'loss.mind_reading'"):
        method_config(load_config(), "telepathy", 0)


def test_test_files_are_reported_under_short_names(tmp_path):
    assert C.test_label("bundled:test-retention") == "retention" and C.test_label("bundled:test") == "test"
    assert C.test_label("/data/pubmedqa.jsonl") == "pubmedqa"
    config = load_config(None, ["compare.test=[bundled:test-unseen, bundled:test-retention]",
                                "compare.max_test_examples=2"])  # fmt: skip
    sets = C.test_sets(config, tmp_path)
    assert list(sets) == ["unseen", "retention"]
    assert all(ex.meta["split"] == "test-unseen" for ex in sets["unseen"][1])
    assert all(ex.meta["split"] == "test-retention" for ex in sets["retention"][1])
    assert sets == C.test_sets(config, tmp_path)  # the same sample every time: items pair across methods
    # an entry with settings is a set too; its own label wins, and a bare path is an entry with defaults
    named = load_config(None, ["compare.test=[{path: bundled:test-unseen, label: held, answers: 0}]"])
    assert list(C.test_sets(named, tmp_path)) == ["held"] and named.compare.test[0].answers == 0
    assert config.compare.test[0].path == "bundled:test-unseen" and config.compare.test[0].answers is None


def _point(config: RunConfig, method: str, seed: int, **kw) -> C.Point:
    return C.Point(method, seed, method_config(config, method, seed, kw.pop("lr", None)), **kw)


def test_run_status_and_what_train_run_does(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("icft.recipes.train.train", lambda cfg, run_dir, resume=False: calls.append(resume))
    out, cfg = tmp_path / "cmp", load_config()
    points = [_point(cfg, "icft", s) for s in range(5)]
    finished, trained, interrupted, died, _ = (C.run_dir(out, p) for p in points)
    assert finished.parent == out / "runs" and finished.name.startswith("icft-s0-") and len(finished.name) == 16
    (finished / "checkpoints" / "step-00006").mkdir(parents=True)
    (finished / "result.json").write_text(json.dumps({"tested_on": C.tested_on(cfg)}))
    trained.mkdir(parents=True)
    (trained / "summary.json").write_text("{}")
    (interrupted / "checkpoints" / "step-00004").mkdir(parents=True)
    (died / "checkpoints").mkdir(parents=True)  # a run that died before its first checkpoint
    folders = C.plan(cfg, points, out)
    assert [C.run_status(folder) for folder in folders] == ["finished", "trained", "interrupted", "new", "new"]
    assert [lacks for _, lacks in folders.values()] == [[], ["test"], ["train", "test"], ["train", "test"],
                                                        ["train", "test"]]  # fmt: skip
    for folder in list(folders)[1:]:
        C.train_run(cfg, folder, C.run_status(folder))
    assert calls == [True, False, False]  # trained: no training; interrupted: resume; new: from scratch


def test_a_run_tested_on_other_files_is_tested_again(tmp_path):
    cfg = load_config()
    point = _point(cfg, "icft", 0)
    folder = C.run_dir(tmp_path, point)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"tested_on": C.tested_on(cfg)}))
    assert C.todo(cfg, point, folder) == []
    other = load_config(None, ["compare.max_test_examples=5"])
    assert C.todo(other, _point(other, "icft", 0), folder) == ["test"]
    # A WiSE-FT point is one more thing a tested LoRA run can lack; the untrained model has none.
    wise = load_config(None, ["compare.wise_alphas=[0.5]"])
    assert C.todo(wise, _point(wise, "icft", 0), folder) == ["wise 0.5"]  # its test results are still valid
    assert C.wise_alphas(wise, _point(wise, "base", 0)) == []
    # A selection point needs training only: a trained folder is done for it.
    (folder / "result.json").unlink()
    (folder / "summary.json").write_text("{}")
    assert C.todo(cfg, _point(cfg, "icft", 0, tested=False, scale=1.0), folder) == []


def test_plan_says_what_it_keeps_and_resumes(tmp_path, capsys):
    cfg = load_config()
    kept, resumed = _point(cfg, "icft", 0), _point(cfg, "lora-mixed", 1)
    C.run_dir(tmp_path, kept).mkdir(parents=True)
    (C.run_dir(tmp_path, kept) / "result.json").write_text(json.dumps({"tested_on": C.tested_on(cfg)}))
    (C.run_dir(tmp_path, resumed) / "checkpoints" / "step-00002").mkdir(parents=True)
    C.plan(cfg, [kept, resumed, _point(cfg, "base", 0)], tmp_path)
    line = capsys.readouterr().out.strip()
    assert "keeping 1 finished runs" in line and "resuming 1 interrupted (lora-mixed seed 1)" in line
    assert line.endswith("1 new") and "\n" not in line
    C.plan(cfg, [_point(cfg, "base", 0)], tmp_path / "empty")
    assert capsys.readouterr().out == ""  # nothing kept or resumed: nothing to say


def test_a_run_is_named_by_what_it_trains_not_by_the_comparison_around_it(tmp_path):
    config = load_config(None, ["compare.seeds=[0]"])
    icft = method_config(config, "icft", 0)
    # Which runs the comparison makes, or the test files, do not change a run: the same folder.
    other = load_config(None, ["compare.seeds=[0, 1]", "compare.jobs=2", "compare.methods=[icft]", "name=other",
                               "compare.lr_scales=[0.3, 1]", "compare.max_test_examples=3"])  # fmt: skip
    assert C.run_hash(method_config(other, "icft", 0)) == C.run_hash(icft)
    # Anything a run trains with does: another folder, never a mix of two configs.
    for key in ("train.max_steps=7", "train.lr=0.5", "memory.ltm_capacity=9", "model.max_length=64"):
        assert C.run_hash(method_config(load_config(None, [key]), "icft", 0)) != C.run_hash(icft)
    assert C.run_hash(method_config(config, "icft", 1)) != C.run_hash(icft)
    # The config.yaml a run folder holds names the same run.
    save_config(icft, tmp_path / "config.yaml")
    assert C.run_hash(load_config(tmp_path / "config.yaml")) == C.run_hash(icft)
    # The untrained base model depends on the model and prompt template only.
    base = method_config(config, "base", 0)
    assert C.run_hash(base, trained=False) != C.run_hash(base)
    assert C.run_hash(method_config(load_config(None, ["train.max_steps=7"]), "base", 0), trained=False) == \
        C.run_hash(base, trained=False)


def test_per_item_rouge_averages_to_the_reported_rouge():
    from icft.evaluation.metrics import rouge, rouge_l_scores

    hyps, refs = ["the heart pumps blood", "", "take aspirin daily"], ["the heart pumps", "rest", "aspirin daily"]
    items = rouge_l_scores(hyps, refs)
    assert items[1] == 0 and items[0] > 0.8
    assert sum(items) / 3 == pytest.approx(rouge(hyps, refs)["rougeL"])


def test_file_summary_keeps_every_item(tiny_llama_dir, staged_data):
    from icft.data.loaders import load_examples
    from icft.data.prompt_format import PromptFormat
    from icft.evaluation.evaluate import EvalSettings, evaluate_examples
    from icft.runs import load_base

    model, tokenizer = load_base(str(tiny_llama_dir))
    examples = load_examples(staged_data[0]).examples
    result = evaluate_examples(model, PromptFormat(tokenizer, "plain", 48), examples, EvalSettings(max_new_tokens=8))
    metrics, items = C.file_summary(result)
    by_kind = {kind: {ex.id for ex in examples if ex.kind == kind} for kind in ("qa", "preference", "dialogue")}
    assert set(items) == {"accuracy", "preference_accuracy", "rougeL", "answer_nll"}
    assert set(items["accuracy"]) == by_kind["qa"] and set(items["rougeL"]) == by_kind["dialogue"]
    assert set(items["preference_accuracy"]) == by_kind["preference"]
    assert set(items["answer_nll"]) == {ex.id for ex in examples}
    for metric, values in items.items():
        assert metrics[metric] == pytest.approx(sum(values.values()) / len(values))
    assert all(v in (0, 1) for v in items["accuracy"].values())
    # the misses are exactly the errors evaluate_examples lists
    assert {i for m in ("accuracy", "preference_accuracy") for i, hit in items[m].items() if not hit} == {
        e["id"] for e in result.errors
    }


RESULTS = {
    "methods": {
        "base": {"unseen/accuracy": {"mean": 0.30, "std": 0.0, "n": 1}},
        "icft": {"unseen/accuracy": {"mean": 0.60, "std": 0.02, "n": 2}, "unseen/macro_f1": {"mean": 0.2, "std": 0,
                 "n": 2}, "unseen/recall_yes": {"mean": 0.5, "std": 0, "n": 2}, "forgetting": {"mean": 0.05,
                 "std": 0.01, "n": 2}},  # fmt: skip
    },
    "per_seed": {"base": {"0": {}}, "icft": {"0": {}, "1": {}}},
    "baselines": {"random": {"unseen/accuracy": 0.25, "unseen/macro_f1": 0.3},
                  "majority": {"unseen/accuracy": 0.34, "unseen/recall_yes": 1.0}},  # fmt: skip
    "statistics": {"confidence": 0.95, "n_resamples": 2000, "differences": {"base": {
        "unseen/accuracy": {"mean": 0.3, "low": 0.2, "high": 0.4, "n_seeds": 2, "n_items": 50, "significant": True},
    }}},  # fmt: skip
}


def test_report_shows_seeds_baselines_and_files():
    text = results_table(RESULTS)
    rows = table(text, "metric")
    assert list(rows["seeds (n)"]) == ["base", "icft", "random (trivial)", "majority (trivial)"]
    assert list(rows["seeds (n)"].values()) == ["1", "2", "–", "–"]
    assert list(rows["MC accuracy (unseen)"].values()) == ["0.300 ± 0.000", "0.600 ± 0.020", "0.250", "0.340"]
    assert list(rows["recall of yes (unseen)"].values()) == ["–", "0.500 ± 0.000", "–", "1.000"]
    assert list(rows).index("MC accuracy (unseen)") < list(rows).index("forgetting (val)")


def test_report_flags_methods_below_the_best_trivial_baseline():
    lines = below_baselines(RESULTS)
    assert lines[0] == ("- **base**: NOT above the best trivial baseline on MC accuracy (unseen) 0.300 ≤ 0.340 "
                        "(majority)")  # fmt: skip
    # icft beats the floors on accuracy but not on macro-F1; recall against a constant answer is not a contest
    assert lines[1] == ("- **icft**: NOT above the best trivial baseline on yes/no/maybe macro-F1 (unseen) 0.200 ≤ "
                        "0.300 (random)")  # fmt: skip


def test_rouge_below_the_constant_answer_is_flagged():
    results = copy.deepcopy(RESULTS)
    results["baselines"]["majority"]["unseen/rougeL"] = 0.39
    results["methods"]["icft"]["unseen/rougeL"] = {"mean": 0.23, "std": 0.01, "n": 2}
    results["methods"]["base"]["unseen/rougeL"] = {"mean": 0.45, "std": 0.0, "n": 1}
    lines = below_baselines(results)
    assert lines[1].endswith("; ROUGE-L (unseen) 0.230 ≤ 0.390 (majority)")
    assert "ROUGE-L" not in lines[0]  # above the constant answer


def test_plain_words_name_only_the_methods_below_a_trivial_baseline():
    results = copy.deepcopy(RESULTS)
    results["methods"]["lora-mixed"] = {"unseen/accuracy": {"mean": 0.5, "std": 0.0, "n": 2},
                                        "unseen/macro_f1": {"mean": 0.4, "std": 0.0, "n": 2}}  # fmt: skip
    assert below_baselines(results)[2] == "- **lora-mixed**: above the best trivial baseline on every metric."
    assert in_plain_words(results)[-1].startswith("- Not above the best trivial baseline on at least one metric: "
                                                  "base, icft (see")  # fmt: skip


def test_difference_table_gives_interval_and_significance():
    rows = table(difference_table(RESULTS), "ICFT minus")
    assert rows == {"base": {"MC accuracy (unseen)": "+0.300 [+0.200, +0.400] **yes**"}}
    assert difference_table({"methods": {}}) == ["(no ICFT run to compare with, or nothing paired)"]


def test_stage_one_is_shown_seed_by_seed_and_matrices_average_over_the_seeds_that_scored():
    seed0 = [[0.6, None, 0.2], [0.4, 0.5, 0.3], [0.5, 0.4, 0.6]]
    seed1 = [[0.8, None, 0.4], [0.6, 0.3, 0.3], [0.5, None, 0.4]]
    mean = mean_matrix([seed0, seed1])
    assert [row[1] for row in mean] == [None, pytest.approx(0.4), 0.4]  # None where no seed scored; else those that did
    assert [row[0] for row in mean] == pytest.approx([0.7, 0.5, 0.5])
    assert [row[2] for row in mean] == pytest.approx([0.3, 0.3, 0.5])
    lines = first_stage_table({"lora-sequential": [seed0, seed1], "one-stage": [[[0.9]]]})
    assert table(lines, "method")["lora-sequential"] == {
        "after stage 1": "0.700 (0.600, 0.800)", "after stage 2": "0.500 (0.400, 0.600)",
        "at the end": "0.500 (0.500, 0.500)", "end minus after stage 1": "-0.200 (-0.100, -0.300)"}  # fmt: skip
    assert "one-stage" not in "\n".join(lines)  # one stage: nothing after it to forget under
    assert first_stage_table({}) == []


@pytest.mark.slow
def test_compare_runs_every_method_writes_report_and_resumes(tiny_llama_dir, staged_data, tmp_path, monkeypatch,
                                                             capfd):  # fmt: skip
    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    from icft.recipes.compare import compare

    train, val = staged_data
    config = load_config(None, [
        f"model.name={tiny_llama_dir}", "model.max_length=48", f"data.train=[{train}]", f"data.validation=[{val}]",
        "train.max_steps=6", "train.batch_size=4", "train.save_every=6", "train.eval_max_examples=6",
        "memory.ltm_capacity=8", "compare.methods=[base, lora-sequential, icft]", "compare.seeds=[0, 1]",
        f"compare.test=[{train}, {val}]", "compare.max_test_examples=3",
    ])  # fmt: skip
    out = tmp_path / "cmp"
    results = compare(config, out)
    saved = json.loads((out / "results.json").read_text())
    assert saved.keys() == {"methods", "per_seed", "baselines", "statistics", "learning_rates", "composites",
                            "tuning"}
    assert saved["learning_rates"] == {"lora-sequential": config.train.lr, "icft": config.train.lr}
    assert saved["methods"].keys() == {"base", "lora-sequential", "icft"} == results["methods"].keys()
    for method in ("lora-sequential", "icft"):
        m = saved["methods"][method]
        assert m["train/accuracy"]["n"] == 2 and m["validation/preference_accuracy"]["n"] == 2
        assert m["trainable_params"]["mean"] > 0 and "forgetting" in m and "train/rougeL" in m
        assert set(saved["per_seed"][method]) == {"0", "1"}
        items = json.loads((C.run_dir(out, _point(config, method, 1)) / "items.json").read_text())
        assert set(items) == {"train", "validation"} and set(items["train"]) == {"accuracy", "preference_accuracy",
                                                                                 "rougeL", "answer_nll"}  # fmt: skip
        assert len(items["train"]["accuracy"]) == 3  # max_test_examples of multiple choice
    assert saved["methods"]["base"]["train/accuracy"]["n"] == 1 and set(saved["per_seed"]["base"]) == {"0"}
    diffs = saved["statistics"]["differences"]
    assert diffs.keys() == {"base", "lora-sequential"}
    assert diffs["lora-sequential"]["train/accuracy"]["n_seeds"] == 2 and "forgetting" in diffs["lora-sequential"]
    assert diffs["base"]["validation/preference_accuracy"]["n_items"] == 3 and "forgetting" not in diffs["base"]
    assert saved["baselines"]["random"]["train/accuracy"] == 0.25
    report = (out / "report.md").read_text()
    main = table(report, "metric")
    assert list(main["seeds (n)"])[:4] == ["base", "lora-sequential", "icft", "random (trivial)"]
    assert list(main["seeds (n)"].values())[:3] == ["1", "2", "2"]
    assert "| ICFT minus |" in report and "- **icft**:" in report
    for plot in ("learning_curves.png", "accuracy_matrices.png", "forgetting.png"):
        assert (out / plot).stat().st_size > 1000

    # Again on the same folder: finished runs are kept; one that lost its result and summary resumes.
    for name in ("result.json", "summary.json"):
        (C.run_dir(out, _point(config, "icft", 1)) / name).unlink()
    capfd.readouterr()
    again = compare(config, out)
    said = capfd.readouterr().out
    assert "keeping 4 finished runs" in said and "resuming 1 interrupted (icft seed 1)" in said
    assert "resumed from" in said and said.count("icft seed 1:") == 1 and "lora-sequential seed" not in said
    assert again["methods"]["lora-sequential"] == saved["methods"]["lora-sequential"]
    assert again["per_seed"]["icft"]["1"]["train/accuracy"] == saved["per_seed"]["icft"]["1"]["train/accuracy"]


def test_best_try_takes_validation_accuracy_then_nll_and_breaks_ties_towards_the_configured_rate():
    acc = {"x0.3": {"average_accuracy": 0.40, "average_nll": 3.0, "lr_scale": 0.3},
           "x1": {"average_accuracy": 0.45, "average_nll": 3.5, "lr_scale": 1.0},
           "x3": {"average_accuracy": 0.50, "average_nll": 4.0, "lr_scale": 3.0}}  # fmt: skip
    assert C.best_try(acc, "average_accuracy") == "x3"
    acc["x1"]["average_accuracy"] = 0.50
    assert C.best_try(acc, "average_accuracy") == "x1"  # a tie: the rate the config gives
    nll = {"x0.5": {"average_accuracy": None, "average_nll": 2.0, "lr_scale": 0.5},
           "x2": {"average_accuracy": None, "average_nll": 1.5, "lr_scale": 2.0}}  # fmt: skip
    assert C.best_try(nll, "average_accuracy") == "x2"  # open-ended stages: lower answer NLL is better
    trades = {"": {"trade": 0.1}, "lr-x2": {"trade": 0.3}, "kl3": {"trade": 0.3}}
    assert C.best_try(trades, "trade") == "lr-x2"  # the largest trade; a tie goes to the first try


def test_a_try_is_the_method_plus_its_keys_and_an_unknown_key_is_refused():
    config = load_config(None, ["train.lr=0.001", "compare.methods=[base, lora-kl-base, icft]",
                                "compare.tries={lora-kl-base: {lr-x2: {lr_scale: 2.0}, kl3: {loss.kl_base: 3.0}}}"])
    tries = [p for p in C.selection_points(config)]
    assert [(p.method, p.tag, p.tested) for p in tries] == [("lora-kl-base", "", False),
                                                            ("lora-kl-base", "lr-x2", False),
                                                            ("lora-kl-base", "kl3", False)]  # fmt: skip
    assert [p.cfg.train.lr for p in tries] == [0.001, 0.002, 0.001]
    assert [p.cfg.loss.kl_base for p in tries] == [1.0, 1.0, 3.0]  # the try's key wins over the method's
    assert len({p.hash for p in tries}) == 3 and C.run_dir(Path("o"), tries[2]).name.startswith("lora-kl-base-s0-kl3-")
    bad = load_config(None, ["compare.methods=[icft]", "compare.tries={icft: {odd: {loss.telepathy: 1.0}}}"])
    with pytest.raises(ConfigError, match="a try of 'icft' sets config key 'loss.telepathy'"):
        C.check_inputs(bad, Path("o"))
    with pytest.raises(ConfigError, match="compare.lr_scales' and 'compare.tries"):
        load_config(None, ["compare.lr_scales=[1, 2]", "compare.tries={icft: {a: {lr_scale: 2.0}}}"])
    with pytest.raises(ConfigError, match="trade needs an own-voice set"):
        C.check_inputs(load_config(None, ["compare.criterion=trade", "compare.methods=[icft]",
                                          "compare.tries={icft: {a: {lr_scale: 2.0}}}"]), Path("o"))  # fmt: skip


def test_each_method_scales_its_own_rate_and_full_ft_its_own():
    config = load_config(None, ["train.lr=0.003", "compare.full_ft_lr=0.0002", "compare.lr_scales=[0.5, 2]"])
    assert method_config(config, "icft", 0).train.lr == 0.003
    assert method_config(config, "full-ft", 0).train.lr == 0.0002
    assert method_config(config, "full-ft", 0, lr=2 * C.default_lr(config, "full-ft")).train.lr == 0.0004
    with pytest.raises(ConfigError, match="compare.lr_scales"):
        load_config(None, ["compare.lr_scales=[0, 1]"])


def test_the_selection_run_at_the_chosen_rate_is_the_first_seed_run(tmp_path):
    config = load_config(None, ["train.lr=0.003", "compare.seeds=[0, 1]", "compare.lr_scales=[0.3, 1, 3]",
                                "compare.methods=[base, lora-sequential]"])  # fmt: skip
    selection = C.selection_points(config)
    assert [(p.method, p.seed, p.scale, p.tested) for p in selection] == [
        ("lora-sequential", 0, scale, False) for scale in (0.3, 1, 3)]  # fmt: skip
    assert [p.cfg.train.lr for p in selection] == [0.3 * 0.003, 0.003, 3 * 0.003]
    folders = [C.run_dir(tmp_path, p) for p in selection]
    for folder in folders:
        folder.mkdir(parents=True)
    assert [f.name.rsplit("-", 1)[0] for f in folders] == [f"lora-sequential-s0-x{s:g}" for s in (0.3, 1, 3)]
    for i, chosen in enumerate(selection):
        seeded = C.seed_points(config, {"lora-sequential": chosen.tag})
        first, second = (C.run_dir(tmp_path, p) for p in seeded if p.method == "lora-sequential")
        assert first == folders[i] and second not in folders


def _stage_eval(folder, accuracy: float) -> None:
    folder.mkdir(parents=True)
    (folder / "stage_eval.json").write_text(json.dumps({"average_accuracy": accuracy, "average_nll": 2.0}))


def test_rates_are_chosen_from_the_selection_folders_alone(tmp_path):
    config = load_config(None, ["train.lr=0.003", "compare.full_ft_lr=0.0002", "compare.lr_scales=[0.5, 2]",
                                "compare.methods=[base, icft, full-ft, icft-no-pacing, lora-memory]"])  # fmt: skip
    accuracy = {("icft", 0.5): 0.3, ("icft", 2): 0.4, ("full-ft", 0.5): 0.6, ("full-ft", 2): 0.5,
                ("lora-memory", 0.5): 0.2, ("lora-memory", 2): 0.1}  # fmt: skip
    for p in C.selection_points(config):
        if p.method != "icft-no-pacing":  # lora-memory's config: the same folders
            _stage_eval(C.run_dir(tmp_path, p), accuracy[(p.method, p.scale)])
    chosen, record = C.chosen_tries(config, tmp_path)
    assert chosen == {"icft": "x2", "full-ft": "x0.5", "icft-no-pacing": "x0.5", "lora-memory": "x0.5"}
    assert {m: r["lr"] for m, r in record.items()} == {"icft": 0.006, "full-ft": 0.0001, "icft-no-pacing": 0.0015,
                                                        "lora-memory": 0.0015}  # fmt: skip
    assert record["full-ft"] == {"criterion": "average_accuracy", "chosen": "x0.5", "lr": 0.0001, "tries": {
        "x0.5": {"lr": 0.0001, "lr_scale": 0.5, "average_accuracy": 0.6, "average_nll": 2.0},
        "x2": {"lr": 0.0004, "lr_scale": 2, "average_accuracy": 0.5, "average_nll": 2.0}}}  # fmt: skip
    assert len(list((tmp_path / "runs").iterdir())) == 6


@pytest.mark.slow
def test_compare_chooses_each_learning_rate_on_validation(tiny_llama_dir, staged_data, tmp_path, monkeypatch):
    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    from icft.recipes.compare import compare

    train, val = staged_data
    config = load_config(None, [
        f"model.name={tiny_llama_dir}", "model.max_length=48", f"data.train=[{train}]", f"data.validation=[{val}]",
        "train.max_steps=4", "train.batch_size=4", "train.save_every=4", "train.eval_max_examples=6",
        "train.lr=0.003", "compare.methods=[base, lora-sequential]", "compare.seeds=[0]",
        f"compare.test=[{val}]", "compare.max_test_examples=3", "compare.lr_scales=[0.1, 10]",
    ])  # fmt: skip
    out = tmp_path / "cmp"
    results = compare(config, out)
    selection = json.loads((out / "tuning.json").read_text())["lora-sequential"]
    assert set(selection["tries"]) == {"x0.1", "x10"}
    chosen = C.best_try(selection["tries"], "average_accuracy")
    assert selection["chosen"] == chosen and selection["lr"] == pytest.approx(float(chosen[1:]) * 0.003)
    folders = {p.tag: C.run_dir(out, p) for p in C.selection_points(config)}
    for tag, folder in folders.items():
        assert selection["tries"][tag]["lr"] == pytest.approx(float(tag[1:]) * 0.003)
        assert folder.name.startswith(f"lora-sequential-s0-{tag}-") and (folder / "stage_eval.json").exists()
        # Only the chosen one is also the seed-0 run, and so tested; the other never reads test data.
        assert (folder / "result.json").exists() == (tag == chosen)
    seed0 = C.run_dir(out, C.seed_points(config, {"lora-sequential": chosen})[1])
    assert seed0 == folders[chosen] and len(list((out / "runs").iterdir())) == 3  # base, x0.1, x10
    assert load_config(seed0 / "config.yaml").train.lr == pytest.approx(results["learning_rates"]["lora-sequential"])
    report = (out / "report.md").read_text()
    assert "chosen on validation by average_accuracy from x0.1, x10" in report
    tuning = table(report, "method")  # the tuning table: one row per try
    assert [(row["try"], row["chosen"]) for row in [tuning["lora-sequential"]]] == [("x10", "yes" if chosen == "x10"
                                                                                     else "")]  # fmt: skip
    written = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    compare(config, out)  # again: every run is kept, none retrained or retested
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert json.loads((out / "tuning.json").read_text())["lora-sequential"] == selection


def test_ablations_run_fewer_seeds_and_no_pacing_shares_the_lora_memory_runs(tiny_llama_dir, staged_data, tmp_path,
                                                                             monkeypatch, capfd):  # fmt: skip
    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    from icft.recipes.compare import compare

    train, val = staged_data
    config = load_config(None, [
        f"model.name={tiny_llama_dir}", "model.max_length=48", f"data.train=[{train}]", f"data.validation=[{val}]",
        "train.max_steps=4", "train.batch_size=4", "train.save_every=4", "train.eval_max_examples=6",
        "memory.ltm_capacity=8", "compare.methods=[lora-memory, icft, icft-no-stm, icft-no-pacing]",
        "compare.seeds=[0, 1]", "compare.ablation_seeds=1", f"compare.test=[{val}]", "compare.max_test_examples=3",
    ])  # fmt: skip
    out = tmp_path / "cmp"
    capfd.readouterr()
    results = compare(config, out)
    trained = capfd.readouterr().out.count("stages: ")  # train prints its stage plan once per run
    assert trained == 5  # lora-memory x2, icft x2, icft-no-stm x1; icft-no-pacing trains nothing
    folders = sorted(f.name.rsplit("-", 1)[0] for f in (out / "runs").iterdir())
    assert folders == ["icft-no-stm-s0", "icft-s0", "icft-s1", "lora-memory-s0", "lora-memory-s1"]
    assert set(results["per_seed"]["icft-no-stm"]) == {"0"} and set(results["per_seed"]["icft"]) == {"0", "1"}
    assert results["per_seed"]["icft-no-pacing"]["0"] == results["per_seed"]["lora-memory"]["0"]
    diffs = results["statistics"]["differences"]
    item_diffs = {m: [d for d in diffs[m].values() if d["n_items"]] for m in ("icft-no-stm", "lora-memory")}
    assert item_diffs["icft-no-stm"] and all(d["n_seeds"] == 1 for d in item_diffs["icft-no-stm"])
    assert item_diffs["lora-memory"] and all(d["n_seeds"] == 2 for d in item_diffs["lora-memory"])
    main = table((out / "report.md").read_text(), "metric")
    seeds = {column: n for column, n in main["seeds (n)"].items() if "(trivial)" not in column}
    assert seeds == {"lora-memory": "2", "icft": "2", "icft-no-stm": "1", "icft-no-pacing": "1"}


def test_composites_pool_the_marked_sets_and_pair_against_base_and_the_reference():
    from icft.config import EvalSet
    from icft.evaluation.report import composite_table, composites, trade_figures

    def run(medical: list[float], voice: float) -> dict:
        return {"a": {"answer_nll": {"1": medical[0]}}, "b": {"answer_nll": {"2": medical[1]}},
                "v": {"answer_nll": {"x": voice, "y": voice}}, "other": {"answer_nll": {"z": 9.0}}}  # fmt: skip

    items = {"base": {0: run([2.0, 2.0], 1.0), 1: run([2.0, 2.0], 1.0)},
             "icft": {0: run([1.5, 1.7], 1.2), 1: run([1.5, 1.7], 1.2)},
             "lora-sequential": {0: run([1.4, 1.6], 1.5), 1: run([1.4, 1.6], 1.5)}}  # fmt: skip
    sets = {"a": EvalSet(path="a", content=True), "b": EvalSet(path="b", content=True),
            "v": EvalSet(path="v", own_voice=True), "other": EvalSet(path="other")}  # fmt: skip
    found = composites(items, sets, "icft")
    assert found["vs_base"]["icft"]["content"]["mean"] == pytest.approx(0.4)  # (0.5 + 0.3) / 2, "other" left out
    assert found["vs_base"]["icft"]["own_voice"]["mean"] == pytest.approx(-0.2)  # forgetting: negative
    assert found["vs_base"]["lora-sequential"]["own_voice"]["significant"]
    assert found["vs_reference"]["lora-sequential"]["content"]["mean"] == pytest.approx(-0.1)
    assert found["vs_reference"]["lora-sequential"]["own_voice"]["mean"] == pytest.approx(0.3)
    assert "icft" not in found["vs_reference"] and composites(items, {"other": EvalSet(path="o")}, "icft") == {}
    rows = table(composite_table({"composites": found, "per_seed": {"icft": {"0": {}, "1": {}}}}), "method")
    assert rows["icft"]["seeds"] == "2" and rows["icft"]["icft − method: own-voice NLL drop"] == "–"
    assert rows["lora-sequential"]["own-voice NLL drop vs base"] == "**-0.500 [-0.500, -0.500]**"
    # the trade of a try on validation: both drops against the untrained model, items pooled per role
    roles = {"a": {"content": True, "own_voice": False}, "v": {"content": False, "own_voice": True}}
    base = {"roles": roles, "items": {"a": {"answer_nll": {"1": 2.0, "2": 3.0}}, "v": {"answer_nll": {"x": 1.0}}}}
    tried = {"roles": roles, "items": {"a": {"answer_nll": {"1": 1.0, "2": 2.0}}, "v": {"answer_nll": {"x": 1.5}}}}
    assert trade_figures(tried, base) == pytest.approx({"content_nll_drop": 1.0, "own_voice_drop": -0.5, "trade": 0.5})
