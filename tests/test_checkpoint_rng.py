"""The random-number generators a checkpoint saves: restoring them replays the same draws, the CUDA generator
included (on a GPU, LoRA dropout draws from it), and a checkpoint without a CUDA state still restores."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from icft.checkpoint import restore_rng_states, rng_states


def _draws(rng: random.Random) -> list:
    return [random.random(), float(np.random.rand()), torch.rand(3).tolist(), rng.random()]


def test_restored_generators_replay_the_same_draws():
    rng = random.Random(5)
    _draws(rng)
    saved = rng_states(rng)
    first = _draws(rng)
    _draws(rng)
    restore_rng_states(saved, rng)
    assert _draws(rng) == first


def test_a_checkpoint_without_a_cuda_state_restores():
    """Checkpoints written before the CUDA state was saved (or by a CPU run) have no 'cuda' key."""
    rng = random.Random(1)
    saved = {k: v for k, v in rng_states(rng).items() if k != "cuda"}
    first = _draws(rng)
    restore_rng_states(saved, rng)
    assert _draws(rng) == first


def test_the_cuda_state_is_saved_once_cuda_is_in_use_and_restored(monkeypatch):
    """The wiring, on any machine: CUDA stood in for by a generator of our own."""
    state = torch.tensor([7], dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in rng_states(random.Random(0))  # nothing ran on a GPU: nothing to save (and no CUDA init)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", restored.append)
    saved = rng_states(random.Random(0))
    assert saved["cuda"] is state
    restore_rng_states(saved, random.Random(0))
    assert restored == [state]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_dropout_on_the_gpu_repeats_after_a_restore():
    rng = random.Random(0)
    ones = torch.ones(4096, device="cuda")
    torch.nn.functional.dropout(ones, 0.5)  # CUDA in use
    saved = rng_states(rng)
    assert "cuda" in saved
    mask = torch.nn.functional.dropout(ones, 0.5)
    assert not torch.equal(mask, torch.nn.functional.dropout(ones, 0.5))  # the generator moved on
    restore_rng_states(saved, rng)
    assert torch.equal(mask, torch.nn.functional.dropout(ones, 0.5))
