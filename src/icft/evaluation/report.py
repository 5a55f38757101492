"""The comparison report, read top to bottom:

1. the main table: one column per method (mean ± std over seeds, and how many seeds; WiSE-FT points as
   "<method> a=<alpha>"), then one column per trivial baseline (random guess, constant answer, best option
   position) on the same test items; one block of rows per test file (e.g. retention, unseen), then the
   run-level rows (stage accuracy, forgetting, cost). Rows, labels and directions come from the metric
   registry (evaluation/registry.py);
2. the composites, where test sets are marked for them: the content answer-NLL drop and the own-voice NLL
   drop against the untrained model, items pooled, with paired 95% intervals, and ICFT minus each method;
   and the trade-off plot (plot.png) of one against the other;
3. the tuning table: every try of every tuned method, its validation figures and the chosen one;
4. one line per method: the metrics on which it does not beat the best trivial baseline;
5. the paired differences: ICFT minus each method, with a 95% interval (paired bootstrap for test metrics,
   paired t over seeds for run-level ones; evaluation/statistics.py) and whether it excludes 0;
6. stage 1's accuracy after each stage, seed by seed, the accuracy matrices (mean over seeds), and the plots.

`results` is what compare writes to results.json: {"methods": {method: {metric: {"mean", "std", "n"}}},
"per_seed": ..., "baselines": {baseline: {metric: value}}, "statistics": {"reference", "differences": ...},
"composites": {"vs_base", "vs_reference"}, "tuning": tuning.json}. Test metrics are keyed "<file>/<metric>"
(e.g. "unseen/accuracy"), run-level ones by their name.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..config import RunConfig
from ..tables import cell, markdown
from . import registry
from .statistics import paired_items

Matrix = list[list[float | None]]  # stage_eval.json's accuracy_matrix: [after stage i][on stage j]
# The composites: (EvalSet flag whose sets pool into it, label). Each is a drop in answer NLL against the
# untrained model, items pooled over its sets: higher is better.
COMPOSITES = {"content": "content answer NLL drop", "own_voice": "own-voice NLL drop"}


def mean_std(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    out = {}
    for key in dict.fromkeys(k for r in rows for k in r):
        values = [r[key] for r in rows if key in r and r[key] is not None and not math.isnan(r[key])]
        if not values:
            continue
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "n": len(values)}
    return out


def report_rows(results: dict) -> list[tuple[str, str]]:
    """(key, label) of every registered row any method or baseline has: test files first, in the registry's
    order within each file, then the run-level rows."""
    keys = {k for column in (*results["methods"].values(), *results.get("baselines", {}).values()) for k in column}
    files = list(dict.fromkeys(k.split("/")[0] for column in results["methods"].values() for k in column if "/" in k))
    rows = [(f"{f}/{m}", f"{registry.METRICS[m].label} ({f})") for f in files for m in registry.names(level="test")]
    rows += [(m, registry.METRICS[m].label) for m in registry.names(level="run")]
    return [row for row in rows if row[0] in keys]


def _label(key: str) -> str:
    """A results key's row label: "unseen/accuracy" -> "MC accuracy (unseen)"."""
    file = key.rpartition("/")[0]
    return registry.metric(key).label + (f" ({file})" if file else "")


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else cell(value)


def results_table(results: dict) -> str:
    """Markdown table: a column per method (mean ± std over its seeds), then a column per trivial baseline."""
    methods, baselines = results["methods"], results.get("baselines", {})
    header = ["metric", *methods, *(f"{b} (trivial)" for b in baselines)]
    seeds = [str(len(results.get("per_seed", {}).get(m, {}))) for m in methods]
    rows = [["seeds (n)", *seeds, *["–"] * len(baselines)]]
    for key, label in report_rows(results):
        cells = [_mean_std(methods[m].get(key)) for m in methods]
        rows.append([label, *cells, *("–" if key not in b else cell(b[key]) for b in baselines.values())])
    return "\n".join(markdown(header, rows))


def _mean_std(value: dict | None) -> str:
    if value is None:
        return "–"
    if abs(value["mean"]) >= 100:  # a count or a cost: its spread over seeds says little
        return _number(value["mean"])
    return f"{cell(value['mean'])} ± {cell(value['std'])}"


def floor_misses(results: dict) -> dict[str, list[str]]:
    """Per method, the floor-checked test metrics where its mean does not beat the best trivial baseline."""
    baselines = results.get("baselines", {})
    misses: dict[str, list[str]] = {}
    for method, metrics in results["methods"].items():
        misses[method] = []
        for key, label in report_rows(results):
            floors = {b: v[key] for b, v in baselines.items() if key in v}
            if not registry.metric(key).floor or not floors or key not in metrics:
                continue
            best = max(floors, key=lambda b: floors[b])
            if metrics[key]["mean"] <= floors[best]:
                misses[method].append(f"{label} {cell(metrics[key]['mean'])} ≤ {cell(floors[best])} ({best})")
    return misses


def below_baselines(results: dict) -> list[str]:
    """One line per method: the test metrics where its mean does not beat the best trivial baseline."""
    return [f"- **{method}**: " + ("NOT above the best trivial baseline on " + "; ".join(misses) if misses
                                   else "above the best trivial baseline on every metric.")
            for method, misses in floor_misses(results).items()]  # fmt: skip


def interval(d: dict | None, bold: bool = False) -> str:
    """mean [low, high] of a paired difference; in bold (when asked) where the interval excludes 0."""
    if d is None:
        return "–"
    text = f"{cell(d['mean'], sign=True)} [{cell(d['low'], sign=True)}, {cell(d['high'], sign=True)}]"
    return f"**{text}**" if bold and d["significant"] else text


def difference_table(results: dict) -> list[str]:
    """ICFT minus each method: mean difference [95% interval], and whether the interval excludes 0."""
    differences = results.get("statistics", {}).get("differences", {})
    if not differences:
        return ["(no ICFT run to compare with, or nothing paired)"]
    keys = list(dict.fromkeys(k for row in differences.values() for k in row))
    rows = [[method, *(interval(row.get(k)) + ("" if k not in row else " **yes**" if row[k]["significant"] else " no")
                       for k in keys)] for method, row in differences.items()]  # fmt: skip
    return markdown(["ICFT minus", *(_label(k) for k in keys)], rows)


def in_plain_words(results: dict) -> list[str]:
    """What the tables say, one sentence per baseline: where ICFT is better or worse beyond the noise, and
    which methods beat no trivial baseline. A difference whose interval includes 0 is called no difference."""
    lines = ["In plain words:"]
    for method, row in results.get("statistics", {}).get("differences", {}).items():
        ahead = {k: (d["mean"] > 0) != registry.metric(k).lower_is_better for k, d in row.items()
                 if d and d["significant"]}  # fmt: skip
        better = [_label(k) for k, good in ahead.items() if good]
        worse = [_label(k) for k, good in ahead.items() if not good]
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


def composites(items: dict[str, dict[int, dict]], sets: dict, reference: str) -> dict:
    """{"vs_base": {method: {composite: difference}}, "vs_reference": {...}} (Difference.to_json()): each
    composite's pooled answer-NLL drop against the untrained model, paired over seeds and items, and the
    reference's drop minus each method's. `items`: {method: {seed: items.json}}, base paired with every seed;
    `sets`: {label: EvalSet}. {} without base or without a set marked for a composite."""
    pools = {name: [label for label, entry in sets.items() if getattr(entry, name)] for name in COMPOSITES}
    pools = {name: labels for name, labels in pools.items() if labels}
    if not pools or "base" not in items:
        return {}

    def minus_nll(method: str, labels: list[str]) -> dict[int, dict[str, float]]:
        return {seed: {f"{label}/{i}": -v for label in labels if label in found
                       for i, v in found[label].get("answer_nll", {}).items()} for seed, found in items[method].items()}

    out: dict = {"vs_base": {}, "vs_reference": {}}
    for method in (m for m in items if m != "base"):
        out["vs_base"][method] = {n: _json(paired_items(minus_nll(method, ls), minus_nll("base", ls)))
                                  for n, ls in pools.items()}  # fmt: skip
        if reference in items and method != reference:
            out["vs_reference"][method] = {n: _json(paired_items(minus_nll(reference, ls), minus_nll(method, ls)))
                                           for n, ls in pools.items()}  # fmt: skip
    return out


def _json(difference) -> dict | None:
    return None if difference is None else difference.to_json()


def composite_table(results: dict) -> list[str]:
    """Each method's composites against the untrained model, then the reference minus each method."""
    found = results.get("composites") or {}
    if not found.get("vs_base"):
        return []
    names = list(next(iter(found["vs_base"].values())))
    reference = results.get("statistics", {}).get("reference", "icft")
    header = ["method", "seeds", *(f"{COMPOSITES[n]} vs base" for n in names),
              *(f"{reference} − method: {COMPOSITES[n]}" for n in names)]  # fmt: skip
    rows = []
    for method, row in found["vs_base"].items():
        theirs = found["vs_reference"].get(method, {})
        rows.append([method, str(len(results.get("per_seed", {}).get(method, {}))),
                     *(interval(row.get(n), bold=True) for n in names),
                     *(interval(theirs.get(n), bold=True) for n in names)])  # fmt: skip
    return markdown(header, rows)


def trade_figures(record: dict, base: dict) -> dict[str, float]:
    """A try's validation.json against the untrained model's: the content answer-NLL drop, the own-voice
    drop (items pooled over the sets of each role), and their sum, the trade the `trade` criterion maximises:
    skill gained plus own voice kept, in one unit (nats per answer token), equal weights."""

    def mean_nll(scored: dict, role: str) -> float:
        values = [v for label, roles in scored["roles"].items() if roles[role]
                  for v in scored["items"][label].get("answer_nll", {}).values()]  # fmt: skip
        return sum(values) / len(values) if values else math.nan

    content = mean_nll(base, "content") - mean_nll(record, "content")
    voice = mean_nll(base, "own_voice") - mean_nll(record, "own_voice")
    return {"content_nll_drop": content, "own_voice_drop": voice, "trade": content + voice}


def tuning_table(tuning: dict) -> list[str]:
    """Every try of every tuned method: its rate, the figures its criterion reads, and which was chosen."""
    if not tuning:
        return []
    trade = next(iter(tuning.values()))["criterion"] == "trade"
    figures = (["content_nll_drop", "own_voice_drop", "trade"] if trade else ["average_accuracy", "average_nll"])
    labels = {"content_nll_drop": "content NLL drop (val)", "own_voice_drop": "own-voice drop (val)",
              "trade": "trade (sum)", "average_nll": "avg. stage answer NLL (val)"}  # fmt: skip
    header = ["method", "try", "lr", *(labels.get(f) or registry.metric(f).label for f in figures), "chosen"]
    rows = [[method, tag, f"{scores['lr']:g}", *(cell(scores.get(f), sign=trade) for f in figures),
             "yes" if tag == found["chosen"] else ""]
            for method, found in tuning.items() for tag, scores in found["tries"].items()]  # fmt: skip
    return markdown(header, rows)


def tuning_line(results: dict, config: RunConfig) -> str:
    tuning = results.get("tuning") or {}
    tags = list(dict.fromkeys(t for found in tuning.values() for t in found["tries"]))
    how = (f"chosen on validation by {config.compare.criterion} from {', '.join(tags)} of each tuned method at the "
           "first seed; `tuning.json` and the tuning table below" if tuning else "as configured, not tuned per method")
    rates = ", ".join(f"{m} {lr:g}" for m, lr in results.get("learning_rates", {}).items())
    chosen = ", ".join(f"{m} {found['chosen']}" for m, found in tuning.items())
    return f"Learning rates ({how}): {rates or '-'}." + (f" Chosen tries: {chosen}." if chosen else "")


def report_markdown(results: dict, config: RunConfig, matrices: dict[str, list[Matrix]]) -> str:
    """`matrices`: each trained method's accuracy matrix per seed."""
    stats = results.get("statistics", {})
    parts = [f"# ICFT comparison: {config.name}", "", setup_paragraph(config), "", tuning_line(results, config), "",
             results_table(results), ""]  # fmt: skip
    if composite_table(results):
        parts += ["## Composites: change against the untrained model", "",
                  "Mean [95% bootstrap interval over seeds and items, paired]; **bold** where it excludes 0. Content: "
                  "the answer NLL (nats per answer token) of the sets marked `content`, items pooled; own voice: the "
                  "NLL of the untrained model's own greedy answers (negative = forgetting). `a=` rows are WiSE-FT "
                  "points (the final adapter scaled by alpha, no training).", "",
                  *composite_table(results), "", "![content gained against own voice kept](plot.png)", ""]  # fmt: skip
    if results.get("tuning"):
        parts += ["## Tuning on validation", "", *tuning_table(results["tuning"]), ""]
    parts += [
        "## Methods against the trivial baselines",
        "The floor-checked metrics (registry) of each method's mean against the best trivial baseline.", "",
        *below_baselines(results), "",
        "## Paired differences: ICFT minus each method",
        f"Mean difference [{100 * stats.get('confidence', 0.95):.0f}% interval] and whether it excludes 0. Test "
        f"metrics: paired bootstrap, seeds and items resampled together ({stats.get('n_resamples', 0)} resamples, "
        "paired by seed and item id). Forgetting and stage accuracy (one number per run): paired t interval over "
        "seeds, needs 2 seeds or more. Where lower is better (forgetting, answer NLL), a negative difference "
        "favours ICFT.", "",
        *difference_table(results), "", *in_plain_words(results), "", *first_stage_table(matrices), "",
        "## Accuracy matrices (mean over seeds; rows: after stage i, columns: stage j)",
    ]  # fmt: skip
    for method, per_seed in matrices.items():
        rows = ["  ".join("  -  " if a is None else cell(a) for a in row) for row in mean_matrix(per_seed)]
        parts += ["", f"**{method}**", "", "```", *rows, "```"]
    parts += ["", "Plots: `learning_curves.png`, `accuracy_matrices.png`, `forgetting.png`.", ""]
    return "\n".join(parts)


def setup_paragraph(config: RunConfig) -> str:
    seeds = ", ".join(map(str, config.compare.seeds))
    each = f" ({config.compare.max_test_examples} examples of each kind)" if config.compare.max_test_examples else ""
    return (f"Model `{config.model.name}`, {config.train.max_steps} optimizer steps per method, batch "
            f"{config.train.batch_size}, seeds {seeds}; mean ± std over seeds (`base` is untrained, so evaluated "
            f"once). Test files: {', '.join(e.path for e in config.compare.test)}, one block of rows each{each}. "
            "Accuracies are raw log-likelihood accuracy (lm-eval `acc`). Stage accuracies, forgetting and "
            "backward transfer come from the validation splits after each stage's step budget. The trivial "
            "columns score the same test items without a model: `random` is the expected score of a uniform "
            "guess, `majority` one constant answer, `position-prior` the option position that is right most often.")


def mean_matrix(per_seed: list[Matrix]) -> Matrix:
    """Element-wise mean over seeds; a cell no seed could score (None) stays None."""
    out: Matrix = []
    for rows in zip(*per_seed):
        cells = [[v for v in column if v is not None] for column in zip(*rows)]
        out.append([sum(c) / len(c) if c else None for c in cells])
    return out


def _mean_and_seeds(values: list[float | None], sign: bool = False) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "-"
    return f"{cell(sum(known) / len(known), sign=sign)} ({', '.join(cell(v, sign=sign) for v in values)})"


def first_stage_table(matrices: dict[str, list[Matrix]]) -> list[str]:
    """Stage 1's validation accuracy after stage 1, after stage 2 and at the end, seed by seed.

    Forgetting averages every stage's drop; stage 1 has the most later training to lose it under, and its
    seeds side by side show whether a drop is larger than the spread between seeds.
    """
    matrices = {m: per_seed for m, per_seed in matrices.items() if len(per_seed[0]) > 1}
    if not matrices:
        return []
    rows = []
    for method, per_seed in matrices.items():
        learned, after_next, end = ([R[i][0] for R in per_seed] for i in (0, 1, -1))
        drops = [None if a is None or b is None else b - a for a, b in zip(learned, end)]
        rows.append([method, _mean_and_seeds(learned), _mean_and_seeds(after_next), _mean_and_seeds(end),
                     _mean_and_seeds(drops, sign=True)])  # fmt: skip
    header = ["method", "after stage 1", "after stage 2", "at the end", "end minus after stage 1"]
    return ["## Stage 1, seed by seed", "Validation accuracy on stage 1 after each stage's budget: mean (each seed).",
            "", *markdown(header, rows)]  # fmt: skip


def plots(output_dir: Path, curves: dict, matrices: dict, results: dict) -> None:
    """learning_curves.png, accuracy_matrices.png (`matrices`: {method: accuracy matrix}), forgetting.png and,
    with composites, the trade-off plot.png."""
    import matplotlib

    matplotlib.use("Agg")
    _learning_curves(output_dir / "learning_curves.png", curves)
    if matrices:
        _matrices(output_dir / "accuracy_matrices.png", matrices)
    methods = {m: r for m, r in results["methods"].items() if "forgetting" in r}
    if methods:
        _forgetting(output_dir / "forgetting.png", methods)
    if (results.get("composites") or {}).get("vs_base"):
        tradeoff_plot(output_dir / "plot.png", results["composites"]["vs_base"])


def _learning_curves(path: Path, curves: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for method, records in curves.items():
        ax.plot([r["step"] for r in records], [r["loss_task"] for r in records], label=method)
    ax.set(xlabel="optimizer step", ylabel="task loss (current batch)", title="Learning curves (first seed)")
    if curves:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _matrices(path: Path, matrices: dict) -> None:
    import matplotlib.pyplot as plt

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
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _forgetting(path: Path, methods: dict) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(methods)), 4))
    ax.bar(list(methods), [r["forgetting"]["mean"] for r in methods.values()],
           yerr=[r["forgetting"]["std"] for r in methods.values()], capsize=4)  # fmt: skip
    ax.tick_params(axis="x", labelrotation=30)
    ax.set(ylabel="forgetting (lower is better)", title="Forgetting per method (validation, mean ± std)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tradeoff_plot(path: Path, vs_base: dict[str, dict]) -> None:
    """Content gained (x) against own voice kept (y), the untrained model at the origin: one point per method
    with its 95% intervals, the WiSE-FT points of a method joined by a dashed line (alpha 0 = base)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.plot([0], [0], "ks", label="base (untrained)")
    colours = {}
    for method, row in vs_base.items():
        x, y = row.get("content"), row.get("own_voice")
        if " a=" in method or x is None or y is None:
            continue
        bars = ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["low"]], [x["high"] - x["mean"]]],
                           yerr=[[y["mean"] - y["low"]], [y["high"] - y["mean"]]], fmt="o", capsize=3, label=method)
        colours[method] = bars[0].get_color()
    for method, colour in colours.items():
        wise = sorted((float(m.split(" a=")[1]), r) for m, r in vs_base.items() if m.startswith(f"{method} a="))
        if not wise:
            continue
        line = [(0.0, 0.0)] + [(r["content"]["mean"], r["own_voice"]["mean"]) for _, r in wise]
        line.append((vs_base[method]["content"]["mean"], vs_base[method]["own_voice"]["mean"]))
        ax.plot(*zip(*line), "--.", color=colour, lw=1, label=f"{method} WiSE-FT (alpha 0..1)")
        for (alpha, _), (x, y) in zip(wise, line[1:]):
            ax.annotate(f"a={alpha:g}", (x, y), textcoords="offset points", xytext=(5, 3), fontsize=7, color=colour)
    ax.set_xlabel(f"{COMPOSITES['content']} vs base (higher = better)")
    ax.set_ylabel(f"{COMPOSITES['own_voice']} vs base (below 0 = forgetting)")
    ax.set_title("Content gained against own voice kept (95% intervals)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
