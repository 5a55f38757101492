"""Compare ICFT with baselines: same data, step budget and seeds; mean and std over seeds.

Methods (each a set of config overrides on the same base config, so the comparison is a config diff):
- base:            the untrained model
- full-ft:         all data mixed, every weight trained
- lora-mixed:      all stages shuffled together, LoRA
- lora-sequential: stages in order, no pacing, no memory
- lora-curriculum: stages in order with competence pacing, no memory
- lora-memory:     stages in order without pacing, with STM/LTM replay and the consistency loss
- icft:            pacing and memory: the full method

Test data (default: the bundled test split) holds only conditions never trained on, so every test
figure is also a generalisation figure. Nothing here is tuned on test data.
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
from pathlib import Path

from ..config import RunConfig, save_config
from ..data.schema import Example
from ..data.sources import load_data
from ..io import write_json, write_text

METHOD_OVERRIDES: dict[str, dict[str, object]] = {
    "base": {},
    "full-ft": {"peft.method": "full", "curriculum.order": "mixed", "memory.enabled": False},
    "lora-mixed": {"curriculum.order": "mixed", "memory.enabled": False},
    "lora-sequential": {"curriculum.pacing": "none", "memory.enabled": False},
    "lora-curriculum": {"memory.enabled": False},
    "lora-memory": {"curriculum.pacing": "none", "memory.enabled": True},
    "icft": {"memory.enabled": True},
}
# Figures of the report, in this order: (key, label, higher is better).
REPORT_METRICS = [
    ("accuracy", "MC accuracy (test)", True),
    ("accuracy_norm", "MC accuracy, length-norm. (test)", True),
    ("preference_accuracy", "preference accuracy (test)", True),
    ("general_accuracy", "general-domain accuracy (test)", True),
    ("rougeL", "ROUGE-L (test)", True),
    ("bleu", "BLEU (test)", True),
    ("embedding_similarity", "MiniLM cosine (test)", True),
    ("error_rate", "error rate (test)", False),
    ("average_accuracy", "avg. stage accuracy (val)", True),
    ("forgetting", "forgetting (val)", False),
    ("backward_transfer", "backward transfer (val)", True),
    ("trainable_params", "trainable parameters", None),
    ("peak_rss_mb", "peak memory (MB)", False),
    ("wall_s", "train wall time (s)", False),
]


def method_config(config: RunConfig, method: str, seed: int) -> RunConfig:
    if method not in METHOD_OVERRIDES:
        raise ValueError(f"unknown method '{method}' (known: {', '.join(METHOD_OVERRIDES)})")
    out = copy.deepcopy(config)
    for key, value in METHOD_OVERRIDES[method].items():
        section, name = key.split(".")
        setattr(getattr(out, section), name, value)
    if method == "full-ft":
        out.train.lr = config.compare.full_ft_lr
    out.train.seed = seed
    out.name = f"{config.name}-{method}-seed{seed}"
    return out


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


def evaluate_run(model, tokenizer, test: list[Example], embedder, config: RunConfig) -> dict[str, float]:
    from ..evaluation.evaluate import evaluate_examples

    result = evaluate_examples(model, tokenizer, test, embedder=embedder, max_length=config.model.max_length,
                               max_new_tokens=24, progress=False)  # fmt: skip
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    by = result.metrics.get("accuracy_by", {})
    if "source=icft-general" in by:
        metrics["general_accuracy"] = by["source=icft-general"]
    scorable = sum(1 for ex in test if ex.kind == "preference" or ex.options)
    metrics["error_rate"] = len([e for e in result.errors if e.get("kind") != "generation"]) / max(1, scorable)
    return metrics


def run_method(config: RunConfig, method: str, seed: int, output_dir: Path) -> dict:
    """Train one method with one seed (nothing for `base`), then evaluate it on the test data.

    Returns {"metrics", "curve", "matrix"}; runs in a worker process when `compare.jobs` > 1.
    """
    from ..memory import Embedder
    from ..models import count_parameters, load_model, load_trained
    from .train import train

    cfg = method_config(config, method, seed)
    run_dir = output_dir / method / f"seed{seed}"
    curve, matrix = [], []
    if method == "base":
        model, tokenizer = load_model(cfg.model.name)
        summary = {"trainable_params": 0, "wall_s": 0.0, "total_params": count_parameters(model)[1]}
    else:
        train(cfg, run_dir)
        model, tokenizer = load_trained(run_dir)
        summary = json.loads((run_dir / "summary.json").read_text())
        stage_eval = json.loads((run_dir / "stage_eval.json").read_text())
        summary.update({k: stage_eval[k] for k in ("average_accuracy", "forgetting", "backward_transfer")})
        matrix = stage_eval["accuracy_matrix"]
        curve = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    test = limit_per_kind(load_data(config.compare.test, quiet=True), config.compare.max_test_examples)
    metrics = evaluate_run(model, tokenizer, test, Embedder(), cfg)
    metrics.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
    return {"metrics": metrics, "curve": curve, "matrix": matrix}


def _one_thread_worker() -> None:
    # Two single-threaded runs side by side get more from two cores than one run on both (1.4x measured
    # with the embedded default): small matrix products do not scale well across threads.
    import torch

    torch.set_num_threads(1)
    os.environ["ICFT_QUIET"] = "1"  # two progress bars at once would garble the terminal


def compare(config: RunConfig, output_dir: Path) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")
    # `base` is untrained, the same model whatever the seed: evaluated once.
    jobs = [(m, s) for m in config.compare.methods for s in (config.compare.seeds[:1] if m == "base"
                                                              else config.compare.seeds)]  # fmt: skip
    outcomes: dict[tuple[str, int], dict] = {}
    started = time.perf_counter()

    def done(job: tuple[str, int], outcome: dict) -> None:
        outcomes[job] = outcome
        m = outcome["metrics"]
        print(f"[{len(outcomes)}/{len(jobs)} {time.perf_counter() - started:.0f}s] {job[0]} seed {job[1]}: "
              + ", ".join(f"{k}={m[k]:.3f}" for k in ("accuracy", "preference_accuracy", "rougeL") if k in m),
              flush=True)  # fmt: skip

    # Every run gets a fresh process, so that its peak memory is its own.
    parallel = config.compare.jobs > 1
    with ProcessPoolExecutor(config.compare.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_one_thread_worker if parallel else None, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_method, config, m, s, output_dir): (m, s) for m, s in jobs}
        for future in as_completed(futures):
            done(futures[future], future.result())

    per_seed = {m: [outcomes[(m, s)]["metrics"] for s in config.compare.seeds if (m, s) in outcomes]
                for m in config.compare.methods}  # fmt: skip
    if per_seed.get("base"):
        per_seed["base"] = per_seed["base"] * len(config.compare.seeds)
    first = config.compare.seeds[0]
    curves = {m: outcomes[(m, first)]["curve"] for m in config.compare.methods if outcomes[(m, first)]["curve"]}
    matrices = {m: outcomes[(m, first)]["matrix"] for m in config.compare.methods if outcomes[(m, first)]["matrix"]}
    results = {method: _mean_std(rows) for method, rows in per_seed.items()}
    write_json(output_dir / "results.json", results)
    table = results_table(results, config)
    write_text(output_dir / "report.md", _report(results, table, config, matrices))
    _plots(output_dir, curves, matrices, results)
    print(table)
    return results


def _mean_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if key in r and r[key] is not None and not math.isnan(r[key])]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "n": len(values)}
    return out


def results_table(results: dict, config: RunConfig) -> str:
    """Markdown table: one row per method, mean ± std over seeds."""
    methods = list(results)
    keys = [(k, label) for k, label, _ in REPORT_METRICS if any(k in results[m] for m in methods)]
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key, label in keys:
        cells = []
        for m in methods:
            v = results[m].get(key)
            if v is None:
                cells.append("–")
            elif key in ("trainable_params",):
                cells.append(f"{v['mean']:,.0f}")
            elif key in ("peak_rss_mb", "wall_s"):
                cells.append(f"{v['mean']:.0f}")
            else:
                cells.append(f"{v['mean']:.3f} ± {v['std']:.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(results: dict) -> list[str]:
    """Where ICFT wins, ties or loses against each baseline: a tie is a gap within one std of either side."""
    if "icft" not in results:
        return []
    lines = []
    for key, label, higher in REPORT_METRICS:
        if higher is None or key not in results["icft"]:
            continue
        ours = results["icft"][key]
        wins, ties, losses = [], [], []
        for m, r in results.items():
            if m == "icft" or key not in r or (m == "base" and key in ("peak_rss_mb", "wall_s")):
                continue  # the untrained base costs nothing to train: no contest there
            gap = ours["mean"] - r[key]["mean"]
            noise = max(ours["std"], r[key]["std"])
            if abs(gap) <= noise or abs(gap) < 1e-9:
                ties.append(m)
            elif (gap > 0) == higher:
                wins.append(m)
            else:
                losses.append(m)
        lines.append(f"- **{label}**: wins vs {', '.join(wins) or 'none'}; ties with {', '.join(ties) or 'none'};"
                     f" loses to {', '.join(losses) or 'none'}.")  # fmt: skip
    return lines


def _report(results: dict, table: str, config: RunConfig, matrices: dict) -> str:
    seeds = ", ".join(map(str, config.compare.seeds))
    parts = [
        f"# ICFT comparison: {config.name}",
        "",
        f"Model `{config.model.name}`, {config.train.max_steps} optimizer steps per method, batch "
        f"{config.train.batch_size}, seeds {seeds}; mean ± std over seeds. Test data: "
        f"{', '.join(config.compare.test)} (conditions never seen in training"
        + (f"; {config.compare.max_test_examples} examples of each kind" if config.compare.max_test_examples else "")
        + "). Stage accuracies, forgetting "
        "and backward transfer come from the validation splits after each stage's step budget.",
        "",
        table,
        "",
        "## Where ICFT wins, ties or loses",
        "A tie: the gap is within one standard deviation over seeds.",
        "",
        *verdicts(results),
        "",
        "## Accuracy matrices (seed of the first run; rows: after stage i, columns: stage j)",
    ]
    for method, R in matrices.items():
        parts += ["", f"**{method}**", "", "```", *["  ".join(f"{a:.3f}" for a in row) for row in R], "```"]
    parts += ["", "Plots: `learning_curves.png`, `accuracy_matrices.png`, `forgetting.png`.", ""]
    return "\n".join(parts)


def _plots(output_dir: Path, curves: dict, matrices: dict, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, records in curves.items():
        ax.plot([r["step"] for r in records], [r["loss_task"] for r in records], label=method)
    ax.set(xlabel="optimizer step", ylabel="task loss (current batch)", title="Learning curves (first seed)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output_dir / "learning_curves.png", dpi=120)
    plt.close(fig)

    if matrices:
        fig, axes = plt.subplots(1, len(matrices), figsize=(3.2 * len(matrices), 3.2), squeeze=False)
        for ax, (method, R) in zip(axes[0], matrices.items()):
            ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
            for i, row in enumerate(R):
                for j, a in enumerate(row):
                    ax.text(j, i, f"{a:.2f}", ha="center", va="center", color="white", fontsize=8)
            ticks = range(len(R))
            ax.set_xticks(ticks, [str(i + 1) for i in ticks])
            ax.set_yticks(ticks, [str(i + 1) for i in ticks])
            ax.set(title=method, xlabel="evaluated on stage", ylabel="after stage")
        fig.tight_layout()
        fig.savefig(output_dir / "accuracy_matrices.png", dpi=120)
        plt.close(fig)

    methods = [m for m in results if "forgetting" in results[m]]
    if methods:
        fig, ax = plt.subplots(figsize=(8, 4))
        means = [results[m]["forgetting"]["mean"] for m in methods]
        stds = [results[m]["forgetting"]["std"] for m in methods]
        ax.bar(methods, means, yerr=stds, capsize=4)
        ax.set(ylabel="forgetting (lower is better)", title="Forgetting per method (validation, mean ± std)")
        fig.tight_layout()
        fig.savefig(output_dir / "forgetting.png", dpi=120)
        plt.close(fig)
