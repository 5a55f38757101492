"""Each loss term on small cases, and that gradients reach only the trainable parameters."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from icft import losses
from icft.config import load_config
from icft.data.prompt_format import PromptFormat
from icft.data.schema import Example


def test_per_sequence_nll_is_mean_cross_entropy_per_row():
    torch.manual_seed(0)
    logits, targets = torch.randn(5, 7), torch.tensor([1, 2, 3, 4, 5])
    rows = torch.tensor([0, 0, 1, 1, 1])
    nll, count = losses.per_sequence_nll(logits, targets, rows, 2)
    token = F.cross_entropy(logits, targets, reduction="none")
    assert torch.allclose(nll, torch.stack([token[:2].mean(), token[2:].mean()]))
    assert count.tolist() == [2, 3]


def test_preference_loss():
    assert losses.preference_loss(torch.tensor(1.0), torch.tensor(1.0)).item() == pytest.approx(math.log(2))
    # chosen more likely (lower NLL) -> smaller loss than the reverse
    assert losses.preference_loss(torch.tensor(0.5), torch.tensor(2.0)) < losses.preference_loss(
        torch.tensor(2.0), torch.tensor(0.5)
    )


def test_consistency_kl_is_exact_kl_when_k_covers_the_vocabulary():
    torch.manual_seed(0)
    logits, other = torch.randn(4, 6), torch.randn(4, 6)
    ids, logp = losses.top_k_outputs(logits, k=6)
    kl = losses.consistency_kl(other, ids, logp).item()
    p, q = logits.log_softmax(-1), other.log_softmax(-1)
    assert kl == pytest.approx((p.exp() * (p - q)).sum(-1).mean().item(), abs=1e-6)


def test_consistency_kl_is_zero_with_zero_gradient_at_the_stored_distribution():
    """k much smaller than the vocabulary: the teacher's own logits must be a minimum, not a slope."""
    torch.manual_seed(0)
    logits = (torch.randn(8, 1000) * 1.5).requires_grad_(True)  # a realistic spread: top-16 mass well below 1
    ids, logp = losses.top_k_outputs(logits.detach(), k=16)
    assert logp.exp().sum(-1).max() < 0.9  # the rest bucket matters in this case
    loss = losses.consistency_kl(logits, ids, logp)
    loss.backward()
    assert abs(loss.item()) <= 1e-6
    assert logits.grad.abs().max().item() <= 1e-6
    # Renormalising the top-k (the old loss) was -log(top-k mass) here, about a nat or more.
    assert (-logp.exp().sum(-1).log()).mean().item() > 0.1


def test_consistency_kl_is_positive_when_the_student_moves():
    torch.manual_seed(0)
    logits = torch.randn(8, 1000) * 3
    ids, logp = losses.top_k_outputs(logits, k=16)
    assert losses.consistency_kl(logits + torch.randn(8, 1000), ids, logp).item() > 1e-3
    # Moving mass between the top-k and the rest also counts, even with the top-k ratios unchanged.
    sharper = logits.clone()
    sharper.scatter_add_(-1, ids, torch.full_like(logp, 1.0))
    assert losses.consistency_kl(sharper, ids, logp).item() > 1e-3


def test_weighted_total_leaves_out_switched_off_terms():
    parts = {"task": torch.tensor(2.0), "consistency": torch.tensor(3.0), "finetune": torch.tensor(5.0)}
    assert losses.weighted_total(parts, {"task": 1, "consistency": 0, "finetune": 0}).item() == 2.0
    assert losses.weighted_total(parts, {"task": 1, "consistency": 0.5, "finetune": 2}).item() == 13.5


def test_gradients_reach_only_trainable_parameters(tiny_llama_dir):
    from icft.data.formatting import prompt_and_target
    from icft.memory import MemoryItem
    from icft.recipes.train import MicroBatch, TokenCache, compute_losses, load_adapted_model

    config = load_config(None, ["peft.r=4", f"model.name={tiny_llama_dir}"])
    model, tokenizer = load_adapted_model(config)
    batcher = TokenCache(PromptFormat(tokenizer, "plain", 48))
    new = [Example("a", "qa", "s", question="Q?", options=["x", "y"], answer=1),
           Example("b", "preference", "s", prompt="P?", chosen="good", rejected="bad")]
    replay = [Example("c", "text", "s", text="Some replayed text here.")]
    ltm_ex = Example("d", "qa", "s", question="Old?", answer="yes it is")
    seq = batcher.encode(ltm_ex)
    k = 4
    item = MemoryItem(ltm_ex, teacher_ids=torch.zeros(seq.n_target, k, dtype=torch.long),
                      teacher_logprobs=torch.full((seq.n_target, k), -math.log(k)))  # fmt: skip
    out = compute_losses(model, batcher, MicroBatch(new, replay, [item]), config, "cpu")
    parts = out.parts
    assert all(parts[k].item() > 0 for k in ("task", "finetune", "consistency")) and len(out.new_hardness) == 2
    assert parts["kl_base"].item() == 0  # no KL-to-base anchor configured
    # A preference pair's hardness is its chosen answer's per-token NLL, on the scale of the other kinds.
    assert out.new_hardness[1] > 3 and len(out.replay_hardness) == 1
    assert prompt_and_target(ltm_ex)[1] == " yes it is"
    sum(parts.values()).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    assert any("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
