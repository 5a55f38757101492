"""Batched log-likelihood scoring of candidate continuations (multiple choice, preference pairs).

All (prompt, candidate) pairs of all examples go through the model in length-sorted batches: no Python
loop over single examples. Raw and length-normalised scores are both returned, as
lm-evaluation-harness reports `acc` (sum of log-probs) and `acc_norm` (log-prob per byte of text).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.formatting import candidates
from ..data.schema import Example
from ..data.tokenize import collate, encode_pair, target_logits


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


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    max_length: int = 512,
    batch_size: int = 32,
    progress: bool = False,
) -> list[float]:
    """Summed log-probability of each continuation given its prompt.

    Pairs whose continuation is a single token and that share a prompt (yes / no / maybe) share one
    forward pass, as in lm-evaluation-harness: one next-token distribution scores them all.
    """
    sequences = [encode_pair(tokenizer, p, c, max_length, add_eos=False) for p, c in pairs]
    groups: dict[tuple, list[int]] = {}
    for i, seq in enumerate(sequences):
        key = tuple(seq.input_ids[:-1]) if seq.n_target == 1 else ("own pass", i)
        groups.setdefault(key, []).append(i)
    passes = sorted(groups.values(), key=lambda members: -len(sequences[members[0]].input_ids))
    scores = [0.0] * len(sequences)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = range(0, len(passes), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="scoring", unit="batch", leave=False)
    for start in batches:
        chunk = passes[start : start + batch_size]
        batch = collate([sequences[members[0]] for members in chunk], tokenizer.pad_token_id)
        logits, targets, rows = target_logits(model, {k: v.to(device) for k, v in batch.items()})
        logp = logits.float().log_softmax(-1)
        for r, members in enumerate(chunk):
            positions = (rows == r).nonzero().squeeze(-1)
            if len(members) == 1:
                scores[members[0]] = logp[positions, targets[positions]].sum().item()
            else:  # single-token continuations of one prompt
                for i in members:
                    scores[i] = logp[positions[0], sequences[i].input_ids[-1]].item()
    model.train(was_training)
    return scores


def score_choices(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    max_length: int = 512,
    batch_size: int = 32,
    progress: bool = False,
) -> list[ChoiceScores]:
    """Score every candidate of every multiple-choice qa or preference example in one batched pass."""
    items = [candidates(ex) for ex in examples]
    pairs = [(prompt, c) for prompt, cands, _ in items for c in cands]
    flat = score_pairs(model, tokenizer, pairs, max_length, batch_size, progress)
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


def is_scorable(ex: Example) -> bool:
    """Examples with candidates: multiple-choice or yes/no/maybe qa, and preference pairs."""
    return (ex.kind == "qa" and bool(ex.options)) or ex.kind == "preference"
