"""The comparison report, read top to bottom:

1. the main table: one column per method (mean ± std over seeds, and how many seeds), then one column per
   trivial baseline (random guess, constant answer, best option position) on the same test items; one block
   of rows per test file (e.g. retention, unseen), then the run-level rows (stage accuracy, forgetting, cost);
2. one line per method: the metrics on which it does not beat the best trivial baseline;
3. the paired differences: ICFT minus each method, with a 95% interval (paired bootstrap for test metrics,
   paired t over seeds for run-level ones; evaluation/statistics.py) and whether it excludes 0;
4. stage 1's accuracy after each stage, seed by seed, the accuracy matrices (mean over seeds), and the plots.

`results` is what compare writes to results.json: {"methods": {method: {metric: {"mean", "std", "n"}}},
"per_seed": ..., "baselines": {baseline: {metric: value}}, "statistics": {"reference", "differences": ...}}.
Test metrics are keyed "<file>/<metric>" (e.g. "unseen/accuracy"), run-level ones by their name.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import RunConfig

# Rows of each test file's block, in this order: (metric, label, higher is better).
TEST_METRICS = [
    ("accuracy", "MC accuracy", True),
    ("accuracy_norm", "MC accuracy, length-norm.", True),
    ("macro_f1", "yes/no/maybe macro-F1", True),
    ("recall_yes", "recall of yes", True),
    ("recall_no", "recall of no", True),
    ("recall_maybe", "recall of maybe", True),
    ("preference_accuracy", "preference accuracy", True),
    ("general_accuracy", "general-domain accuracy", True),
    ("rougeL", "ROUGE-L", True),
    ("bleu", "BLEU", True),
    ("embedding_similarity", "MiniLM cosine", True),
    ("error_rate", "error rate", False),
]
# Rows after the test blocks: from the validation splits during training, and the cost of training.
RUN_METRICS = [
    ("average_accuracy", "avg. stage accuracy (val)", True),
    ("forgetting", "forgetting (val)", False),
    ("backward_transfer", "backward transfer (val)", True),
    ("trainable_params", "trainable parameters", None),
    ("peak_rss_mb", "peak memory (MB)", False),
    ("wall_s", "train wall time (s)", False),
]
# A constant answer has recall 1 on its own label: "beating" it there means nothing, so recalls are shown
# but left out of the floor check. ROUGE-L is in it: one constant answer can score high on templated text.
FLOOR_METRICS = ("accuracy", "macro_f1", "preference_accuracy", "rougeL")
Matrix = list[list[float | None]]  # stage_eval.json's accuracy_matrix: [after stage i][on stage j]


def mean_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in rows[0]:
        values = [r[key] for r in rows if key in r and r[key] is not None and not math.isnan(r[key])]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "n": len(values)}
    return out


def report_rows(results: dict) -> list[tuple[str, str, bool | None]]:
    """(key, label, higher is better) of every row any method or baseline has, test files first."""
    keys = [k for column in (*results["methods"].values(), *results.get("baselines", {}).values()) for k in column]
    files = list(dict.fromkeys(k.split("/")[0] for k in keys if "/" in k))  # in order of appearance
    rows = [(f"{f}/{m}", f"{label} ({f})", higher) for f in files for m, label, higher in TEST_METRICS]
    return [row for row in rows + RUN_METRICS if row[0] in keys]


def results_table(results: dict) -> str:
    """Markdown table: a column per method (mean ± std over its seeds), then a column per trivial baseline."""
    methods, baselines = results["methods"], results.get("baselines", {})
    header = list(methods) + [f"{b} (trivial)" for b in baselines]
    lines = ["| metric | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    seeds = [str(len(results.get("per_seed", {}).get(m, {}))) for m in methods]
    lines.append("| seeds (n) | " + " | ".join(seeds + ["–"] * len(baselines)) + " |")
    for key, label, _ in report_rows(results):
        cells = [_cell(key, methods[m].get(key)) for m in methods]
        cells += ["–" if key not in b else f"{b[key]:.3f}" for b in baselines.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(key: str, value: dict | None) -> str:
    if value is None:
        return "–"
    if key == "trainable_params":
        return f"{value['mean']:,.0f}"
    if key in ("peak_rss_mb", "wall_s"):
        return f"{value['mean']:.0f}"
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def floor_misses(results: dict) -> dict[str, list[str]]:
    """Per method, the test metrics where its mean does not beat the best trivial baseline (empty: none)."""
    baselines = results.get("baselines", {})
    misses: dict[str, list[str]] = {}
    for method, metrics in results["methods"].items():
        misses[method] = []
        for key, label, _ in report_rows(results):
            floors = {b: v[key] for b, v in baselines.items() if key in v}
            if key.split("/")[-1] not in FLOOR_METRICS or not floors or key not in metrics:
                continue
            best = max(floors, key=lambda b: floors[b])
            if metrics[key]["mean"] <= floors[best]:
                misses[method].append(f"{label} {metrics[key]['mean']:.3f} ≤ {floors[best]:.3f} ({best})")
    return misses


def below_baselines(results: dict) -> list[str]:
    """One line per method: the test metrics where its mean does not beat the best trivial baseline."""
    return [f"- **{method}**: " + ("NOT above the best trivial baseline on " + "; ".join(misses) if misses
                                   else "above the best trivial baseline on every metric.")
            for method, misses in floor_misses(results).items()]  # fmt: skip


def difference_table(results: dict) -> list[str]:
    """ICFT minus each method: mean difference [95% interval], and whether the interval excludes 0."""
    stats = results.get("statistics", {})
    differences = stats.get("differences", {})
    if not differences:
        return ["(no ICFT run to compare with, or nothing paired)"]
    keys = list(dict.fromkeys(k for row in differences.values() for k in row))
    labels = {key: label for key, label, _ in report_rows(results)}
    lines = ["| ICFT minus | " + " | ".join(labels.get(k, k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for method, row in differences.items():
        cells = []
        for key in keys:
            d = row.get(key)
            cells.append("–" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] "
                                               + ("**yes**" if d["significant"] else "no"))  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def in_plain_words(results: dict) -> list[str]:
    """What the tables say, one sentence per baseline: where ICFT is better or worse beyond the noise, and
    which methods beat no trivial baseline. A difference whose interval includes 0 is called no difference."""
    labels = {key: label for key, label, _ in report_rows(results)}
    lines = ["In plain words:"]
    for method, row in results.get("statistics", {}).get("differences", {}).items():
        better = [labels.get(k, k) for k, d in row.items() if d and d["significant"] and
                  (d["mean"] < 0 if k.endswith("forgetting") else d["mean"] > 0)]  # fmt: skip
        worse = [labels.get(k, k) for k, d in row.items() if d and d["significant"] and
                 (d["mean"] > 0 if k.endswith("forgetting") else d["mean"] < 0)]  # fmt: skip
        if not better and not worse:
            lines.append(f"- ICFT and {method}: no difference beyond the noise on any metric (every 95% interval "
                         "includes 0).")  # fmt: skip
        else:
            lines.append(f"- ICFT against {method}: better on {', '.join(better) or 'nothing'}; worse on "
                         f"{', '.join(worse) or 'nothing'} (95% intervals excluding 0); no difference elsewhere.")
    below = [method for method, misses in floor_misses(results).items() if misses]
    if below:
        lines.append(f"- Not above the best trivial baseline on at least one metric: {', '.join(below)} "
                     "(see the list above); such a figure is no evidence of learning.")  # fmt: skip
    return lines


def learning_rates_line(results: dict, config: RunConfig) -> str:
    how = (f"chosen on validation from {', '.join(f'x{s:g}' for s in config.compare.lr_scales)} of each method's "
           "own rate at the first seed, `lr_selection.json`" if config.compare.lr_scales else
           "as configured, not tuned per method")  # fmt: skip
    rates = ", ".join(f"{m} {lr:g}" for m, lr in results.get("learning_rates", {}).items())
    return f"Learning rates ({how}): {rates or '-'}."


def report_markdown(results: dict, config: RunConfig, matrices: dict[str, list[Matrix]]) -> str:
    """`matrices`: each trained method's accuracy matrix per seed."""
    seeds = ", ".join(map(str, config.compare.seeds))
    stats = results.get("statistics", {})
    parts = [
        f"# ICFT comparison: {config.name}",
        "",
        f"Model `{config.model.name}`, {config.train.max_steps} optimizer steps per method, batch "
        f"{config.train.batch_size}, seeds {seeds}; mean ± std over seeds (`base` is untrained, so evaluated "
        f"once). Test files: {', '.join(config.compare.test)}, one block of rows each"
        + (f" ({config.compare.max_test_examples} examples of each kind)" if config.compare.max_test_examples else "")
        + ". Accuracies are raw log-likelihood accuracy (lm-eval `acc`). Stage accuracies, forgetting and "
        "backward transfer come from the validation splits after each stage's step budget. The trivial "
        "columns score the same test items without a model: `random` is the expected score of a uniform "
        "guess, `majority` one constant answer, `position-prior` the option position that is right most often.",
        "",
        learning_rates_line(results, config),
        "",
        results_table(results),
        "",
        "## Methods against the trivial baselines",
        "Accuracy, macro-F1, preference accuracy and ROUGE-L of each method's mean against the best trivial "
        "baseline (for ROUGE-L: one constant answer).",
        "",
        *below_baselines(results),
        "",
        "## Paired differences: ICFT minus each method",
        f"Mean difference [{100 * stats.get('confidence', 0.95):.0f}% interval] and whether it excludes 0. Test "
        f"metrics: paired bootstrap, seeds and items resampled together ({stats.get('n_resamples', 0)} resamples, "
        "paired by seed and item id). Forgetting and stage accuracy (one number per run): paired t interval over "
        "seeds, needs 2 seeds or more. For forgetting, lower is better: a negative difference favours ICFT.",
        "",
        *difference_table(results),
        "",
        *in_plain_words(results),
        "",
        *first_stage_table(matrices),
        "",
        "## Accuracy matrices (mean over seeds; rows: after stage i, columns: stage j)",
    ]
    for method, per_seed in matrices.items():
        rows = ["  ".join("  -  " if a is None else f"{a:.3f}" for a in row) for row in mean_matrix(per_seed)]
        parts += ["", f"**{method}**", "", "```", *rows, "```"]
    parts += ["", "Plots: `learning_curves.png`, `accuracy_matrices.png`, `forgetting.png`.", ""]
    return "\n".join(parts)


def mean_matrix(per_seed: list[Matrix]) -> Matrix:
    """Element-wise mean over seeds; a cell no seed could score (None) stays None."""
    out: Matrix = []
    for rows in zip(*per_seed):
        cells = [[v for v in column if v is not None] for column in zip(*rows)]
        out.append([sum(c) / len(c) if c else None for c in cells])
    return out


def _mean_and_seeds(values: list[float | None], sign: str = "") -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    seeds = ", ".join("-" if v is None else f"{v:{sign}.3f}" for v in values)
    return f"{sum(known) / len(known):{sign}.3f} ({seeds})"


def first_stage_table(matrices: dict[str, list[Matrix]]) -> list[str]:
    """Stage 1's validation accuracy after stage 1, after stage 2 and at the end, seed by seed.

    Forgetting averages every stage's drop; stage 1 has the most later training to lose it under, and its
    seeds side by side show whether a drop is larger than the spread between seeds.
    """
    matrices = {m: per_seed for m, per_seed in matrices.items() if len(per_seed[0]) > 1}
    if not matrices:
        return []
    lines = ["## Stage 1, seed by seed",
             "Validation accuracy on stage 1 after each stage's budget: mean (each seed).", "",
             "| method | after stage 1 | after stage 2 | at the end | end minus after stage 1 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for method, per_seed in matrices.items():
        learned, after_next, end = ([R[i][0] for R in per_seed] for i in (0, 1, -1))
        drops = [None if a is None or b is None else b - a for a, b in zip(learned, end)]
        cells = [_mean_and_seeds(learned), _mean_and_seeds(after_next), _mean_and_seeds(end),
                 _mean_and_seeds(drops, sign="+")]  # fmt: skip
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def plots(output_dir: Path, curves: dict, matrices: dict, results: dict) -> None:
    """`matrices`: {method: accuracy matrix}; `results`: {method: {metric: {"mean", "std", "n"}}}."""
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
            R = [[math.nan if a is None else a for a in row] for row in R]  # a stage with nothing to score
            ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
            for i, row in enumerate(R):
                for j, a in enumerate(row):
                    if not math.isnan(a):
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
        fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(methods)), 4))
        means = [results[m]["forgetting"]["mean"] for m in methods]
        stds = [results[m]["forgetting"]["std"] for m in methods]
        ax.bar(methods, means, yerr=stds, capsize=4)
        ax.tick_params(axis="x", labelrotation=30)
        ax.set(ylabel="forgetting (lower is better)", title="Forgetting per method (validation, mean ± std)")
        fig.tight_layout()
        fig.savefig(output_dir / "forgetting.png", dpi=120)
        plt.close(fig)
