"""Is ICFT's gap to a baseline more than noise? Paired bootstrap intervals of the mean difference.

Two sources of noise move a comparison: which training seed ran, and which test items were drawn. Both are
paired here: ICFT's seed s is set against the baseline's seed s (same data order and initialisation), and
ICFT's answer to an item against the baseline's answer to the same item (by id). Each resample draws seeds
with replacement and, together, items with replacement, and takes the mean difference (ICFT minus
baseline) over the drawn seed x item cells; the 95% interval is the 2.5th to 97.5th percentile of those
means. Resampling items alone would call a gap significant that one lucky seed produced.

Run-level metrics (forgetting, average stage accuracy) have one number per run, so the only noise is the
seed's. A bootstrap over 3 seeds is too narrow (its percentiles are about the smallest and largest of the 3
differences), so these get Student's t interval of the paired differences instead, wide as few seeds make it.

A difference is significant when its interval excludes 0. The resamples come from a fixed numpy seed, so a
report is reproducible.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from . import registry

N_RESAMPLES = 2000
CONFIDENCE = 0.95
# Item-level metrics: the means over items (the registry's paired ones), each paired where items.json keeps
# its per-item scores (macro-F1 is not a mean over items, so it has none). Run-level metrics from
# stage_eval.json: how much of each stage a method keeps.
ITEM_METRICS = tuple(registry.names(paired=True))
RUN_METRICS = ("forgetting", "average_accuracy")


@dataclass
class Difference:
    """ICFT minus a baseline: the observed mean difference and its percentile interval."""

    mean: float
    low: float
    high: float
    n_seeds: int
    n_items: int  # 0 for run-level metrics

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def paired_items(ours: Mapping[int, Mapping[str, float]], theirs: Mapping[int, Mapping[str, float]],
                 n_resamples: int = N_RESAMPLES, seed: int = 0) -> Difference | None:  # fmt: skip
    """Bootstrap over seeds and items together. `ours[seed][item_id]` is a per-item score (a 0/1 hit or a
    ROUGE-L); only seeds and items both sides have are compared. None when nothing is shared."""
    seeds = sorted(set(ours) & set(theirs))
    ids = sorted(set.intersection(*(set(ours[s]) & set(theirs[s]) for s in seeds))) if seeds else []
    if not ids:
        return None
    diff = np.array([[ours[s][i] - theirs[s][i] for i in ids] for s in seeds], dtype=np.float64)
    n_seeds, n_items = diff.shape
    rng = np.random.default_rng(seed)
    # How often each seed and each item is drawn in each resample; the resampled mean is then a weighted sum.
    seed_counts = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n_resamples)
    item_counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=n_resamples)
    means = np.einsum("bs,sn,bn->b", seed_counts, diff, item_counts) / (n_seeds * n_items)
    return _difference(float(diff.mean()), means, n_seeds, n_items)


def paired_runs(ours: Mapping[int, float], theirs: Mapping[int, float]) -> Difference | None:
    """Paired t interval over seeds, for one number per run. None when fewer than 2 seeds have both numbers
    (one difference has no spread to measure)."""
    seeds = sorted(s for s in set(ours) & set(theirs) if ours[s] is not None and theirs[s] is not None)
    if len(seeds) < 2:
        return None
    diff = np.array([ours[s] - theirs[s] for s in seeds], dtype=np.float64)
    mean = float(diff.mean())
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff)))
    return Difference(mean, mean - half, mean + half, len(diff), 0)


def _difference(mean: float, resampled: np.ndarray, n_seeds: int, n_items: int) -> Difference:
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(resampled, [tail, 100 - tail])
    # A constant difference gives an interval of one point; rounding keeps it from straying off that point.
    return Difference(mean, min(float(low), mean), max(float(high), mean), n_seeds, n_items)


def compare_to(reference: str, items: Mapping[str, Mapping[int, Mapping[str, Mapping[str, Mapping[str, float]]]]],
               runs: Mapping[str, Mapping[int, Mapping[str, float]]]) -> dict[str, dict[str, dict]]:  # fmt: skip
    """{method: {metric: Difference.to_json()}} for `reference` against every other method.

    `items[method][seed][file][metric][item_id]` are the items.json contents of each run; `runs[method][seed]`
    its run-level metrics. Item metrics are keyed "file/metric" (e.g. "unseen/accuracy"), as in the report.
    """
    out: dict[str, dict[str, dict]] = {}
    for method in items:
        if method == reference:
            continue
        row: dict[str, dict] = {}
        files = sorted({f for seed in items[reference].values() for f in seed})
        for file in files:
            for metric in ITEM_METRICS:
                ours = {s: v[file][metric] for s, v in items[reference].items() if metric in v.get(file, {})}
                theirs = {s: v[file][metric] for s, v in items[method].items() if metric in v.get(file, {})}
                found = paired_items(ours, theirs)
                if found is not None:
                    row[f"{file}/{metric}"] = found.to_json()
        for metric in RUN_METRICS:
            ours = {s: m[metric] for s, m in runs.get(reference, {}).items() if m.get(metric) is not None}
            theirs = {s: m[metric] for s, m in runs.get(method, {}).items() if m.get(metric) is not None}
            found = paired_runs(ours, theirs)
            if found is not None:
                row[metric] = found.to_json()
        out[method] = row
    return out
