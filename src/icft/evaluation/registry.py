"""Every metric icft reports, once: its name in results, its label in tables, which way is better, and where
it appears. Tables, JSON files, the floor check and the paired rows all read their order and wording here.

- `floor`: compared against the best trivial baseline (random guess, constant answer, option position). A
  constant answer has recall 1 on its own label, so recalls are shown but not floor-checked; ROUGE-L is:
  one constant answer can score high on templated text.
- `paired`: a mean over items, so a trained model and its base on the same items give a paired interval
  (`icft eval --base`, the demo). Macro-F1 is not a mean over items but is shown beside them.
- `level`: "test" metrics come from test items (one row per test file in compare's report); "run" metrics
  from the run itself (validation stage accuracy, forgetting, cost).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    higher_is_better: bool | None  # None: neither (a count, such as trainable parameters)
    floor: bool = False
    paired: bool = False
    level: str = "test"

    @property
    def lower_is_better(self) -> bool:
        return self.higher_is_better is False


_ALL = [
    Metric("accuracy", "MC accuracy", True, floor=True, paired=True),
    Metric("accuracy_norm", "MC accuracy, length-norm.", True),
    Metric("macro_f1", "yes/no/maybe macro-F1", True, floor=True, paired=True),
    Metric("recall_yes", "recall of yes", True),
    Metric("recall_no", "recall of no", True),
    Metric("recall_maybe", "recall of maybe", True),
    Metric("preference_accuracy", "preference accuracy", True, floor=True, paired=True),
    Metric("general_accuracy", "general-domain accuracy", True),
    Metric("rougeL", "ROUGE-L", True, floor=True, paired=True),
    Metric("answer_nll", "answer NLL/token", False, paired=True),
    Metric("perplexity", "perplexity", False),
    Metric("bleu", "BLEU", True),
    Metric("rouge1", "ROUGE-1", True),
    Metric("rouge2", "ROUGE-2", True),
    Metric("distinct1", "distinct-1", True),
    Metric("distinct2", "distinct-2", True),
    Metric("embedding_similarity", "MiniLM cosine", True),
    Metric("mean_length", "mean answer words", None),
    Metric("error_rate", "error rate", False),
    Metric("average_accuracy", "avg. stage accuracy (val)", True, level="run"),
    Metric("forgetting", "forgetting (val)", False, level="run"),
    Metric("backward_transfer", "backward transfer (val)", True, level="run"),
    Metric("trainable_params", "trainable parameters", None, level="run"),
    Metric("peak_rss_mb", "peak memory (MB)", False, level="run"),
    Metric("wall_s", "train wall time (s)", False, level="run"),
]
METRICS: dict[str, Metric] = {m.name: m for m in _ALL}


def metric(name: str) -> Metric:
    """The metric of a results key ("unseen/accuracy" -> accuracy); one not registered reads as its own label,
    higher is better."""
    base = name.rsplit("/", 1)[-1]
    return METRICS.get(base, Metric(base, base, True))


def names(**where) -> list[str]:
    """Registered names in table order whose fields equal `where` (e.g. names(paired=True))."""
    return [m.name for m in _ALL if all(getattr(m, k) == v for k, v in where.items())]


def ordered(values: dict) -> dict:
    """`values` (metric name -> anything) in table order; names not registered follow alphabetically."""
    rank = {m.name: i for i, m in enumerate(_ALL)}
    return dict(sorted(values.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
