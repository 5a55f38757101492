"""Compare ICFT with baselines: same data, step budget and seeds; mean and std over seeds, paired statistics.

Methods (each a set of config overrides on the same base config, so the comparison is a config diff):
- base:                the untrained model
- full-ft:             all data mixed, every weight trained
- lora-mixed:          all stages shuffled together, LoRA
- lora-sequential:     stages in order, no pacing, no memory
- lora-curriculum:     stages in order with competence pacing, no memory
- lora-memory:         stages in order without pacing, with STM/LTM replay and the consistency loss
- lora-ewc:            stages in order, no pacing, no memory; an EWC penalty keeps the adapter near earlier stages
- lora-ilora:          stages in order, no pacing; LTM replay with an EMA teacher for the consistency loss, no STM
                       (I-LoRA-style)
- lora-kl-base:        stages in order, no pacing, no memory; the task loss plus loss.kl_base x KL from the frozen
                       base model's next-token distribution on the same batch (the LwF / self-distillation anchor)
- lora-mixed-memory:   all stages shuffled together, with the memory: is it the order or the memory that helps?
- icft:                pacing and memory: the full method
- icft-no-consistency: icft without the consistency loss (replay only)
- icft-no-stm:         icft without short-term replay
- icft-no-ltm:         icft without long-term replay
- icft-no-pacing:      icft without pacing (the same config as lora-memory, so the two share their runs)
- icft-paper:          today's ICFT by name (the same config as icft: one run for both)
- icft-self:           icft plus the stage-0 memory of the untrained model's own answers to memory.general
                       (its own teacher and weight, from step 0) and WiSE-FT merging at an alpha chosen on
                       validation (train.merge_alpha: auto); needs memory.general in the base config
- icft-no-self-memory: icft-self without the stage-0 memory (merging only)
- icft-no-merge:       icft-self without merging (the stage-0 memory only)

The ablations (icft-no-*) may run fewer seeds than the rest (compare.ablation_seeds).

A comparison is a grid of runs. Each run is a Point (method, seed, resolved config) and lives in the folder
<output>/runs/<method>-s<seed>-<hash>, where <hash> is a short hash of the config it trains (run_hash): two
methods that resolve to the same config are one run, and a changed config is a new folder, never a mix. A
folder is trained when it has no finished summary, resumed when it has a checkpoint, kept otherwise; a tested
run also gets items.json (every test item's score, so statistics can pair items across methods and seeds) and
result.json, written last.

Learning rates (compare.lr_scales): more points of the grid. At the first seed, one run per scale times the
method's own rate, trained and scored on validation only (folders <method>-s<seed>-x<scale>-<hash>); the best
average stage accuracy (best_scale) is the rate of the method's seeded runs, and the seed-0 run at that rate is
the selection run itself (same config, same folder). Nothing here is tuned on test data.

The report (results.json, lr_selection.json, report.md, plots) is built from the folders alone (report): run
`icft compare` again on the same output folder and it retrains nothing that is finished.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..config import RunConfig, check, save_config
from ..data.schema import Example
from ..data.sources import load_data
from ..errors import ConfigError
from ..evaluation.baselines import trivial_baselines
from ..evaluation.report import (
    below_baselines,
    difference_table,
    in_plain_words,
    mean_matrix,
    mean_std,
    plots,
    report_markdown,
    results_table,
)
from ..evaluation.statistics import CONFIDENCE, N_RESAMPLES, compare_to
from ..io import write_json, write_text
from ..runs import config_hash

METHOD_OVERRIDES: dict[str, dict[str, object]] = {
    "base": {},
    "full-ft": {"peft.method": "full", "curriculum.order": "mixed", "memory.enabled": False},
    "lora-mixed": {"curriculum.order": "mixed", "memory.enabled": False},
    "lora-sequential": {"curriculum.pacing": "none", "memory.enabled": False},
    "lora-curriculum": {"memory.enabled": False},
    "lora-memory": {"curriculum.pacing": "none", "memory.enabled": True},
    "lora-ewc": {"curriculum.pacing": "none", "memory.enabled": False, "loss.ewc": 100.0},
    "lora-ilora": {"curriculum.pacing": "none", "memory.enabled": True, "memory.teacher": "ema",
                   "memory.stm_replay": 0.0},  # fmt: skip
    "lora-kl-base": {"curriculum.pacing": "none", "memory.enabled": False, "loss.kl_base": 1.0},
    "lora-mixed-memory": {"curriculum.order": "mixed", "memory.enabled": True},
    "icft": {"memory.enabled": True},
    "icft-no-consistency": {"memory.enabled": True, "loss.consistency": 0.0},
    "icft-no-stm": {"memory.enabled": True, "memory.stm_replay": 0.0},
    "icft-no-ltm": {"memory.enabled": True, "memory.ltm_replay": 0.0},
    "icft-no-pacing": {"curriculum.pacing": "none", "memory.enabled": True},  # = lora-memory: one run for both
    # Issue 36. icft-paper: today's ICFT by name (the same config as icft, so one run for both). icft-self: a
    # stage-0 memory of the untrained model's own answers to memory.general (from the base config), replayed
    # from step 0 with its own teacher (the untrained model), then WiSE-FT merging at an alpha chosen on
    # validation; its ablations leave out one of the two.
    "icft-paper": {"memory.enabled": True, "memory.general": [], "train.merge_alpha": None},
    "icft-self": {"memory.enabled": True, "memory.general_size": 64, "memory.general_replay": 0.5,
                  "train.merge_alpha": "auto"},  # fmt: skip
    "icft-no-self-memory": {"memory.enabled": True, "memory.general_size": 0, "train.merge_alpha": "auto"},
    "icft-no-merge": {"memory.enabled": True, "memory.general_size": 64, "memory.general_replay": 0.5,
                      "train.merge_alpha": None},  # fmt: skip
}
REFERENCE = "icft"  # the method the paired differences are taken from
RUNS = "runs"  # <output>/runs/<method>-s<seed>-<hash>: one folder per distinct run config


def method_config(config: RunConfig, method: str, seed: int, lr: float | None = None) -> RunConfig:
    """The config of one method/seed run; `lr` replaces the method's own learning rate (default_lr)."""
    if method not in METHOD_OVERRIDES:
        known = ", ".join(METHOD_OVERRIDES)
        raise ConfigError(f"config key 'compare.methods': unknown method '{method}' (known: {known})")
    out = copy.deepcopy(config)
    for key, value in METHOD_OVERRIDES[method].items():
        section, name = key.split(".")
        if not hasattr(getattr(out, section), name):  # setattr would add it silently, and nothing would read it
            raise ConfigError(f"method '{method}' sets config key '{key}', which this version does not have")
        setattr(getattr(out, section), name, value)
    out.train.lr = default_lr(config, method) if lr is None else lr
    out.train.seed = seed
    out.name = f"{config.name}-{method}-seed{seed}"
    check(out)  # the overrides go through the same checks as the config itself
    return out


def default_lr(config: RunConfig, method: str) -> float:
    return config.compare.full_ft_lr if method == "full-ft" else config.train.lr


def limit_per_kind(examples: list[Example], n: int) -> list[Example]:
    """A fixed random sample of n examples of each kind (qa split into open and multiple choice)."""
    if not n:
        return examples
    examples = list(examples)
    random.Random(0).shuffle(examples)  # files are ordered by condition: the first n would be a few conditions
    taken: dict[str, int] = {}
    out = []
    for ex in examples:
        key = ex.kind + ("-mc" if ex.options else "")
        if taken.get(key, 0) < n:
            taken[key] = taken.get(key, 0) + 1
            out.append(ex)
    return out


def test_label(spec: str) -> str:
    """The short name a test file is reported under: bundled:test-retention -> retention, data/x.jsonl -> x."""
    name = spec.split(":", 1)[1] if spec.startswith("bundled:") else Path(spec).stem
    return name.removeprefix("test-") or name


def test_sets(config: RunConfig) -> dict[str, list[Example]]:
    """Each test file's examples (the same fixed sample for every method and seed), by its label."""
    labels = [test_label(spec) for spec in config.compare.test]
    if len(set(labels)) < len(labels):  # two files with one short name: the full names tell them apart
        labels = list(config.compare.test)
    return {label: limit_per_kind(load_data([spec], quiet=True), config.compare.max_test_examples)
            for label, spec in zip(labels, config.compare.test)}  # fmt: skip


def file_summary(result) -> tuple[dict, dict]:
    """(metrics, items) of one test file from its `evaluate_examples` result. items: {"accuracy" |
    "preference_accuracy": {id: 0/1 hit}, "rougeL": {id: ROUGE-L F}, "answer_nll": {id: NLL}}, whose means are
    the metrics of the same names; statistics pair methods and seeds on them."""
    metrics = result.scalars()
    if "source=icft-general" in result.accuracy_by:
        metrics["general_accuracy"] = result.accuracy_by["source=icft-general"]
    items: dict[str, dict[str, float]] = {}
    for metric, kind in (("accuracy", "qa"), ("preference_accuracy", "preference")):
        hits = {r["id"]: r["hit"] for r in result.items if r["kind"] == kind and "hit" in r}
        if hits:
            items[metric] = hits
    scored = [hit for metric in ("accuracy", "preference_accuracy") for hit in items.get(metric, {}).values()]
    if scored:
        metrics["error_rate"] = 1 - sum(scored) / len(scored)
    for metric in ("rougeL", "answer_nll"):
        values = {r["id"]: r[metric] for r in result.items if metric in r}
        if values:
            items[metric] = values
    return metrics, items


def seeds_of(config: RunConfig, method: str) -> list[int]:
    """The seeds a method runs: `base` once (untrained, the same model whatever the seed), the ablations
    the first compare.ablation_seeds, every other method all of compare.seeds."""
    seeds = config.compare.seeds
    if method == "base":
        return seeds[:1]
    if method.startswith("icft-no-") and config.compare.ablation_seeds:
        return seeds[: config.compare.ablation_seeds]
    return seeds


def run_status(run_dir: Path) -> str:
    """Where a run folder stands: "finished" (result.json), "trained" (training ended, evaluation did not),
    "interrupted" (checkpoints only) or "new"."""
    if (run_dir / "result.json").exists():
        return "finished"
    if (run_dir / "summary.json").exists():  # train writes it after the weights, last
        return "trained"
    if any((run_dir / "checkpoints").glob("step-*")):
        return "interrupted"
    return "new"


def train_run(cfg: RunConfig, run_dir: Path, status: str) -> None:
    """Train unless training already ended; an interrupted run continues from its last checkpoint."""
    from .train import train

    if status != "trained":
        train(cfg, run_dir, resume=status == "interrupted")


def run_hash(cfg: RunConfig, trained: bool = True) -> str:
    """8 hex digits naming what a run computes: its config without name, output_dir and the compare section
    (which comparison asked for a run does not change it). An untrained run depends on its model and template."""
    tree = cfg.to_dict()
    if not trained:
        return config_hash({"untrained": tree["model"], "template": tree["data"]["template"]})[:8]
    return config_hash({k: v for k, v in tree.items() if k not in ("name", "output_dir", "compare")})[:8]


@dataclass
class Point:
    """One run of the grid. A tested point is scored on the test files; an untested one (a learning-rate
    selection run, `scale` times its method's rate) is only trained and read on validation."""

    method: str
    seed: int
    cfg: RunConfig
    tested: bool = True
    scale: float | None = None

    @property
    def trained(self) -> bool:
        return self.method != "base"

    @property
    def hash(self) -> str:
        return run_hash(self.cfg, self.trained)

    @property
    def prefix(self) -> str:
        return f"{self.method}-s{self.seed}" + ("" if self.scale is None else f"-x{self.scale:g}")

    def __str__(self) -> str:
        return f"{self.method} seed {self.seed}" + ("" if self.scale is None else f" x{self.scale:g}")


def run_dir(output_dir: Path, point: Point) -> Path:
    """A point's folder: the one already holding its hash (whichever method named it first), else a new one."""
    found = sorted((output_dir / RUNS).glob(f"*-{point.hash}"))
    return found[0] if found else output_dir / RUNS / f"{point.prefix}-{point.hash}"


def selection_points(config: RunConfig) -> list[Point]:
    """The learning-rate selection runs: each trained method at the first seed, at each compare.lr_scales
    times its own rate."""
    seed = config.compare.seeds[0]
    return [Point(m, seed, method_config(config, m, seed, lr=s * default_lr(config, m)), tested=False, scale=s)
            for m in config.compare.methods if m != "base" for s in config.compare.lr_scales]  # fmt: skip


def seed_points(config: RunConfig, lrs: dict[str, float]) -> list[Point]:
    """The tested runs: every method at each of its seeds, at its chosen rate (`lrs`, else its own)."""
    return [Point(m, s, method_config(config, m, s, lrs.get(m))) for m in config.compare.methods
            for s in seeds_of(config, m)]  # fmt: skip


def tested_on(config: RunConfig) -> dict:
    """What a run's result.json was scored on: a run tested on other files is tested again."""
    return {"test": list(config.compare.test), "max_test_examples": config.compare.max_test_examples}


def point_status(config: RunConfig, point: Point, folder: Path) -> str:
    """run_status, as far as this point needs: "finished" when nothing is left to do for it."""
    status = run_status(folder)
    if not point.tested:
        return "finished" if status in ("trained", "finished") else status
    if status == "finished" and json.loads((folder / "result.json").read_text()).get("tested_on") != tested_on(config):
        return "trained"
    return status


def plan(config: RunConfig, points: list[Point], output_dir: Path) -> dict[Path, tuple[Point, str]]:
    """Each distinct folder once (points that share a config share it), its point and status; and one printed
    line on what is kept or resumed."""
    folders: dict[Path, tuple[Point, str]] = {}
    seen: set[str] = set()
    for point in points:
        if point.hash not in seen:  # the first point of each config names its folder
            seen.add(point.hash)
            folder = run_dir(output_dir, point)
            folders[folder] = (point, point_status(config, point, folder))
    said = {s: [str(p) for p, v in folders.values() if v == s] for s in ("finished", "trained", "interrupted")}
    if any(said.values()):
        print(f"{output_dir}: keeping {len(said['finished'])} finished runs; evaluating "
              f"{len(said['trained'])} trained ({', '.join(said['trained']) or '-'}); resuming "
              f"{len(said['interrupted'])} interrupted ({', '.join(said['interrupted']) or '-'}); "
              f"{sum(v == 'new' for _, v in folders.values())} new", flush=True)  # fmt: skip
    return folders


def run_grid(config: RunConfig, points: list[Point], output_dir: Path) -> None:
    """Do what each point's folder lacks (train, resume, test), one worker process per folder."""
    todo = {folder: job for folder, job in plan(config, points, output_dir).items() if job[1] != "finished"}
    if not todo:
        return
    started = time.perf_counter()
    with _pool(config) as pool:
        futures = {pool.submit(run_point, config, point, folder, status): point
                   for folder, (point, status) in todo.items()}  # fmt: skip
        for done, future in enumerate(as_completed(futures), 1):
            print(f"[{done}/{len(todo)} {time.perf_counter() - started:.0f}s] {futures[future]}: {future.result()}",
                  flush=True)  # fmt: skip


def run_point(config: RunConfig, point: Point, folder: Path, status: str) -> str:
    """Train the point's run unless trained (resume if interrupted), then test it if it is a tested point.
    Runs in a worker process; returns its line of scores."""
    if point.trained:
        train_run(point.cfg, folder, status)
    if not point.tested:
        return f"lr {point.cfg.train.lr:.2g}, average stage accuracy {validation_scores(folder)['average_accuracy']}"
    metrics = evaluate_run(config, point, folder)
    shown = [k for k in metrics if k.split("/")[-1] in ("accuracy", "preference_accuracy", "rougeL")]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in shown)


def evaluate_run(config: RunConfig, point: Point, folder: Path) -> dict[str, float]:
    """Score a trained run (or the base model) on each test file, in the prompt format it was trained in.
    Writes items.json, then result.json ({"metrics", "curve", "matrix", "tested_on"}) last."""
    from ..data.prompt_format import PromptFormat
    from ..evaluation.evaluate import evaluate_examples
    from ..memory import Embedder
    from ..runs import Run

    if point.trained:
        run = Run.from_pretrained(folder, memory=False)
        fmt = run.format  # its prompt_format.json, exactly as `icft eval --run` tests it
    else:
        run = Run.from_base(point.cfg.model.name)
        fmt = PromptFormat.from_config(run.tokenizer, point.cfg)  # the format the trained methods start from
        folder.mkdir(parents=True, exist_ok=True)
        save_config(point.cfg, folder / "config.yaml")
    metrics: dict[str, float] = {}
    items: dict[str, dict] = {}
    embedder = Embedder()
    for label, examples in test_sets(config).items():
        result = evaluate_examples(run.model, run.tokenizer, examples, embedder=embedder,
                                   max_length=point.cfg.model.max_length, progress=False, fmt=fmt)  # fmt: skip
        file_metrics, items[label] = file_summary(result)
        metrics.update({f"{label}/{k}": v for k, v in file_metrics.items()})
    metrics.update(training_summary(point, folder, run.model))
    write_json(folder / "items.json", items)
    write_json(folder / "result.json", {"metrics": metrics, **training_curves(folder), "tested_on": tested_on(config)})
    return metrics


def training_summary(point: Point, folder: Path, model) -> dict[str, float]:
    """The run-level metrics: cost (summary.json) and validation scores after each stage (stage_eval.json)."""
    from ..models import count_parameters

    if not point.trained:
        return {"trainable_params": 0, "wall_s": 0.0, "total_params": count_parameters(model)[1]}
    summary = json.loads((folder / "summary.json").read_text())
    stage_eval = json.loads((folder / "stage_eval.json").read_text())
    summary.update({k: stage_eval[k] for k in ("average_accuracy", "forgetting", "backward_transfer")})
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}


def training_curves(folder: Path) -> dict[str, list]:
    """The learning curve (metrics.jsonl) and the accuracy matrix; empty for the base model."""
    if not (folder / "stage_eval.json").exists():
        return {"curve": [], "matrix": []}
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return {"curve": [json.loads(x) for x in lines if x],
            "matrix": json.loads((folder / "stage_eval.json").read_text())["accuracy_matrix"]}


def validation_scores(folder: Path) -> dict:
    stage_eval = json.loads((folder / "stage_eval.json").read_text())
    return {"average_accuracy": stage_eval["average_accuracy"], "average_nll": stage_eval["average_nll"]}


def best_scale(scores: dict[float, dict]) -> float:
    """The scale with the best average stage accuracy on validation (lowest answer NLL where nothing is
    scored by choice); a tie goes to the scale nearest 1, the rate the config gives."""
    def key(scale: float) -> tuple:
        s = scores[scale]
        quality = s["average_accuracy"] if s["average_accuracy"] is not None else -(s["average_nll"] or math.inf)
        return (quality, -abs(math.log(scale)))

    return max(scores, key=key)


def chosen_rates(config: RunConfig, output_dir: Path) -> tuple[dict[str, float], dict]:
    """Each trained method's learning rate, picked by best_scale from its selection runs' validation scores, and
    the record lr_selection.json holds. Reads the folders only; ({}, {}) without compare.lr_scales."""
    scores: dict[str, dict[float, dict]] = {}
    for point in selection_points(config):
        scores.setdefault(point.method, {})[point.scale] = {"lr": point.cfg.train.lr,
                                                            **validation_scores(run_dir(output_dir, point))}
    chosen = {m: best_scale(by_scale) for m, by_scale in scores.items()}
    record = {m: {"chosen_scale": chosen[m], "lr": by_scale[chosen[m]]["lr"],
                  "runs": {f"x{scale:g}": s for scale, s in sorted(by_scale.items())}}
              for m, by_scale in scores.items()}  # fmt: skip
    return {m: r["lr"] for m, r in record.items()}, record


def report(config: RunConfig, output_dir: Path) -> dict:
    """results.json, lr_selection.json, report.md and the plots, from the run folders alone: no training, no
    evaluation. Returns the results."""
    lrs, selection = chosen_rates(config, output_dir)
    if selection:
        write_json(output_dir / "lr_selection.json", selection)
    points = seed_points(config, lrs)
    outcomes = {(p.method, p.seed): json.loads((run_dir(output_dir, p) / "result.json").read_text()) for p in points}
    methods, first = config.compare.methods, config.compare.seeds[0]
    per_seed = {m: {s: outcomes[(m, s)]["metrics"] for s in seeds_of(config, m)} for m in methods}
    results = {
        "methods": {m: mean_std(list(rows.values())) for m, rows in per_seed.items()},
        "per_seed": {m: {str(s): metrics for s, metrics in rows.items()} for m, rows in per_seed.items()},
        "baselines": baselines_on_tests(config),
        "statistics": statistics(config, output_dir, points, per_seed),
        "learning_rates": {m: lrs.get(m, default_lr(config, m)) for m in methods if m != "base"},
    }
    write_json(output_dir / "results.json", results)
    curves = {m: outcomes[(m, first)]["curve"] for m in methods if outcomes[(m, first)]["curve"]}
    matrices = {m: [outcomes[(m, s)]["matrix"] for s in seeds_of(config, m)] for m in methods
                if outcomes[(m, first)]["matrix"]}  # fmt: skip
    write_text(output_dir / "report.md", report_markdown(results, config, matrices))
    plots(output_dir, curves, {m: mean_matrix(per_seed) for m, per_seed in matrices.items()}, results["methods"])
    return results


def statistics(config: RunConfig, output_dir: Path, points: list[Point], per_seed: dict) -> dict:
    """The paired differences from REFERENCE, on every test item's score (items.json); the one `base` run
    pairs with every seed."""
    items: dict[str, dict[int, dict]] = {}
    for p in points:
        seeds = config.compare.seeds if p.method == "base" else [p.seed]
        for seed in seeds:
            items.setdefault(p.method, {})[seed] = json.loads((run_dir(output_dir, p) / "items.json").read_text())
    differences = compare_to(REFERENCE, items, per_seed) if REFERENCE in config.compare.methods else {}
    return {"reference": REFERENCE, "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES, "differences": differences}


def baselines_on_tests(config: RunConfig) -> dict[str, dict[str, float]]:
    """The trivial baselines (random, majority, position prior) on the same test items as the methods."""
    baselines: dict[str, dict[str, float]] = {}
    for label, examples in test_sets(config).items():
        for name, values in trivial_baselines(examples).items():
            baselines.setdefault(name, {}).update({f"{label}/{k}": v for k, v in values.items()})
    return baselines


def compare(config: RunConfig, output_dir: Path) -> dict:
    """Run what the grid lacks (the selection runs, then the seeded runs at the chosen rates), then report."""
    check_inputs(config, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")
    if config.compare.lr_scales:
        print(f"choosing learning rates on validation: {', '.join(f'x{s:g}' for s in config.compare.lr_scales)} "
              "of each method's rate", flush=True)  # fmt: skip
        run_grid(config, selection_points(config), output_dir)
    run_grid(config, seed_points(config, chosen_rates(config, output_dir)[0]), output_dir)
    results = report(config, output_dir)
    print("\n".join([results_table(results), "", *below_baselines(results), "", *difference_table(results), "",
                     *in_plain_words(results)]))
    print(f"\nwrote {output_dir / 'report.md'} (tables, paired differences, plots beside it) and "
          f"{output_dir / 'results.json'}")  # fmt: skip
    return results


def check_inputs(config: RunConfig, output_dir: Path) -> None:
    """Before anything runs or a folder is made: the output folder, every method's config, every data file
    (grouped as the runs read them: train together, validation together, each test file on its own)."""
    check_output_dir(output_dir)
    for method in config.compare.methods:
        method_config(config, method, config.compare.seeds[0])
    for specs in (config.data.train, config.data.validation, *([spec] for spec in config.compare.test)):
        load_data(specs, quiet=True)


def _pool(config: RunConfig) -> ProcessPoolExecutor:
    """Every run gets a fresh process, so that its peak memory is its own."""
    parallel = config.compare.jobs > 1
    return ProcessPoolExecutor(config.compare.jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_one_thread_worker if parallel else None, max_tasks_per_child=1)


def _one_thread_worker() -> None:
    # Two single-threaded runs side by side get more from two cores than one run on both (1.4x measured
    # with the embedded default): small matrix products do not scale well across threads.
    import torch

    torch.set_num_threads(1)
    os.environ["ICFT_QUIET"] = "1"  # two progress bars at once would garble the terminal


def check_output_dir(output_dir: Path) -> None:
    """Before anything runs: the output folder is new, empty, or an earlier comparison's (its config.yaml)."""
    from ..io import check_output_dir as check_writable

    check_writable(output_dir, "--output-dir")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / "config.yaml").is_file():
        raise ConfigError(f"{output_dir}: not empty and not an icft compare folder (no config.yaml): give a new or "
                          "empty --output-dir")  # fmt: skip
    if any(output_dir.glob("*/seed*/")):  # runs of an icft before hash-named folders
        raise ConfigError(f"{output_dir} holds <method>/seed<N> run folders: move them to {RUNS}/ once with "
                          f"`python -m tools.migrate_compare {output_dir}`")  # fmt: skip
