"""Batched greedy generation of answers to prompts (open QA and dialogue evaluation).

Prompts are encoded as training encodes them (`encode_pair`: the tokenizer's BOS, if any, then the prompt
without special tokens) so the model sees at evaluation what it learned from. Batches are padded on the
left by hand, so that every row's last token is its own prompt's last token, without touching the
tokenizer's `padding_side`. `generate` derives position ids from the attention mask, so a left-padded row
gets the same positions as the row alone; this holds for the embedded BERT decoder's absolute position
embeddings too (tests/test_evaluation.py checks batched against one-by-one output).

Prompts are texts of a prompt format (`PromptFormat`) and become ids through it (`PromptFormat.prompt_ids`).
With the chat template the prompts are chat renderings (`formatting.prompt_and_target(..., template="chat")`):
they already hold BOS and end with the generation prompt, so no BOS is added, and generation also stops at the
template's end-of-turn token (e.g. ``<|im_end|>``), which for many chat models is not the tokenizer's EOS.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..likelihood import budget_batches, eval_batches, token_budget
from ..memory.self_memory import SELF_STAGE
from ..models import context_limit

# The one answer budget of evaluation: `icft eval`, `icft compare`, stage reports and benchmarks all generate
# this many new tokens at most (greedy, stopping at EOS or the chat template's end of turn).
EVAL_MAX_NEW_TOKENS = 48
# Generation keeps logits of the last position only, so its batches may hold more tokens than scoring's.
GENERATION_BUDGET_FACTOR = 4


@torch.no_grad()
def generate_answers(
    model: PreTrainedModel,
    fmt: PromptFormat,
    prompts: list[str],
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    batch_size: int = 16,
    progress: bool = False,
) -> list[str]:
    """The greedy continuation of each prompt (a text of `fmt`), up to EOS or `max_new_tokens`, without the
    prompt.

    A prompt longer than the format's `max_length - max_new_tokens` tokens (or the model's position limit)
    loses tokens from its start, as in training: the end of the prompt is what the answer follows from.
    """
    tokenizer = fmt.tokenizer
    limit = context_limit(model, fmt.max_length)
    room = limit - max_new_tokens
    if room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {limit} tokens")
    encoded = [_fit(fmt.prompt_ids(p), room, tokenizer.bos_token_id) for p in prompts]
    stop = fmt.stop_ids()
    # Longest first: similar lengths share a batch, so little padding, and a too-large batch fails at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    answers = [""] * len(prompts)
    batches = budget_batches([len(encoded[i]) + max_new_tokens for i in order], batch_size,
                              GENERATION_BUDGET_FACTOR * token_budget(model))  # fmt: skip
    for b in eval_batches(model, len(batches), 1, progress, desc="generating"):
        idx = [order[k] for k in batches[b]]
        input_ids, attention_mask = _left_pad([encoded[i] for i in idx], pad_id)
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=stop,
            pad_token_id=pad_id,
        )
        for i, row in zip(idx, output[:, input_ids.shape[1] :].tolist()):
            answers[i] = _decode(tokenizer, row, stop)
    return answers


def stop_ids(tokenizer: PreTrainedTokenizerBase, template: str = "plain") -> list[int]:
    """Token ids that end an answer: EOS, and in chat mode the first token of the template's end of turn."""
    return PromptFormat(tokenizer, template).stop_ids()


def _fit(ids: list[int], room: int, bos: int | None) -> list[int]:
    """At most `room` ids: a prompt too long loses tokens from its start, after its BOS (kept)."""
    if len(ids) <= room:
        return ids
    head = ids[:1] if bos is not None and ids[0] == bos else []
    keep = room - len(head)
    return head + (ids[-keep:] if keep > 0 else [])


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, width - len(r) :] = torch.tensor(r)
        attention_mask[i, width - len(r) :] = 1
    return input_ids, attention_mask


def _decode(tokenizer: PreTrainedTokenizerBase, new_tokens: list[int], stop: list[int]) -> str:
    # Cut at the first stop token ourselves: rows that stop early are filled with padding, and a tokenizer
    # whose EOS is not a special token would otherwise keep whatever follows it.
    ends = [i for i, t in enumerate(new_tokens) if t in stop]
    if ends:
        new_tokens = new_tokens[: ends[0]]
    return tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def own_answers(model, fmt, prompts: list[Example], new_tokens: int, batch_size: int = 16) -> list[Example]:
    """The model's greedy answers to `prompts` (as it is: callers switch the adapter off), as open qa items for
    the stage-0 memory (memory/self_memory.py). An answer cut at the budget is marked unfinished: training then
    gives it no end of turn to learn."""
    if not prompts:
        return []
    texts = generate_answers(model, fmt, [fmt.prompt(ex) for ex in prompts], new_tokens, batch_size)
    out = []
    for ex, text in zip(prompts, texts):
        if not text.strip():
            continue
        n_tokens = len(fmt.tokenizer(text, add_special_tokens=False)["input_ids"])
        out.append(Example(id=f"self/{ex.id}", kind="qa", source="self-memory", stage=SELF_STAGE,
                           question=ex.question, answer=text.strip(),
                           meta={"unfinished": n_tokens >= new_tokens - 1}))  # fmt: skip
    return out
