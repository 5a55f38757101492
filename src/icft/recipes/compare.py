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
- icft-no-pacing:      icft without pacing; the same config as lora-memory, so it reads lora-memory's runs

The ablations (icft-no-*) may run fewer seeds than the rest (compare.ablation_seeds).

Test data: one or more files (default the bundled test-retention and test-unseen), each evaluated and
reported on its own. Nothing here is tuned on test data.

Learning rates (compare.lr_scales): every method's rate is chosen the same way, on validation only: at the
first seed, one training run per scale times the method's own rate (<output>/<method>/lr-select/x<scale>),
keeping the best average stage accuracy; the seeded runs then use it, and the selection run at the chosen
rate (same config, same seed) is the first seed's run. The other way round too: a first seed's run already
trained at the method's own rate (a comparison run before with other scales, or none) is its x1 selection run.
A kept run trained at another rate than the one chosen is refused, named, rather than mixed into the table.

Each method/seed run folder (<output>/<method>/seed<N>) ends with `items.json` (every test item's score, so
statistics can pair items across methods and seeds) and then `result.json`, written last: a folder with
`result.json` is a finished run, kept when `icft compare` runs again on the same output folder; one with
checkpoints and no `result.json` was interrupted, and resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import random
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..config import RunConfig, check, load_config, save_config
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
    "icft-no-pacing": {"curriculum.pacing": "none", "memory.enabled": True},  # = lora-memory
}
# A method whose config is another's: it reads that method's runs instead of training the same thing twice.
SAME_RUNS = {"icft-no-pacing": "lora-memory"}
REFERENCE = "icft"  # the method the paired differences are taken from
# compare keys that choose which runs happen, not what a run does: they may change between a run and its resume.
# compare.lr_scales may too: a kept run whose rate is not the one chosen is refused by check_trained_rates.
SCHEDULING_KEYS = ("compare.methods", "compare.seeds", "compare.ablation_seeds", "compare.jobs", "compare.lr_scales")


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


def run_dir_of(output_dir: Path, method: str, seed: int) -> Path:
    return output_dir / SAME_RUNS.get(method, method) / f"seed{seed}"


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


def run_method(config: RunConfig, method: str, seed: int, output_dir: Path, status: str = "new",
               lr: float | None = None) -> dict:
    """Train one method with one seed (nothing for `base`), then evaluate it on each test file.

    Writes items.json, then result.json ({"metrics", "curve", "matrix"}, also returned) last, so that a run
    with result.json is complete. Runs in a worker process.
    """
    from ..data.prompt_format import PromptFormat
    from ..evaluation.evaluate import evaluate_examples
    from ..memory import Embedder
    from ..models import count_parameters
    from ..runs import Run

    cfg = method_config(config, SAME_RUNS.get(method, method), seed, lr)
    run_dir = run_dir_of(output_dir, method, seed)
    curve, matrix = [], []
    if method == "base":
        run = Run.from_base(cfg.model.name)
        summary = {"trainable_params": 0, "wall_s": 0.0, "total_params": count_parameters(run.model)[1]}
    else:
        train_run(cfg, run_dir, status)
        run = Run.from_pretrained(run_dir, memory=False)
        summary = json.loads((run_dir / "summary.json").read_text())
        stage_eval = json.loads((run_dir / "stage_eval.json").read_text())
        summary.update({k: stage_eval[k] for k in ("average_accuracy", "forgetting", "backward_transfer")})
        matrix = stage_eval["accuracy_matrix"]
        curve = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    metrics: dict[str, float] = {}
    items: dict[str, dict] = {}
    embedder = Embedder()
    # Tested in the prompt format it was trained in (its prompt_format.json), exactly as `icft eval --run` tests
    # it; the base model in the one its config asks for, as the methods trained on it.
    fmt = run.format if method != "base" else PromptFormat.from_config(run.tokenizer, cfg)
    for label, examples in test_sets(config).items():
        result = evaluate_examples(run.model, run.tokenizer, examples, embedder=embedder,
                                   max_length=cfg.model.max_length, progress=False, fmt=fmt)  # fmt: skip
        file_metrics, items[label] = file_summary(result)
        metrics.update({f"{label}/{k}": v for k, v in file_metrics.items()})
    metrics.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
    outcome = {"metrics": metrics, "curve": curve, "matrix": matrix}
    write_json(run_dir / "items.json", items)
    write_json(run_dir / "result.json", outcome)
    return outcome


def lr_selection_dir(output_dir: Path, method: str, scale: float) -> Path:
    return output_dir / method / "lr-select" / f"x{scale:g}"


def lr_selection_run(config: RunConfig, method: str, scale: float, output_dir: Path) -> dict:
    """Train one method at the first seed with `scale` times its own learning rate, and return its
    validation scores from stage_eval.json. Training only: the test files are never read here."""
    cfg = method_config(config, method, config.compare.seeds[0], lr=scale * default_lr(config, method))
    run_dir = lr_selection_dir(output_dir, method, scale)
    seed_run = run_dir_of(output_dir, method, config.compare.seeds[0])
    if run_status(seed_run) in ("trained", "finished") and math.isclose(trained_lr(seed_run), cfg.train.lr):
        # The first seed's run at this rate is this selection run (same config, same seed): its training is
        # copied, not repeated; its test evaluation is left behind, as selection never reads test data.
        take_over_run(seed_run, run_dir, leave=("items.json", "result.json"))
    train_run(cfg, run_dir, run_status(run_dir))
    stage_eval = json.loads((run_dir / "stage_eval.json").read_text())
    return {"lr": cfg.train.lr, "average_accuracy": stage_eval["average_accuracy"],
            "average_nll": stage_eval["average_nll"]}  # fmt: skip


def trained_lr(run_dir: Path) -> float:
    """The learning rate a run folder was trained at (its config.yaml, written when training starts)."""
    return load_config(run_dir / "config.yaml").train.lr


def check_trained_rates(config: RunConfig, jobs: list[tuple[str, int]], status: dict, lrs: dict[str, float],
                        output_dir: Path) -> None:  # fmt: skip
    """Kept or resumed runs must have been trained at the rate their method uses now (its chosen one when
    rates are chosen): a ConfigError names each that was not, so no table mixes two rates of one method."""
    stale = []
    kept = {run_dir_of(output_dir, m, s): m for m, s in jobs if m != "base" and status[(m, s)] != "new"}
    for run_dir, method in kept.items():  # a folder two methods share (SAME_RUNS) is checked, and named, once
        trained, lr = trained_lr(run_dir), lrs.get(method, default_lr(config, method))
        if not math.isclose(trained, lr):
            stale.append(f"{run_dir} (lr {trained:g}, now {lr:g})")
    if stale:
        raise ConfigError(f"runs trained at another learning rate than their method's: {'; '.join(stale)}. "
                          "Delete those folders to train them again at the rate now chosen")  # fmt: skip


def best_scale(scores: dict[float, dict]) -> float:
    """The scale with the best average stage accuracy on validation (lowest answer NLL where nothing is
    scored by choice); a tie goes to the scale nearest 1, the rate the config gives."""
    def key(scale: float) -> tuple:
        s = scores[scale]
        quality = s["average_accuracy"] if s["average_accuracy"] is not None else -(s["average_nll"] or math.inf)
        return (quality, -abs(math.log(scale)))

    return max(scores, key=key)


def select_learning_rates(config: RunConfig, output_dir: Path) -> dict[str, float]:
    """Every trained method's learning rate, chosen on validation the same way for all (compare.lr_scales
    times the method's own rate, at the first seed). Writes lr_selection.json; finished selection runs are
    kept when compare runs again, as the seeded runs are."""
    scales = config.compare.lr_scales
    runs_of = {m: SAME_RUNS.get(m, m) for m in config.compare.methods if m != "base"}  # whose runs each reads
    jobs = [(m, scale) for m in dict.fromkeys(runs_of.values()) for scale in scales]
    scores: dict[str, dict[float, dict]] = {m: {} for m, _ in jobs}
    print(f"choosing learning rates on validation: {len(jobs)} runs ({', '.join(f'x{s:g}' for s in scales)} "
          "of each method's rate)", flush=True)  # fmt: skip
    with _pool(config) as pool:
        futures = {pool.submit(lr_selection_run, config, m, scale, output_dir): (m, scale) for m, scale in jobs}
        for future in as_completed(futures):
            method, scale = futures[future]
            scores[method][scale] = future.result()
            print(f"  {method} lr {scores[method][scale]['lr']:.2g}: average stage accuracy "
                  f"{scores[method][scale]['average_accuracy']}", flush=True)  # fmt: skip
    chosen = {m: best_scale(scores[runs]) for m, runs in runs_of.items()}
    write_json(output_dir / "lr_selection.json", {
        m: {"chosen_scale": chosen[m], "lr": scores[runs][chosen[m]]["lr"],
            "runs": {f"x{scale:g}": s for scale, s in sorted(scores[runs].items())}} for m, runs in runs_of.items()
    })  # fmt: skip
    for m, runs in runs_of.items():
        reuse_selection_run(output_dir, runs, config.compare.seeds[0], chosen[m])
    return {m: scores[runs][chosen[m]]["lr"] for m, runs in runs_of.items()}


def reuse_selection_run(output_dir: Path, method: str, seed: int, scale: float) -> None:
    """The selection run at the chosen rate is the first seed's run (same config, same seed), so its trained
    folder becomes that run's, and only the test evaluation is left to do: one training run fewer per method."""
    take_over_run(lr_selection_dir(output_dir, method, scale), run_dir_of(output_dir, method, seed))


def take_over_run(source: Path, target: Path, leave: tuple[str, ...] = ()) -> None:
    """Copy a trained run folder to `target` (a run of the same config and seed) unless something there is
    already trained, finished or resumable; the files named in `leave` stay behind."""
    if run_status(target) == "new":
        shutil.rmtree(target, ignore_errors=True)  # a folder with nothing finished in it
        shutil.copytree(source, target, ignore=shutil.ignore_patterns(*leave))


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


def check_same_config(config: RunConfig, output_dir: Path) -> None:
    """Runs kept or resumed in `output_dir` must come from this config: a ConfigError names the keys that
    changed. Methods, seeds and jobs may change (adding a seed keeps the runs already done)."""
    saved = output_dir / "config.yaml"
    if not saved.exists():
        return
    # Read through load_config, so that a key added in a later version counts as its default, not a change.
    old, new = _flat(load_config(saved).to_dict()), _flat(config.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in SCHEDULING_KEYS)
    if changed:
        raise ConfigError(f"{output_dir} holds runs of another config ({', '.join(changed)} changed): give a new "
                          "--output-dir, or delete that folder to start over")  # fmt: skip


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) and key != "scorers"
                   else {prefix + key: value})  # fmt: skip
    return out


def plan(jobs: list[tuple[str, int]], output_dir: Path) -> dict[tuple[str, int], str]:
    """Each job's run_status, and one printed line on what is kept or resumed."""
    status = {job: run_status(run_dir_of(output_dir, *job)) for job in jobs}
    said = {s: [f"{m} seed {seed}" for (m, seed), v in status.items() if v == s]
            for s in ("finished", "trained", "interrupted")}  # fmt: skip
    if any(said.values()):
        print(f"{output_dir}: keeping {len(said['finished'])} finished runs; evaluating "
              f"{len(said['trained'])} trained ({', '.join(said['trained']) or '-'}); resuming "
              f"{len(said['interrupted'])} interrupted ({', '.join(said['interrupted']) or '-'}); "
              f"{sum(v == 'new' for v in status.values())} new", flush=True)  # fmt: skip
    return status


def check_output_dir(output_dir: Path) -> None:
    """Before anything runs: the output folder is new, empty, or an earlier comparison's (its config.yaml)."""
    from ..io import check_output_dir as check_writable

    check_writable(output_dir, "--output-dir")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / "config.yaml").is_file():
        raise ConfigError(f"{output_dir}: not empty and not an icft compare folder (no config.yaml): give a new or "
                          "empty --output-dir")  # fmt: skip


def compare(config: RunConfig, output_dir: Path) -> dict:
    check_output_dir(output_dir)
    for method in config.compare.methods:  # every method's config is checked before anything runs
        method_config(config, method, config.compare.seeds[0])
    # And every data file is read once here, so a bad file is one error before any run starts or a folder is made.
    # (Grouped as the runs read them: train together, validation together, each test file on its own.)
    for specs in (config.data.train, config.data.validation, *([spec] for spec in config.compare.test)):
        load_data(specs, quiet=True)
    check_same_config(config, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")
    seeds, first = config.compare.seeds, config.compare.seeds[0]
    jobs = [(m, s) for m in config.compare.methods for s in seeds_of(config, m)]
    lrs = select_learning_rates(config, output_dir) if config.compare.lr_scales else {}
    status = plan(jobs, output_dir)
    check_trained_rates(config, jobs, status, lrs, output_dir)
    outcomes = {job: json.loads((run_dir_of(output_dir, *job) / "result.json").read_text())
                for job in jobs if status[job] == "finished"}  # fmt: skip
    # A method in SAME_RUNS shares its runs: each run folder is trained and evaluated once.
    todo = list({run_dir_of(output_dir, *job): job for job in jobs if status[job] != "finished"}.values())
    started = time.perf_counter()

    def done(job: tuple[str, int], outcome: dict) -> None:
        outcomes[job] = outcome
        m = outcome["metrics"]
        shown = [k for k in m if k.split("/")[-1] in ("accuracy", "preference_accuracy", "rougeL")]
        print(f"[{len(outcomes)}/{len(jobs)} {time.perf_counter() - started:.0f}s] {job[0]} seed {job[1]}: "
              + ", ".join(f"{k}={m[k]:.3f}" for k in shown), flush=True)  # fmt: skip

    if todo:
        with _pool(config) as pool:
            futures = {pool.submit(run_method, config, m, s, output_dir, status[(m, s)], lrs.get(m)): (m, s)
                       for m, s in todo}  # fmt: skip
            for future in as_completed(futures):
                done(futures[future], future.result())
    for job in jobs:  # a method that shares another's run folder reads it now
        if job not in outcomes:
            outcomes[job] = json.loads((run_dir_of(output_dir, *job) / "result.json").read_text())

    methods = config.compare.methods
    per_seed = {m: {s: outcomes[(m, s)]["metrics"] for s in seeds_of(config, m)} for m in methods}
    # Per-item scores for the paired statistics; the one `base` run pairs with every seed.
    items = {m: {s: json.loads((run_dir_of(output_dir, m, first if m == "base" else s) / "items.json").read_text())
                 for s in (seeds if m == "base" else seeds_of(config, m))} for m in methods}  # fmt: skip
    statistics = {"reference": REFERENCE, "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES,
                  "differences": compare_to(REFERENCE, items, per_seed) if REFERENCE in methods else {}}  # fmt: skip
    baselines: dict[str, dict[str, float]] = {}
    for label, examples in test_sets(config).items():
        for name, values in trivial_baselines(examples).items():
            baselines.setdefault(name, {}).update({f"{label}/{k}": v for k, v in values.items()})
    results = {
        "methods": {m: mean_std(list(rows.values())) for m, rows in per_seed.items()},
        "per_seed": {m: {str(s): metrics for s, metrics in rows.items()} for m, rows in per_seed.items()},
        "baselines": baselines,
        "statistics": statistics,
        "learning_rates": {m: lrs.get(m, default_lr(config, m)) for m in methods if m != "base"},
    }
    write_json(output_dir / "results.json", results)
    curves = {m: outcomes[(m, first)]["curve"] for m in methods if outcomes[(m, first)]["curve"]}
    matrices = {m: [outcomes[(m, s)]["matrix"] for s in seeds_of(config, m)] for m in methods
                if outcomes[(m, first)]["matrix"]}  # fmt: skip
    write_text(output_dir / "report.md", report_markdown(results, config, matrices))
    plots(output_dir, curves, {m: mean_matrix(per_seed) for m, per_seed in matrices.items()}, results["methods"])
    print("\n".join([results_table(results), "", *below_baselines(results), "", *difference_table(results), "",
                     *in_plain_words(results)]))
    return results
