"""The model's log-likelihood of target tokens: the one place that runs a model to score text.

Training losses, difficulty scoring, stage metrics and evaluation all read log-probabilities through
these functions, so they agree on which tokens count (the target's, never the prompt's).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.tokenize import IGNORE_INDEX, TokenizedPair, collate, encode_pair, pack

# Evaluation's memory bound. A batch holds at most `token_budget(model)` tokens (rows x padded width), so the
# logits at its scored positions (positions x vocabulary x 4 bytes) take about LOGIT_BUDGET_BYTES whatever the
# batch size or the length of the inputs; log-probabilities are then taken LOGP_CHUNK positions at a time.
LOGIT_BUDGET_BYTES = 384 * 2**20
LOGP_CHUNK = 256


@dataclass(frozen=True)
class ScoreSettings:
    """How text pairs are scored: each cut to `max_length` tokens and tokenized as `template` ("plain" or
    "chat") renders it, in batches of at most `batch_size` rows (and `token_budget` tokens), with a progress
    bar on stderr where `progress`."""

    max_length: int = 512
    batch_size: int = 32
    template: str = "plain"
    progress: bool = False

    @classmethod
    def of(cls, fmt, batch_size: int = 32, progress: bool = False) -> ScoreSettings:
        """The settings of a prompt format (`PromptFormat`): its length and template."""
        return cls(fmt.max_length, batch_size, fmt.template, progress)


def token_budget(model) -> int:
    """Tokens per evaluation batch: LOGIT_BUDGET_BYTES of float32 logits over the model's vocabulary
    (about 2,000 tokens for SmolLM2's 49,152), at least 256."""
    config = getattr(_inner_model(model), "config", None)
    vocab = getattr(config, "vocab_size", None) or 50_000
    return max(256, LOGIT_BUDGET_BYTES // (4 * int(vocab)))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at each row of (n, vocab) logits, in float32, LOGP_CHUNK rows at a time: a full
    log-softmax over (n, vocab) would be a second copy of the logits."""
    out = torch.empty(len(targets), dtype=torch.float32, device=logits.device)
    for start in range(0, len(targets), LOGP_CHUNK):
        rows = logits[start : start + LOGP_CHUNK].float()
        picked = rows.gather(-1, targets[start : start + LOGP_CHUNK].unsqueeze(-1)).squeeze(-1)
        out[start : start + LOGP_CHUNK] = picked - rows.logsumexp(-1)
    return out


def target_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits only at positions that predict a target token: (n, vocab), their labels (n,), rows (n,).

    With a 30k-50k-token vocabulary the output projection is a large share of the compute, and prompts
    are often longer than targets, so it runs at the target positions only (see `logits_at`).
    """
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    if "rows" in batch:  # packed (tokenize.pack): no cache, or transformers would not see the packing
        inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        logits = logits_at(model, keep, **inputs)
        return logits, labels[:, 1:][keep[:, :-1]], batch["rows"][keep]
    logits = logits_at(model, keep, input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return logits, labels[:, 1:][keep[:, :-1]], keep.nonzero()[:, 0]


@torch.no_grad()
def keeps_packed_apart(model) -> bool:
    """Whether `model` keeps sequences packed into one row apart (tokenize.pack): two short sequences packed
    give the logits each gives in its own padded row. An attention that ignores the position ids' restarts
    (custom code, absolute-position models without packed-mask support) fails, and training pads instead."""
    rows = [list(range(5, 12)), [9, 8, 7], [6, 5, 9, 8]]  # the last two share a packed row
    sequences = [TokenizedPair(ids, ids) for ids in rows]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        padded = target_logits(model, {k: v.to(device) for k, v in collate(sequences, 0).items()})[0]
        packed = target_logits(model, {k: v.to(device) for k, v in pack(sequences, 0).items()})[0]
    finally:
        model.train(was_training)
    return padded.shape == packed.shape and bool(torch.allclose(padded.float(), packed.float(), atol=1e-3, rtol=1e-3))


def logits_at(model, keep: torch.Tensor, **inputs) -> torch.Tensor:
    """The model's logits at the `keep` positions of a (batch, length) boolean mask, flattened to (n, vocab).

    transformers' causal LMs take a boolean `logits_to_keep` and apply the output projection there only.
    A model whose forward does not take it (custom code) projects every position; we then pick `keep`.
    """
    if _forward_takes(model, "logits_to_keep"):
        logits = model(**inputs, logits_to_keep=keep).logits
    else:
        logits = model(**inputs).logits
    return logits[keep] if logits.dim() == 3 else logits  # 3-d: the model ignored logits_to_keep


def _forward_takes(model, name: str) -> bool:
    """Whether the forward of `model` (seen through DDP/FSDP and peft wrappers) names argument `name`, or
    passes unknown ones on (**kwargs)."""
    params = inspect.signature(_inner_model(model).forward).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _inner_model(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP, FSDP
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def eval_batches(model, n_items: int, batch_size: int, progress: bool = False, desc: str = "batches") -> Iterator[int]:
    """Start index of each batch of `n_items`; the model is in eval mode while they run, its mode restored after."""
    starts = range(0, n_items, batch_size)
    if progress:
        import sys

        from tqdm.auto import tqdm

        # on stderr, and cleared when done (leave=False): a table printed after it starts on a clean line
        starts = tqdm(starts, desc=desc, unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)
    was_training = model.training
    model.eval()
    try:
        yield from starts
    finally:
        model.train(was_training)


def budget_batches(widths: list[int], batch_size: int, budget: int) -> list[list[int]]:
    """Positions of `widths` (longest first) in batches of at most `batch_size` rows and `budget` tokens
    (rows x the first, longest width); a batch holds at least one row."""
    batches: list[list[int]] = []
    for k in range(len(widths)):
        if not batches or len(batches[-1]) >= batch_size or (len(batches[-1]) + 1) * widths[batches[-1][0]] > budget:
            batches.append([])
        batches[-1].append(k)
    return batches


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor, n_rows: int):
    """Per-token log-probabilities of the targets, summed per row: (token_logp (n,), row_sum, row_count)."""
    token_logp = token_logprobs(logits, targets)
    row_sum = torch.zeros(n_rows, device=logits.device).index_add(0, rows, token_logp)
    row_count = torch.zeros(n_rows, device=logits.device).index_add(0, rows, torch.ones_like(token_logp))
    return token_logp, row_sum, row_count


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    settings: ScoreSettings = ScoreSettings(),
    share_prompts: bool = True,
) -> list[float]:
    """Summed log-probability of each continuation given its prompt.

    Continuations of one prompt share its forward pass (see `score_sequences`); `share_prompts=False`
    runs every pair alone. The scores are the same either way, up to float rounding.
    """
    sequences = _encode(tokenizer, pairs, settings)
    return score_sequences(model, sequences, tokenizer.pad_token_id, settings, share_prompts)


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel,
    sequences: list[TokenizedPair],
    pad_id: int,
    settings: ScoreSettings = ScoreSettings(),
    share_prompts: bool = True,
    desc: str = "scoring",
) -> list[float]:
    """Summed log-probability of each sequence's target tokens, in length-sorted batches of at most
    `settings.batch_size` rows and `token_budget(model)` tokens (the sequences are encoded already: the
    settings' length and template are not used here).

    Sequences with the same prompt ids share work, as in lm-evaluation-harness: single-token targets
    (yes / no / maybe) are all read off one next-token distribution; longer targets (the options of a
    multiple-choice question) run on the prompt's cached keys and values, so a question with 4 options
    costs one prompt and 4 short continuations instead of 4 full sequences.
    """
    groups: dict[tuple, list[int]] = {}
    for i, seq in enumerate(sequences):
        prompt = _prompt_ids(seq)
        # a sequence with no prompt left (its target fills max_length) or no target has nothing to share
        key = tuple(prompt) if share_prompts and prompt and seq.n_target else ("own pass", i)
        groups.setdefault(key, []).append(i)
    shared, passes = [], []  # groups scored on a cached prompt; groups scored in one full-sequence pass
    can_share = _can_share_prompt(model)
    budget = token_budget(model)
    for members in groups.values():
        if len(members) == 1 or all(sequences[i].n_target == 1 for i in members):
            passes.append(members)
        elif can_share:
            # a prompt shared by many long answers is split into parts that each fit the token budget
            width = max(len(sequences[i].input_ids) for i in members)
            step = max(1, budget // max(1, width))
            shared += [members[k : k + step] for k in range(0, len(members), step)]
        else:
            passes += [[i] for i in members]
    rows = settings.batch_size
    batches = [(_score_full, chunk) for chunk in _length_batches(passes, sequences, rows, lambda m: 1, budget)]
    batches += [(_score_shared, chunk) for chunk in _length_batches(shared, sequences, rows, len, budget)]
    scores = [0.0] * len(sequences)
    device = next(model.parameters()).device
    for b in eval_batches(model, len(batches), 1, settings.progress, desc=desc):
        score, chunk = batches[b]
        score(model, sequences, chunk, pad_id, device, scores)
    return scores


def _length_batches(groups: list[list[int]], sequences: list[TokenizedPair], batch_size: int,
                    rows: Callable[[list[int]], int], budget: int | None = None) -> list[list[list[int]]]:  # fmt: skip
    """Groups, longest first (little padding), in batches of at most `batch_size` rows (a group takes
    `rows(group)` of them) and, given a `budget`, at most that many tokens (rows x the batch's longest
    sequence); a batch holds at least one group."""

    def width(members: list[int]) -> int:
        return max(len(sequences[i].input_ids) for i in members)

    order = sorted(groups, key=lambda members: -width(members))
    batches: list[list[list[int]]] = []
    used = longest = 0
    for members in order:
        n = rows(members)
        if not batches or used + n > batch_size or (budget is not None and (used + n) * longest > budget):
            batches.append([])
            used, longest = 0, width(members)
        batches[-1].append(members)
        used += n
    return batches


def _score_full(model, sequences, chunk: list[list[int]], pad_id: int, device, scores: list[float]) -> None:
    """One pass over the first member of each group; a group of single-token targets reads them all off
    the distribution after its prompt."""
    batch = collate([sequences[members[0]] for members in chunk], pad_id)
    logits, targets, rows = target_logits(model, {k: v.to(device) for k, v in batch.items()})
    token_logp = token_logprobs(logits, targets)
    for r, members in enumerate(chunk):
        positions = (rows == r).nonzero().squeeze(-1)
        if len(members) == 1:
            scores[members[0]] = token_logp[positions].sum().item()
        else:  # single-token continuations of one prompt
            logp = logits[positions[0]].float().log_softmax(-1)
            for i in members:
                scores[i] = logp[sequences[i].input_ids[-1]].item()


def _score_shared(model, sequences, chunk: list[list[int]], pad_id: int, device, scores: list[float]) -> None:
    """Each group's prompt once (right-padded, its keys and values cached), then every member's target
    tokens on that cache, at the positions they would have had after the prompt alone. A prompt's last
    position predicts each target's first token."""
    prompts = [_prompt_ids(sequences[members[0]]) for members in chunk]
    lengths = torch.tensor([len(p) for p in prompts])
    prompt = collate([TokenizedPair(p, [IGNORE_INDEX] * len(p)) for p in prompts], pad_id)
    last = torch.zeros_like(prompt["input_ids"], dtype=torch.bool)
    last[torch.arange(len(chunk)), lengths - 1] = True
    out = model(**{k: v.to(device) for k, v in prompt.items() if k != "labels"}, use_cache=True,
                logits_to_keep=last.to(device))  # fmt: skip
    first_logp = out.logits.float().log_softmax(-1)  # (groups, vocab)
    cache = getattr(out, "cache", None) or out.past_key_values

    members = [i for m in chunk for i in m]
    group_of = torch.tensor([g for g, m in enumerate(chunk) for _ in m])
    cache.reorder_cache(group_of.to(device))  # one copy of its group's prompt per member
    target = collate([TokenizedPair(t, t) for t in (_target_ids(sequences[i]) for i in members)], pad_id)
    ids, mask = target["input_ids"], target["attention_mask"]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = mask[:, 1:].bool()  # positions that predict a next target token
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.cat([prompt["attention_mask"][group_of], mask], 1),
        # padding gets position 0: past a row's end a position could exceed a model's limit (absolute embeddings)
        "position_ids": (lengths[group_of, None] + torch.arange(ids.shape[1])) * mask,
        "logits_to_keep": keep,
    }
    cache_arg = "cache" if "cache" in inspect.signature(_inner_model(model).forward).parameters else "past_key_values"
    logits = model(**{k: v.to(device) for k, v in inputs.items()}, **{cache_arg: cache}).logits
    token_logp = token_logprobs(logits, ids[:, 1:][keep[:, :-1]].to(device))
    total = first_logp[group_of.to(device), ids[:, 0].to(device)]
    total = total.index_add(0, keep.nonzero()[:, 0].to(device), token_logp)
    for i, value in zip(members, total.tolist()):
        scores[i] = value


def _prompt_ids(seq: TokenizedPair) -> list[int]:
    return seq.input_ids[: len(seq.input_ids) - seq.n_target]


def _target_ids(seq: TokenizedPair) -> list[int]:
    return seq.input_ids[len(seq.input_ids) - seq.n_target :]


def _can_share_prompt(model) -> bool:
    """Scoring on a cached prompt needs a transformers decoder that takes `logits_to_keep`, explicit
    positions and a cache of every past position: no sliding window (its cache would drop the prompt's start)."""
    inner = _inner_model(model)
    config = getattr(inner, "config", None)
    params = inspect.signature(inner.forward).parameters
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return (config is not None and not getattr(config, "is_encoder_decoder", False) and not sliding
            and "logits_to_keep" in params and "position_ids" in params
            and ("cache" in params or "past_key_values" in params))  # fmt: skip


def answer_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[tuple[str, str]],
    settings: ScoreSettings = ScoreSettings(),
) -> list[float]:
    """Mean negative log-likelihood per target token of each (prompt, target) pair (no EOS counted)."""
    sequences = _encode(tokenizer, pairs, settings)
    logprobs = score_sequences(model, sequences, tokenizer.pad_token_id, settings, desc="answer NLL")
    return [-lp / max(1, s.n_target) for lp, s in zip(logprobs, sequences)]


def _encode(tokenizer, pairs: list[tuple[str, str]], settings: ScoreSettings) -> list[TokenizedPair]:
    """Each (prompt, target) as scoring reads it: no EOS after the target."""
    return [encode_pair(tokenizer, p, t, settings.max_length, add_eos=False, template=settings.template)
            for p, t in pairs]  # fmt: skip
