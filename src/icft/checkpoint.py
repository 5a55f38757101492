"""Resumable checkpoints: `checkpoints/step-N/` under a run folder, written atomically, the last two kept.

A checkpoint holds the trainable weights, the optimizer and scheduler (written by the main process) and
one `rank<i>.pt` per process with everything else a resumed run needs: the run state, the curriculum
schedule, both memories and the random-number generators. Each process draws its own batches and keeps
its own memories, so each restores its own file. A killed run resumed from here ends exactly where an
uninterrupted run would (tests/test_train.py checks it).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

KEEP = 2  # checkpoints kept; older ones are removed once a newer one is complete


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def fingerprint(model: torch.nn.Module) -> list[float]:
    """Sum and sum of squares of each trainable tensor: every process stores its own, so a test can check
    that data-parallel processes really hold the same adapter (gradients were averaged, not diverged)."""
    return [float(x) for p in model.parameters() if p.requires_grad
            for x in (p.detach().double().sum(), p.detach().double().pow(2).sum())]  # fmt: skip


def save_checkpoint(run_dir: Path, step: int, accelerator: Accelerator, model, optimizer, scheduler,
                    rank_state: dict) -> None:  # fmt: skip
    root = run_dir / "checkpoints"
    tmp, final = root / f".tmp-step-{step:06d}", root / f"step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    rank_state = {**rank_state, "fingerprint": fingerprint(accelerator.unwrap_model(model))}
    torch.save(rank_state, tmp / f"rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists only once every file of it is written
        for old in sorted(root.glob("step-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, accelerator: Accelerator, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer and scheduler; return this process's own state."""
    weights = torch.load(path / "trainable.pt", map_location="cpu")
    params = dict(accelerator.unwrap_model(model).named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return torch.load(path / f"rank{accelerator.process_index}.pt", map_location="cpu", weights_only=False)


def rng_states(rng: random.Random) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "recipe": rng.getstate()}  # fmt: skip


def restore_rng_states(states: dict, rng: random.Random) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    rng.setstate(states["recipe"])
