"""Batched log-likelihood scoring of candidate continuations (multiple choice, preference pairs).

All (prompt, candidate) pairs of all examples go through the model in length-sorted batches: no Python
loop over single examples. Raw and length-normalised scores are both returned, as
lm-evaluation-harness reports `acc` (sum of log-probs) and `acc_norm` (log-prob per byte of text).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.kinds import is_choice
from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..likelihood import score_pairs


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
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_length: int = 512,
    batch_size: int = 32,
    progress: bool = False,
    template: str = "plain",
    fmt: PromptFormat | None = None,
) -> list[ChoiceScores]:
    """Score every candidate of every multiple-choice qa or preference example in one batched pass.

    The candidates are the prompt format's (`fmt`, or `template` on `tokenizer`): with chat, the bare answer
    after the chat prompt (`formatting.candidates`).
    """
    fmt = fmt or PromptFormat(tokenizer, template)
    items = [fmt.candidates(ex) for ex in examples]
    pairs = [(prompt, c) for prompt, cands, _ in items for c in cands]
    flat = score_pairs(model, tokenizer, pairs, max_length, batch_size, progress, fmt.template)
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
