"""`icft compare` as a grid of hash-named run folders, with training and testing replaced by stand-ins that
write what train and evaluate_run write: which folders are trained, which are kept, the report rebuilt from the
folders alone, and the move of the old <method>/seed<N> layout."""

from __future__ import annotations

import json
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from icft.config import RunConfig, load_config, save_config
from icft.errors import ConfigError
from icft.io import write_json
from icft.recipes import compare as C

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the migration tool is not installed: it runs from the checkout's tools/
    sys.path.insert(0, str(ROOT))
from tools.migrate_compare import migrate  # noqa: E402

REPORT = ("results.json", "report.md", "tuning.json")


@pytest.fixture
def runs(monkeypatch) -> dict[str, list]:
    """Train and test in this process, by stand-ins; returns the folders each was called on."""
    calls: dict[str, list] = {"trained": [], "tested": []}

    def train(cfg: RunConfig, run_dir, resume: bool = False) -> None:
        calls["trained"].append(run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        accuracy = 0.5 - abs(cfg.train.lr - 0.006) + cfg.train.seed / 100  # best at lr 0.006
        write_json(run_dir / "stage_eval.json", {"average_accuracy": accuracy, "average_nll": 2.0,
                                                 "accuracy_matrix": [[accuracy]]})  # fmt: skip
        (run_dir / "metrics.jsonl").write_text("")
        write_json(run_dir / "summary.json", {"trainable_params": 10, "wall_s": 1.0})

    def evaluate_run(config: RunConfig, point: C.Point, folder, lacks=None) -> dict[str, float]:
        calls["tested"].append(folder.name)
        folder.mkdir(parents=True, exist_ok=True)
        metrics, items = {}, {}
        for label, (_, examples) in C.test_sets(config, folder.parents[1]).items():
            # a hit or a miss that depends on the run's config and the item: methods differ, seeds differ
            hits = {ex.id: zlib.crc32(f"{folder.name}{ex.id}".encode()) % 2 for ex in examples if ex.options}
            items[label] = {"accuracy": hits}
            metrics[f"{label}/accuracy"] = sum(hits.values()) / len(hits)
        if point.trained:
            metrics["forgetting"] = 0.1 + point.seed / 10
        write_json(folder / "items.json", items)
        write_json(folder / "result.json", {"metrics": metrics, **C.training_curves(folder),
                                            "tested_on": C.tested_on(config)})  # fmt: skip
        return metrics

    monkeypatch.setattr("icft.recipes.train.train", train)
    monkeypatch.setattr(C, "evaluate_run", evaluate_run)
    monkeypatch.setattr(C, "_pool", lambda config: ThreadPoolExecutor(1))
    return calls


def _config(*settings: str) -> RunConfig:
    return load_config(None, ["compare.max_test_examples=2", "compare.test=[bundled:test-unseen]", *settings])


def test_two_methods_with_one_config_train_once(tmp_path, runs):
    config = _config("compare.methods=[lora-memory, icft-no-pacing, icft]", "compare.seeds=[0, 1]")
    results = C.compare(config, tmp_path)
    assert sorted(runs["trained"]) == sorted(runs["tested"]) and len(runs["trained"]) == 4  # not 6
    assert sorted(f.name.rsplit("-", 1)[0] for f in (tmp_path / "runs").iterdir()) == [
        "icft-s0", "icft-s1", "lora-memory-s0", "lora-memory-s1"]  # fmt: skip
    assert results["per_seed"]["icft-no-pacing"] == results["per_seed"]["lora-memory"]
    assert results["per_seed"]["icft"] != results["per_seed"]["lora-memory"]
    assert results["statistics"]["differences"]["icft-no-pacing"]["unseen/accuracy"]["n_seeds"] == 2


def test_a_rerun_trains_nothing_and_rebuilds_the_same_report(tmp_path, runs):
    config = _config("compare.methods=[base, lora-sequential, icft]", "compare.seeds=[0, 1]",
                     "compare.lr_scales=[1, 2]", "train.lr=0.003")  # fmt: skip
    first = C.compare(config, tmp_path)
    # lr selection: 2 points per trained method at seed 0; the chosen one (x2: lr 0.006) is the seed-0 run
    assert len(runs["trained"]) == 2 * 2 + 2 and len(runs["tested"]) == 1 + 2 * 2
    assert first["learning_rates"] == {"lora-sequential": 0.006, "icft": 0.006}
    assert {n.rsplit("-", 1)[0] for n in runs["tested"]} == {"base-s0", "lora-sequential-s0-x2",
                                                             "lora-sequential-s1", "icft-s0-x2", "icft-s1"}
    written = {name: (tmp_path / name).read_text() for name in REPORT}
    for name in REPORT:
        (tmp_path / name).unlink()
    runs["trained"].clear()
    runs["tested"].clear()
    again = C.compare(config, tmp_path)
    assert runs == {"trained": [], "tested": []}
    assert again == first and {name: (tmp_path / name).read_text() for name in REPORT} == written
    assert C.report(load_config(tmp_path / "config.yaml"), tmp_path) == first  # from the folders alone


def test_a_changed_config_trains_new_folders_beside_the_old(tmp_path, runs):
    C.compare(_config("compare.methods=[icft]", "compare.seeds=[0]"), tmp_path)
    runs["trained"].clear()
    C.compare(_config("compare.methods=[icft, lora-mixed]", "compare.seeds=[0, 1]"), tmp_path)
    assert sorted(n.rsplit("-", 1)[0] for n in runs["trained"]) == ["icft-s1", "lora-mixed-s0", "lora-mixed-s1"]
    runs["trained"].clear()
    C.compare(_config("compare.methods=[icft]", "compare.seeds=[0]", "train.max_steps=50"), tmp_path)
    assert [n.rsplit("-", 1)[0] for n in runs["trained"]] == ["icft-s0"]
    assert len(list((tmp_path / "runs").glob("icft-s0-*"))) == 2


def _old_layout(out, config: RunConfig) -> None:
    """A folder as compare left it before hash-named runs: <method>/seed<N> (base without a config.yaml) and
    <method>/lr-select/x<scale>, the chosen scale's a copy of the first seed's run without its test results."""
    import icft.recipes.train as T  # the stand-in, as the fixture set it

    for method in config.compare.methods:
        for seed in C.seeds_of(config, method):
            point = C.Point(method, seed, C.method_config(config, method, seed))
            folder = out / method / f"seed{seed}"
            if point.trained:
                T.train(point.cfg, folder)
            C.evaluate_run(config, point, folder)
            result = json.loads((folder / "result.json").read_text())
            del result["tested_on"]  # not there before
            write_json(folder / "result.json", result)
    for scale in config.compare.lr_scales:
        cfg = C.method_config(config, "icft", 0, lr=scale * config.train.lr)
        T.train(cfg, out / "icft" / "lr-select" / f"x{scale:g}")
    save_config(config, out / "config.yaml")


def test_old_folders_are_moved_to_hash_names_and_nothing_is_trained_again(tmp_path, runs):
    config = _config("compare.methods=[base, icft]", "compare.seeds=[0, 1]", "compare.lr_scales=[0.5, 1]",
                     "train.lr=0.006")  # fmt: skip
    _old_layout(tmp_path, config)
    old = {s: json.loads((tmp_path / "icft" / f"seed{s}" / "result.json").read_text()) for s in (0, 1)}
    runs["trained"].clear()
    runs["tested"].clear()
    with pytest.raises(ConfigError, match="python -m tools.migrate_compare"):
        C.compare(config, tmp_path)  # refused, not trained again beside the old folders
    (tmp_path / "lora-mixed" / "seed0").mkdir(parents=True)  # a run that died before it wrote anything
    assert len(migrate(tmp_path)) == 4
    results = C.compare(config, tmp_path)
    assert runs == {"trained": [], "tested": []}
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["runs"]  # the old folders are gone
    names = sorted(f.name.rsplit("-", 1)[0] for f in (tmp_path / "runs").iterdir())
    assert names == ["base-s0", "icft-s0", "icft-s0-x0.5", "icft-s1"]  # x1 was a copy of icft seed 0
    assert {s: results["per_seed"]["icft"][str(s)] for s in (0, 1)} == {s: old[s]["metrics"] for s in (0, 1)}
    assert migrate(tmp_path) == []  # once
