"""The model's log-likelihood of target tokens: the one place that runs a model to score text.

Training losses, difficulty scoring, stage metrics and evaluation all read log-probabilities through
these functions, so they agree on which tokens count (the target's, never the prompt's).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.tokenize import IGNORE_INDEX, collate, encode_pair


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only at positions that predict a target token: (n, vocab), their labels (n,), rows (n,).

    With a 30k-token vocabulary the output projection is most of the compute, and prompts are often
    longer than targets, so transformers' boolean `logits_to_keep` skips the prompt positions.
    """
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep
    ).logits
    return logits, labels[:, 1:][keep[:, :-1]], keep.nonzero()[:, 0]


def eval_batches(model, n_items: int, batch_size: int, progress: bool = False, desc: str = "batches") -> Iterator[int]:
    """Start index of each batch of `n_items`; the model is in eval mode while they run, its mode restored after."""
    starts = range(0, n_items, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    was_training = model.training
    model.eval()
    try:
        yield from starts
    finally:
        model.train(was_training)


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int):
    """Per-token log-probabilities of the targets, summed per row: (token_logp (n,), row_sum, row_count)."""
    token_logp = logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    row_sum = torch.zeros(n_rows, device=logits.device).index_add(0, rows, token_logp)
    row_count = torch.zeros(n_rows, device=logits.device).index_add(0, rows, torch.ones_like(token_logp))
    return token_logp, row_sum, row_count


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    max_length: int = 512,
    batch_size: int = 32,
    progress: bool = False,
    template: str = "plain",
) -> list[float]:
    """Summed log-probability of each continuation given its prompt.

    Pairs whose continuation is a single token and that share a prompt (yes / no / maybe) share one
    forward pass, as in lm-evaluation-harness: one next-token distribution scores them all.
    """
    sequences = [encode_pair(tokenizer, p, c, max_length, add_eos=False, template=template) for p, c in pairs]
    groups: dict[tuple, list[int]] = {}
    for i, seq in enumerate(sequences):
        key = tuple(seq.input_ids[:-1]) if seq.n_target == 1 else ("own pass", i)
        groups.setdefault(key, []).append(i)
    passes = sorted(groups.values(), key=lambda members: -len(sequences[members[0]].input_ids))
    scores = [0.0] * len(sequences)
    device = next(model.parameters()).device
    for start in eval_batches(model, len(passes), batch_size, progress, desc="scoring"):
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
    return scores


def answer_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    max_length: int = 512,
    batch_size: int = 32,
    template: str = "plain",
) -> list[float]:
    """Mean negative log-likelihood per target token of each (prompt, target) pair (no EOS counted)."""
    logprobs = score_pairs(model, tokenizer, pairs, max_length, batch_size, template=template)
    counts = [encode_pair(tokenizer, p, t, max_length, add_eos=False, template=template).n_target for p, t in pairs]
    return [-lp / max(1, n) for lp, n in zip(logprobs, counts)]
