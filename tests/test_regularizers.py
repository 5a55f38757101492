"""The two baseline add-ons: EWC's penalty and the EMA consistency teacher."""

from __future__ import annotations

import json

import pytest
import torch

from icft.regularizers import EWC, EMATeacher


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
