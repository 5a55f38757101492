"""Packed batches (tokenize.pack) give the losses and gradients of padded ones (tokenize.collate), within 1e-4."""

from __future__ import annotations

import json

import pytest
import torch
from _inference_run import tiny_settings

from icft.data.tokenize import IGNORE_INDEX, TokenizedPair, batch_tokens, collate, pack
from icft.likelihood import keeps_packed_apart, target_logits
from icft.losses import per_sequence_nll


def sequences(lengths: list[int], vocab: int) -> list[TokenizedPair]:
    """Rows of different lengths, each with a prompt (ignored labels) and a target, as training sees them."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=g).tolist()
        prompt = n // 3
        out.append(TokenizedPair(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def test_pack_lays_sequences_end_to_end_in_rows_as_wide_as_the_longest():
    rows = [TokenizedPair([1, 2, 3], [IGNORE_INDEX, 2, 3]), TokenizedPair([4, 5], [4, 5]), TokenizedPair([6], [6]),
            TokenizedPair([7, 8], [IGNORE_INDEX, 8])]  # fmt: skip
    batch = pack(rows, pad_id=0)
    # widths 3 | 2+1 | 2 (+1 padding): in order, a sequence that does not fit starts the next row
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0], [0, 1, 0]]
    assert batch["rows"].tolist() == [[0, 0, 0], [1, 1, 2], [3, 3, -1]]
    # a sequence's first label is not predicted from the previous sequence's last token
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 2, 3], [IGNORE_INDEX, 5, IGNORE_INDEX],
                                        [IGNORE_INDEX, 8, IGNORE_INDEX]]  # fmt: skip
    assert batch_tokens(batch) == 8 and batch_tokens(collate(rows, 0)) == 8


@pytest.mark.parametrize("name", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_packed_losses_and_gradients_equal_the_padded_ones(name, request):
    from icft.models import load_model

    model, tokenizer = load_model(str(request.getfixturevalue(name)))
    model.train()
    for module in model.modules():  # train mode, as in training, but a deterministic forward to compare
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    rows = sequences([30, 7, 19, 12, 3, 25, 5], len(tokenizer))  # rows: 30 | 7+19 | 12+3 | 25+5
    results = []
    for batch in (collate(rows, tokenizer.pad_token_id), pack(rows, tokenizer.pad_token_id)):
        model.zero_grad()
        logits, targets, token_rows = target_logits(model, batch)
        nll, _ = per_sequence_nll(logits, targets, token_rows, len(rows))
        nll.mean().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((nll.detach(), targets, token_rows, grads))
    (padded_nll, padded_targets, padded_rows, padded_grads), (packed_nll, packed_targets, packed_rows, packed_grads) = (
        results
    )
    assert torch.equal(padded_targets, packed_targets) and torch.equal(padded_rows, packed_rows)
    assert torch.allclose(padded_nll, packed_nll, atol=1e-4), (padded_nll - packed_nll).abs().max()
    assert torch.allclose(padded_grads, packed_grads, atol=1e-4), (padded_grads - packed_grads).abs().max()


class _MixesTheRow(torch.nn.Module):
    """A causal LM that ignores position ids: every position sees the running mean of the whole row."""

    def __init__(self, vocab: int = 40):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8)
        self.head = torch.nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        hidden = self.embed(input_ids).cumsum(1) / torch.arange(1, input_ids.shape[1] + 1).view(1, -1, 1)
        return type("Output", (), {"logits": self.head(hidden)})()


def test_a_model_that_does_not_keep_packed_rows_apart_is_found_out(tiny_llama):
    assert keeps_packed_apart(tiny_llama[0])
    assert not keeps_packed_apart(_MixesTheRow())


@pytest.mark.slow
def test_a_packed_run_logs_the_losses_of_a_padded_one(tiny_llama_dir, staged_data, tmp_path):
    """Full ICFT (pacing, STM and LTM replay, consistency on stored teacher outputs, the KL anchor): every
    logged loss part of 6 steps within 1e-4 with and without packing. At learning rate 0, so that every step
    scores the same examples with the same weights: Adam's first steps move each weight by about lr times
    the sign of its gradient, so float rounding in a near-zero gradient would otherwise flip whole updates."""
    from icft.cli import main

    logs = {}
    for packing in ("true", "false"):
        pairs = tiny_settings(tiny_llama_dir, staged_data, **{"train.packing": packing, "loss.kl_base": 0.5,
                                                              "train.lr": 0.0})  # fmt: skip
        args = [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]
        assert main(["train", *args, "--output-dir", str(tmp_path / packing)]) == 0
        logs[packing] = [json.loads(x) for x in (tmp_path / packing / "metrics.jsonl").read_text().splitlines()]
    assert len(logs["true"]) == len(logs["false"]) == 6
    parts = [k for k in logs["false"][0] if k.startswith("loss")]
    assert {"loss_task", "loss_consistency", "loss_total"} <= set(parts)
    for packed, padded in zip(logs["true"], logs["false"]):
        for part in parts:
            assert packed[part] == pytest.approx(padded[part], abs=1e-4), (packed["step"], part)
    assert any(r["loss_consistency"] > 0 for r in logs["false"])  # the consistency term was live


def test_every_loss_part_of_a_micro_batch_is_the_same_packed(tiny_llama_dir, staged_data):
    """compute_losses on new, STM-replayed and LTM-replayed rows (the LTM's stored teacher outputs recorded
    in packed or padded batches, then the weights moved so that the consistency term is live)."""
    from icft.config import load_config
    from icft.data.prompt_format import PromptFormat
    from icft.data.sources import load_data
    from icft.memory import LongTermMemory, MemoryItem
    from icft.models import load_model
    from icft.recipes.train import MicroBatch, TokenCache, compute_losses, record_teacher_outputs

    config = load_config(None, ["loss.consistency=1.0"])
    examples = load_data([str(staged_data[0])], quiet=True)
    parts = {}
    for packed in (False, True):
        model, tokenizer = load_model(str(tiny_llama_dir))
        model.eval()  # no dropout: the two forwards must be comparable
        cache = TokenCache(PromptFormat(tokenizer), packed=packed)
        ltm = LongTermMemory(capacity=8)
        stored = ltm.protect("general", [MemoryItem(example=ex) for ex in examples[20:26]])
        record_teacher_outputs(model, cache, ltm, stored, 4, "cpu")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():  # the same nudge in both: the student now differs from its teacher
                p.add_(3.0 * torch.randn(p.shape, generator=g))
        batch = MicroBatch(new=examples[:6], replay=examples[10:13], ltm=stored)
        losses = compute_losses(model, cache, batch, config, "cpu")
        parts[packed] = {k: float(v) for k, v in losses.parts.items()}
        parts[packed]["tokens"] = losses.tokens
    assert parts[False]["consistency"] > 1e-2  # live, so the comparison means something
    assert parts[True]["tokens"] == parts[False]["tokens"]
    for name, value in parts[False].items():
        assert parts[True][name] == pytest.approx(value, abs=1e-4), name
