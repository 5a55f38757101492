"""The baseline add-ons: EWC's penalty, the EMA consistency teacher and the KL-to-base anchor."""

from __future__ import annotations

import json

import pytest
import torch

from icft.regularizers import EWC, EMATeacher, FrozenBaseTeacher


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # frozen weights are not regularised (the base model under LoRA)
    return model


def test_ewc_is_zero_at_the_anchor_and_pulls_back_where_the_fisher_is_large():
    model, x = _model(), torch.randn(16, 4)
    ewc = EWC(weight=10.0)
    assert ewc.penalty(model) is None
    ewc.consolidate(model, (model(x[i : i + 4]).pow(2).mean() for i in range(0, 16, 4)))
    assert "0.weight" not in ewc.fisher and set(ewc.fisher) == {"0.bias", "1.weight", "1.bias"}
    assert ewc.penalty(model).item() == pytest.approx(0.0)
    with torch.no_grad():
        model[1].weight.add_(0.5)
    moved = ewc.penalty(model)
    assert moved.item() > 0
    moved.backward()
    assert (model[1].weight.grad * 0.5 >= 0).all()  # the gradient points back toward the anchor


def test_ema_teacher_tracks_slowly_and_swaps_weights_back_exactly():
    model = _model()
    teacher = EMATeacher(model, decay=0.9)
    start = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    teacher.update(model)
    assert torch.allclose(teacher.shadow["1.weight"], start + 0.1)
    current = model[1].weight.detach().clone()
    with teacher.weights_in(model):
        assert torch.allclose(model[1].weight, start + 0.1) and not model.training
    assert torch.equal(model[1].weight, current) and model.training


def test_kl_to_base_is_zero_for_the_untrained_adapter_and_pulls_a_moved_one_back(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    from icft.data.tokenize import collate, encode_pair
    from icft.likelihood import target_logits
    from icft.models import load_model

    base, tokenizer = load_model(str(tiny_llama_dir))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    pairs = [("Question: what lowers fever?\nAnswer:", " paracetamol"), ("Patient: I cough.\nDoctor:", " rest")]
    batch = collate([encode_pair(tokenizer, p, t, 64) for p, t in pairs], tokenizer.pad_token_id)
    anchor = FrozenBaseTeacher(weight=2.0, top_k=8)
    # LoRA starts with B = 0: the model is its base, so the anchor is exactly 0
    assert anchor.penalty(model, batch, target_logits(model, batch)[0]).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = anchor.penalty(model, batch, target_logits(model, batch)[0])
    assert moved.item() > 0 and model.training  # the teacher ran in eval mode and gave the mode back
    moved.backward()
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for p in lora:
            p.sub_(0.05 * p.grad)
    assert anchor.penalty(model, batch, target_logits(model, batch)[0]).item() < moved.item()


def test_kl_to_base_needs_a_lora_model():
    with pytest.raises(ValueError, match="peft.method=lora"):
        FrozenBaseTeacher(1.0, 4).penalty(_model(), {}, torch.zeros(1, 3))


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "part"), [
    (["loss.ewc=100", "memory.enabled=false"], "loss_ewc"),
    (["memory.teacher=ema", "memory.ema_decay=0.5"], "loss_consistency"),
])  # fmt: skip
def test_baselines_train_end_to_end(settings, part, tiny_llama_dir, staged_data, tmp_path, monkeypatch):
    from test_train import overrides

    from icft.cli import main

    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    args = overrides(tiny_llama_dir, staged_data, steps=9) + [x for s in settings for x in ("--set", s)]
    assert main(["train", *args, "--output-dir", str(tmp_path / "run")]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0][part] == 0.0 and any(r[part] > 0 for r in records[3:])


@pytest.mark.slow
def test_kl_to_base_trains_end_to_end_and_keeps_the_model_nearer_its_base(tiny_llama_dir, staged_data, tmp_path,
                                                                          monkeypatch):
    """lora-kl-base's term is logged and is what it says: with a strong anchor the trained model ends nearer
    its base (smaller KL on the training batches) than the same run without it."""
    from test_train import overrides

    from icft.cli import main

    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    base = overrides(tiny_llama_dir, staged_data, steps=9) + ["--set", "memory.enabled=false"]
    kl = {}
    for name, weight in (("free", "0"), ("anchored", "50")):
        args = [*base, "--set", f"loss.kl_base={weight}", "--set", "loss.task=1"]
        assert main(["train", *args, "--output-dir", str(tmp_path / name)]) == 0
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        kl[name] = [r.get("loss_kl_base") for r in records]
    assert kl["free"] == [0.0] * len(kl["free"])  # off
    # step 1 runs the untrained adapter (LoRA's B = 0): the model is its base, the term exactly 0
    assert kl["anchored"][0] == pytest.approx(0.0, abs=1e-4) and kl["anchored"][-1] > 0

    from icft.data.formatting import prompt_and_target
    from icft.data.loaders import load_examples
    from icft.data.tokenize import collate, encode_pair
    from icft.likelihood import target_logits
    from icft.runs import load_run

    examples = load_examples(staged_data[0]).examples[:16]
    distance = {}
    for name in ("free", "anchored"):
        model, tokenizer = load_run(tmp_path / name, device="cpu")
        pairs = [encode_pair(tokenizer, *prompt_and_target(ex), 48) for ex in examples]
        batch = collate(pairs, tokenizer.pad_token_id)
        with torch.no_grad():
            distance[name] = FrozenBaseTeacher(1.0, 8).penalty(model, batch, target_logits(model, batch)[0]).item()
    assert distance["anchored"] < distance["free"]
