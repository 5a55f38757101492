"""A trained model against its untrained base on the same items: one row per metric, with the change, its 95%
paired bootstrap interval over the items, and the best trivial baseline beside it. `icft eval --base` and the
demo print these rows."""

from __future__ import annotations

from dataclasses import dataclass

from .. import tables
from . import registry
from .statistics import paired_items


@dataclass
class Row:
    group: str
    metric: str
    n: int
    untrained: float
    trained: float
    low: float | None = None  # 95% paired bootstrap interval of trained - untrained (None: no per-item values)
    high: float | None = None
    baseline: float | None = None  # the best trivial baseline on the same items
    baseline_name: str = ""

    @property
    def change(self) -> float:
        return self.trained - self.untrained

    @property
    def label(self) -> str:
        """The metric as a table row names it, with its direction where lower is better."""
        return self.metric + (" (lower=better)" if registry.metric(self.metric).lower_is_better else "")

    @property
    def better(self) -> bool:
        """Whether the change goes the metric's good way (down, for a metric where lower is better)."""
        return (self.change < 0) == registry.metric(self.metric).lower_is_better


def group_rows(group: str, untrained, trained, baselines: dict[str, dict[str, float]]) -> list[Row]:
    """The rows of one group of items (a file): `untrained` and `trained` are EvalResults on the same items."""
    rows = []
    for metric in registry.names(paired=True):
        if metric not in trained.metrics:
            continue
        values = [_item_values(result, metric) for result in (untrained, trained)]
        diff = paired_items({0: values[1]}, {0: values[0]}) if values[0] else None
        # the best trivial baseline; on a tie the simplest (random, then majority, then position-prior)
        best = max(((v[metric], -i, name) for i, (name, v) in enumerate(baselines.items()) if metric in v),
                   default=(None, 0, ""))  # fmt: skip
        rows.append(Row(group, metric, len(values[1]) or untrained.n_examples, untrained.metrics[metric],
                        trained.metrics[metric], diff and diff.low, diff and diff.high, best[0], best[2]))  # fmt: skip
    return rows


def table(rows: list[Row], header: list[str]) -> list[str]:
    """The rows as a plain-text table under `header` (group, metric, n, untrained, trained, change, baseline):
    the change with its 95% interval where the metric has per-item values, and the best trivial baseline by
    name."""
    cells = []
    for r in rows:
        interval = tables.cell(r.change, sign=True)
        if r.low is not None:
            interval += f" [{tables.cell(r.low, sign=True)}, {tables.cell(r.high, sign=True)}]"
        floor = f"{tables.cell(r.baseline)} ({r.baseline_name})" if r.baseline is not None else "-"
        cells.append([r.group, r.label, str(r.n), tables.cell(r.untrained), tables.cell(r.trained), interval, floor])
    return tables.text(header, cells)


def _item_values(result, metric: str) -> dict[str, float]:
    """{item id: its score} for metrics that are means over items; {} for those that are not (macro-F1)."""
    kinds = {"accuracy": "qa", "preference_accuracy": "preference"}
    if metric in kinds:
        return {r["id"]: r["hit"] for r in result.items if "hit" in r and r["kind"] == kinds[metric]}
    if metric in ("rougeL", "answer_nll"):
        return {r["id"]: r[metric] for r in result.items if metric in r}
    return {}
