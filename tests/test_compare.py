"""`icft compare`: methods as config diffs, resuming an output folder, per-item results, the report; and one
end-to-end run on a tiny model (slow)."""

from __future__ import annotations

import copy
import json

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


def test_test_files_are_reported_under_short_names():
    assert C.test_label("bundled:test-retention") == "retention" and C.test_label("bundled:test") == "test"
    assert C.test_label("/data/pubmedqa.jsonl") == "pubmedqa"
    config = load_config(None, ["compare.test=[bundled:test-unseen, bundled:test-retention]",
                                "compare.max_test_examples=2"])  # fmt: skip
    sets = C.test_sets(config)
    assert list(sets) == ["unseen", "retention"]
    assert all(ex.meta["split"] == "test-unseen" for ex in sets["unseen"])
    assert all(ex.meta["split"] == "test-retention" for ex in sets["retention"])
    assert sets == C.test_sets(config)  # the same sample every time: items pair across methods


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
    assert [status for _, status in folders.values()] == ["finished", "trained", "interrupted", "new", "new"]
    for folder, (_, status) in list(folders.items())[1:]:
        C.train_run(cfg, folder, status)
    assert calls == [True, False, False]  # trained: no training; interrupted: resume; new: from scratch


def test_a_run_tested_on_other_files_is_tested_again(tmp_path):
    cfg = load_config()
    point = _point(cfg, "icft", 0)
    folder = C.run_dir(tmp_path, point)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"tested_on": C.tested_on(cfg)}))
    assert C.point_status(cfg, point, folder) == "finished"
    other = load_config(None, ["compare.max_test_examples=5"])
    assert C.point_status(other, _point(other, "icft", 0), folder) == "trained"
    # A selection point needs training only: a trained folder is done for it.
    (folder / "result.json").unlink()
    (folder / "summary.json").write_text("{}")
    assert C.point_status(cfg, _point(cfg, "icft", 0, tested=False, scale=1.0), folder) == "finished"


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
    from icft.evaluation.evaluate import evaluate_examples
    from icft.runs import load_base

    model, tokenizer = load_base(str(tiny_llama_dir))
    examples = load_examples(staged_data[0]).examples
    result = evaluate_examples(model, tokenizer, examples, max_length=48, max_new_tokens=8, progress=False)
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
    table = results_table(RESULTS)
    assert "| metric | base | icft | random (trivial) | majority (trivial) |" in table
    assert "| seeds (n) | 1 | 2 | – | – |" in table
    assert "| MC accuracy (unseen) | 0.300 ± 0.000 | 0.600 ± 0.020 | 0.250 | 0.340 |" in table
    assert "| recall of yes (unseen) | – | 0.500 ± 0.000 | – | 1.000 |" in table
    assert table.index("(unseen)") < table.index("forgetting (val)")


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
    lines = difference_table(RESULTS)
    assert lines[0] == "| ICFT minus | MC accuracy (unseen) |"
    assert lines[2] == "| base | +0.300 [+0.200, +0.400] **yes** |"
    assert difference_table({"methods": {}}) == ["(no ICFT run to compare with, or nothing paired)"]


def test_stage_one_is_shown_seed_by_seed_and_matrices_average_over_the_seeds_that_scored():
    seed0 = [[0.6, None, 0.2], [0.4, 0.5, 0.3], [0.5, 0.4, 0.6]]
    seed1 = [[0.8, None, 0.4], [0.6, 0.3, 0.3], [0.5, None, 0.4]]
    mean = mean_matrix([seed0, seed1])
    assert [row[1] for row in mean] == [None, pytest.approx(0.4), 0.4]  # None where no seed scored; else those that did
    assert [row[0] for row in mean] == pytest.approx([0.7, 0.5, 0.5])
    assert [row[2] for row in mean] == pytest.approx([0.3, 0.3, 0.5])
    lines = first_stage_table({"lora-sequential": [seed0, seed1], "one-stage": [[[0.9]]]})
    assert lines[-1] == ("| lora-sequential | 0.700 (0.600, 0.800) | 0.500 (0.400, 0.600) | 0.500 (0.500, 0.500) "
                         "| -0.200 (-0.100, -0.300) |")  # fmt: skip
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
    assert saved.keys() == {"methods", "per_seed", "baselines", "statistics", "learning_rates"}
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
    assert "| metric | base | lora-sequential | icft | random (trivial) |" in report
    assert "| seeds (n) | 1 | 2 | 2 |" in report and "| ICFT minus |" in report and "- **icft**:" in report
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


def test_best_scale_takes_validation_accuracy_then_nll_and_breaks_ties_towards_the_configured_rate():
    acc = {0.3: {"average_accuracy": 0.40, "average_nll": 3.0}, 1.0: {"average_accuracy": 0.45, "average_nll": 3.5},
           3.0: {"average_accuracy": 0.50, "average_nll": 4.0}}  # fmt: skip
    assert C.best_scale(acc) == 3.0
    acc[1.0]["average_accuracy"] = 0.50
    assert C.best_scale(acc) == 1.0  # a tie: the rate the config gives
    nll = {0.5: {"average_accuracy": None, "average_nll": 2.0}, 2.0: {"average_accuracy": None, "average_nll": 1.5}}
    assert C.best_scale(nll) == 2.0  # open-ended stages: lower answer NLL is better


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
        seeded = C.seed_points(config, {"lora-sequential": chosen.cfg.train.lr})
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
    lrs, record = C.chosen_rates(config, tmp_path)
    assert lrs == {"icft": 0.006, "full-ft": 0.0001, "icft-no-pacing": 0.0015, "lora-memory": 0.0015}
    assert record["full-ft"] == {"chosen_scale": 0.5, "lr": 0.0001, "runs": {
        "x0.5": {"lr": 0.0001, "average_accuracy": 0.6, "average_nll": 2.0},
        "x2": {"lr": 0.0004, "average_accuracy": 0.5, "average_nll": 2.0}}}  # fmt: skip
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
    selection = json.loads((out / "lr_selection.json").read_text())["lora-sequential"]
    assert set(selection["runs"]) == {"x0.1", "x10"}
    chosen = C.best_scale({float(k[1:]): v for k, v in selection["runs"].items()})
    assert selection["chosen_scale"] == chosen and selection["lr"] == pytest.approx(chosen * 0.003)
    folders = {p.scale: C.run_dir(out, p) for p in C.selection_points(config)}
    for scale, folder in folders.items():
        assert selection["runs"][f"x{scale:g}"]["lr"] == pytest.approx(scale * 0.003)
        assert folder.name.startswith(f"lora-sequential-s0-x{scale:g}-") and (folder / "stage_eval.json").exists()
        # Only the chosen one is also the seed-0 run, and so tested; the other never reads test data.
        assert (folder / "result.json").exists() == (scale == chosen)
    seed0 = C.run_dir(out, C.seed_points(config, {"lora-sequential": selection["lr"]})[1])
    assert seed0 == folders[chosen] and len(list((out / "runs").iterdir())) == 3  # base, x0.1, x10
    assert load_config(seed0 / "config.yaml").train.lr == pytest.approx(results["learning_rates"]["lora-sequential"])
    assert "chosen on validation from x0.1, x10" in (out / "report.md").read_text()
    written = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.json")}
    compare(config, out)  # again: every run is kept, none retrained or retested
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert json.loads((out / "lr_selection.json").read_text())["lora-sequential"] == selection


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
    assert "| seeds (n) | 2 | 2 | 1 | 1 |" in (out / "report.md").read_text()
