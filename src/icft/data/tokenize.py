"""Token ids for (prompt, target) pairs, and batches of them: right-padded rows, or packed into one row.

Labels are -100 on prompt and padding tokens, so losses and scores only count target tokens.
When a pair is too long the prompt loses tokens from its start: the target is what we learn or score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


@dataclass
class TokenizedPair:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    target: str,
    max_length: int,
    add_eos: bool = True,
    template: str = "plain",
) -> TokenizedPair:
    """Prompt and target ids, labels on the target only.

    ``template="plain"`` adds the tokenizer's BOS before the prompt and, with `add_eos`, EOS after the target.
    ``template="chat"`` adds neither: chat pairs (`formatting.prompt_and_target(..., template="chat")`) already
    hold BOS, turn markers and end-of-turn as text, and a second BOS or a stray EOS after the end-of-turn
    would teach the model a sequence its template never produces. Special tokens written as text become
    their ids here (the tokenizer matches added tokens before splitting words).
    """
    # verbose=False: long prompts are cut below, so the tokenizer's length warning would only be noise.
    prompt_ids = tokenizer(prompt, add_special_tokens=False, verbose=False)["input_ids"] if prompt else []
    target_ids = tokenizer(target, add_special_tokens=False, verbose=False)["input_ids"]
    plain = template != "chat"
    if plain and add_eos and tokenizer.eos_token_id is not None:
        target_ids = target_ids + [tokenizer.eos_token_id]
    bos = [tokenizer.bos_token_id] if plain and tokenizer.bos_token_id is not None else []
    if not prompt_ids and not bos:
        # A plain-text example: the first token has nothing to be predicted from, so it becomes the prompt.
        prompt_ids, target_ids = target_ids[:1], target_ids[1:]
    target_ids = target_ids[: max(1, max_length - len(bos) - 1)]
    room = max_length - len(bos) - len(target_ids)
    prompt_ids = prompt_ids[max(0, len(prompt_ids) - room) :] if room > 0 else []
    prompt_ids = bos + prompt_ids
    return TokenizedPair(prompt_ids + target_ids, [IGNORE_INDEX] * len(prompt_ids) + target_ids)


def collate(sequences: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence in the batch."""
    width = max(len(s.input_ids) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        n = len(s.input_ids)
        input_ids[i, :n] = torch.tensor(s.input_ids)
        labels[i, :n] = torch.tensor(s.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack(sequences: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Sequences laid end to end in rows as wide as the longest of them, in order (a sequence that does not fit
    in the current row starts the next): input_ids, labels and position_ids, and `rows`, the sequence each
    token belongs to (-1 on the padding that ends a row).

    Position ids restart at 0 for each sequence. Given position ids and no attention mask, transformers
    reads the restarts as packed sequences and keeps them apart (a block-diagonal causal mask; masking_utils'
    find_packed_sequence_indices), so each sequence sees only itself, as in its own padded row. Rows no wider
    than the longest sequence keep attention's cost (the square of a row's width) what padding had it. The
    first label of each sequence is ignored: in a padded batch nothing predicts it, and here the previous
    sequence's last token would. In order, so the target tokens come out in the padded batch's order.
    """
    width = max(len(s.input_ids) for s in sequences)
    layout: list[list[int]] = [[]]  # the sequences of each row
    used = 0  # tokens in the current row
    for i, s in enumerate(sequences):
        if layout[-1] and used + len(s.input_ids) > width:
            layout.append([])
            used = 0
        layout[-1].append(i)
        used += len(s.input_ids)
    input_ids = torch.full((len(layout), width), pad_id, dtype=torch.long)
    labels = torch.full((len(layout), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(layout), width), dtype=torch.long)
    rows = torch.full((len(layout), width), -1, dtype=torch.long)
    for r, members in enumerate(layout):
        at = 0
        for i in members:
            s, n = sequences[i], len(sequences[i].input_ids)
            input_ids[r, at : at + n] = torch.tensor(s.input_ids)
            labels[r, at + 1 : at + n] = torch.tensor(s.labels[1:], dtype=torch.long)
            positions[r, at : at + n] = torch.arange(n)
            rows[r, at : at + n] = i
            at += n
        positions[r, at:] = torch.arange(width - at)  # the padding: a sequence of its own, never scored
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "rows": rows}


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens a padded or packed batch puts through the model, padding not counted."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int((batch["rows"] >= 0).sum())
