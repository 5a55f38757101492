"""Batched log-likelihood scoring of candidate continuations (multiple choice, preference pairs).

All (prompt, candidate) pairs of all examples go through the model in length-sorted batches: no Python
loop over single examples. Raw and length-normalised scores are both returned, as
lm-evaluation-harness reports `acc` (sum of log-probs) and `acc_norm` (log-prob per byte of text).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel

from ..data.kinds import is_choice
from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..likelihood import ScoreSettings, score_pairs


@dataclass
class ChoiceScores:
    example: Example
    logprobs: list[float]  # summed log-probability of each candidate
    lengths: list[int]  # characters of each candidate (lm-eval's acc_norm divides by bytes)
    gold: int

    @property
    def pred(self) -> int:
        return max(range(len(self.logprobs)), key=lambda i: self.logprobs[i])

    @property
    def pred_norm(self) -> int:
        return max(range(len(self.logprobs)), key=lambda i: self.logprobs[i] / max(1, self.lengths[i]))


def score_choices(
    model: PreTrainedModel,
    fmt: PromptFormat,
    examples: list[Example],
    batch_size: int = 32,
    progress: bool = False,
) -> list[ChoiceScores]:
    """Score every candidate of every multiple-choice qa or preference example in one batched pass, cut to
    the format's `max_length` tokens.

    The candidates are the prompt format's: with chat, the bare answer after the chat prompt
    (`formatting.candidates`).
    """
    items = [fmt.candidates(ex) for ex in examples]
    pairs = [(prompt, c) for prompt, cands, _ in items for c in cands]
    flat = score_pairs(model, fmt.tokenizer, pairs, ScoreSettings.of(fmt, batch_size, progress))
    out, k = [], 0
    for ex, (_, cands, gold) in zip(examples, items):
        out.append(ChoiceScores(ex, flat[k : k + len(cands)], [len(c.strip()) for c in cands], gold))
        k += len(cands)
    return out


def choice_accuracy(scores: list[ChoiceScores], normalised: bool = False) -> float:
    if not scores:
        return float("nan")
    hits = [(s.pred_norm if normalised else s.pred) == s.gold for s in scores]
    return sum(hits) / len(hits)


is_scorable = is_choice  # examples with candidates (multiple-choice or yes/no/maybe qa, preference pairs)
