"""The after-stage evaluation of a training run: one row of the stage matrices per finished stage.

Each stage's validation items are measured two ways:
- accuracy: multiple-choice qa and preference pairs scored by log-likelihood. THE accuracy is the raw
  one (sum of the candidate's token log-probabilities, lm-evaluation-harness's `acc`); the
  length-normalised one (`acc_norm`, per character) is reported beside it. The accuracy matrix,
  average accuracy, forgetting and backward transfer use the raw accuracy, as the test tables do.
- answer NLL: the mean negative log-likelihood per token of every item's reference answer (lower is
  better). Stages with nothing to score by choice (open questions, dialogue, text) are tracked by it, so
  forgetting is measured for any data; `forgetting_nll` is the rise in answer NLL on earlier stages.
"""

from __future__ import annotations

import math
import random

from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..likelihood import ScoreSettings, answer_nll
from . import metrics as M
from .scoring import choice_accuracy, is_scorable, score_choices


def fixed_sample(examples: list[Example], n: int) -> list[Example]:
    """The same n examples for every method, seed and step (n=0: all)."""
    examples = list(examples)
    random.Random(0).shuffle(examples)
    return examples[:n] if n else examples


def stage_row(model, fmt: PromptFormat, groups: list[list[Example]], max_examples: int) -> dict:
    """Accuracy (raw and length-normalised) and answer NLL on each stage's validation items, in the run's
    prompt format and sequence length."""
    row: dict[str, list] = {"accuracy": [], "accuracy_norm": [], "nll": []}
    for group in groups:
        scorable = fixed_sample([ex for ex in group if is_scorable(ex)], max_examples)
        scores = score_choices(model, fmt, scorable) if scorable else []
        row["accuracy"].append(choice_accuracy(scores) if scores else None)
        row["accuracy_norm"].append(choice_accuracy(scores, normalised=True) if scores else None)
        nll = _answer_nll(model, fmt, fixed_sample(group, max_examples))
        row["nll"].append(sum(nll) / len(nll) if nll else None)
    return row


def validation_loss(model, fmt: PromptFormat, examples: list[Example], max_examples: int) -> float:
    """Mean answer NLL per token on a fixed sample of a stage's validation examples (for plateau checks)."""
    nll = _answer_nll(model, fmt, fixed_sample(examples, max_examples or 200))
    return sum(nll) / max(1, len(nll))


def _answer_nll(model, fmt: PromptFormat, examples: list[Example]) -> list[float]:
    pairs = [fmt.pair(ex) for ex in examples]
    return answer_nll(model, fmt.tokenizer, pairs, ScoreSettings.of(fmt)) if pairs else []


def stage_report(stage_names: list[str], rows: list[dict]) -> dict:
    """stage_eval.json: the matrices (rows: after stage i; columns: stage j) and what they say.

    No NaN is written: an entry that could not be measured is null.
    """
    acc = [r["accuracy"] for r in rows]
    nll = [r["nll"] for r in rows]
    has_choices = [any(row[j] is not None for row in acc) for j in range(len(stage_names))]
    neg_nll = [[None if v is None else -v for v in row] for row in nll]
    report = {
        "stages": stage_names,
        "metric": ["accuracy" if c else "answer_nll" for c in has_choices],
        "accuracy_definition": "raw log-likelihood accuracy (lm-eval acc); accuracy_norm_matrix is per character",
        "accuracy_matrix": acc,
        "accuracy_norm_matrix": [r["accuracy_norm"] for r in rows],
        "nll_matrix": nll,
        "average_accuracy": _finite(M.average_accuracy(acc)) if rows and any(has_choices) else None,
        "forgetting": _finite(M.forgetting(acc)) if rows and any(has_choices) else None,
        "backward_transfer": _finite(M.backward_transfer(acc)) if rows and any(has_choices) else None,
        "average_nll": _finite(-M.average_accuracy(neg_nll)) if rows else None,
        "forgetting_nll": _finite(M.forgetting(neg_nll)) if rows else None,
    }
    return report


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value
