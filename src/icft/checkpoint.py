"""Resumable checkpoints: `checkpoints/step-N/` under a run folder, written atomically, the last two kept.

A checkpoint holds the trainable weights, the optimizer and scheduler (written by the main process) and
one `rank<i>.pt` per process with everything else a resumed run needs: the run state, the curriculum
schedule, both memories and the random-number generators (CUDA's too, where the run uses a GPU). Each
process draws its own batches and keeps its own memories, so each restores its own file. A killed run
resumed from here ends exactly where an uninterrupted run would (tests/test_train.py checks it on CPU;
tests/test_checkpoint_rng.py checks the CUDA generator where there is one).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from .runs import PARTIAL_CHECKPOINT

KEEP = 2  # checkpoints kept; older ones are removed once a newer one is complete


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full trainable weights (LoRA, modules_to_save) on CPU. Under FSDP2 each parameter is a DTensor
    holding this rank's shard and gathering it is collective: every rank must call this."""
    from torch.distributed.tensor import DTensor

    return {n: (p.full_tensor() if isinstance(p, DTensor) else p.detach()).cpu().clone()
            for n, p in model.named_parameters() if p.requires_grad}  # fmt: skip


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def optimizer_state(model: torch.nn.Module, optimizer) -> dict:
    """The optimizer's full state. Sharded (FSDP2): keyed by parameter name, gathered to rank 0 (the others
    get {}), collective. Otherwise the optimizer's own state_dict."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_trainable(model: torch.nn.Module, optimizer, weights: dict, optim: dict) -> None:
    """Restore trainable weights and optimizer state. Sharded: rank 0 holds the dicts and broadcasts them."""
    if not is_sharded(model):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        optimizer.load_state_dict(optim)
        return
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    broadcast = dist.is_initialized() and dist.get_world_size() > 1
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=broadcast, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim, options=StateDictOptions(full_state_dict=True,
                                                                                broadcast_from_rank0=broadcast))


def fingerprint(model: torch.nn.Module) -> list[float]:
    """Sum and sum of squares of each trainable tensor: every process stores its own, so a test can check
    that data-parallel processes really hold the same adapter (gradients were averaged, not diverged)."""
    return [float(x) for p in model.parameters() if p.requires_grad
            for x in (p.detach().double().sum(), p.detach().double().pow(2).sum())]  # fmt: skip


def save_checkpoint(run_dir: Path, step: int, accelerator: Accelerator, model, optimizer, scheduler,
                    rank_state: dict) -> None:  # fmt: skip
    root = run_dir / "checkpoints"
    tmp, final = root / f"{PARTIAL_CHECKPOINT}{step:06d}", root / f"step-{step:06d}"  # a kill leaves tmp: the
    # next start or resume removes it (RunFolder.claim)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    rank_state = {**rank_state, "fingerprint": fingerprint(unwrapped)}
    torch.save(rank_state, tmp / f"rank{accelerator.process_index}.pt")
    weights, optim = trainable_state(unwrapped), optimizer_state(unwrapped, _inner(optimizer))  # collective
    if accelerator.is_main_process:
        torch.save(weights, tmp / "trainable.pt")
        torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists only once every file of it is written
        for old in sorted(root.glob("step-*"))[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper (state dicts are the torch optimizer's)."""
    return getattr(optimizer, "optimizer", optimizer)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, accelerator: Accelerator, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer and scheduler; return this process's own state."""
    weights = torch.load(path / "trainable.pt", map_location="cpu")
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    load_trainable(accelerator.unwrap_model(model), _inner(optimizer), weights, optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return torch.load(path / f"rank{accelerator.process_index}.pt", map_location="cpu", weights_only=False)


def rng_states(rng: random.Random) -> dict:
    """Every generator a training step draws from. On a GPU, dropout (LoRA's included) draws from the CUDA
    generator of the process's own device (accelerate gives each process one): saved where CUDA is in use."""
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
              "recipe": rng.getstate()}  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # not initialized: nothing ran on a GPU
        states["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return states


def restore_rng_states(states: dict, rng: random.Random) -> None:
    """Restore rng_states(). A checkpoint without a CUDA state (an older one, or a CPU run) leaves CUDA's
    generator as seeded; a CUDA state resumed on a machine without CUDA is not needed there."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    rng.setstate(states["recipe"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
