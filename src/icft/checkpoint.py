"""Resumable checkpoints: `checkpoints/step-N/` under a run folder, written atomically, the last two kept.

A checkpoint holds the trainable weights, the optimizer and scheduler (written by the main process) and
one `rank<i>.pt` per process with everything else a resumed run needs: the run state, the curriculum
schedule, both memories and the random-number generators (CUDA's too, where the run uses a GPU). Each
process draws its own batches and keeps its own memories, so each restores its own file. A killed run
resumed from here ends exactly where an uninterrupted run would (tests/test_train.py checks it on CPU;
tests/test_checkpoint_rng.py checks the CUDA generator where there is one).

Every file is read with `torch.load(weights_only=True)`: tensors and plain data (dicts, lists, numbers, text)
only, so a checkpoint from a shared or downloaded run folder cannot run code when it is resumed. The RNG
states are saved as lists of numbers for that reason. A file holding anything else (a checkpoint of an older
icft, which pickled Python objects, or a tampered one) is refused with one line, unread.
"""

from __future__ import annotations

import pickle
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from .errors import TrainingError
from .io import remove_path
from .runs import PARTIAL_CHECKPOINT, checkpoint_folders, real_folder

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


@dataclass
class TrainingObjects:
    """What every process restores from the shared files of a checkpoint: the model (as accelerate prepared it),
    its optimizer and learning-rate scheduler."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def save_checkpoint(run_dir: Path, step: int, accelerator: Accelerator, trained: TrainingObjects,
                    rank_state: dict) -> None:  # fmt: skip
    """checkpoints/step-N: the trainable weights, optimizer and scheduler (main process) and `rank_state`, this
    process's own state; complete once renamed from its temporary name, the last KEEP kept."""
    root = run_dir / "checkpoints"
    real_folder(root, run_dir)  # never a link out of the run: rotation below deletes in it
    tmp, final = root / f"{PARTIAL_CHECKPOINT}{step:06d}", root / f"step-{step:06d}"  # a kill leaves tmp: the
    # next start or resume removes it (RunFolder.claim)
    if accelerator.is_main_process:
        remove_path(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(trained.model)
    rank_state = {**rank_state, "fingerprint": fingerprint(unwrapped)}
    torch.save(rank_state, tmp / f"rank{accelerator.process_index}.pt")
    weights, optim = trainable_state(unwrapped), optimizer_state(unwrapped, _inner(trained.optimizer))  # collective
    if accelerator.is_main_process:
        torch.save(weights, tmp / "trainable.pt")
        torch.save({"optimizer": optim, "scheduler": trained.scheduler.state_dict()}, tmp / "optim.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        remove_path(final)
        tmp.rename(final)  # a checkpoint exists only once every file of it is written
        for old in checkpoint_folders(run_dir)[:-KEEP]:
            remove_path(old)
    accelerator.wait_for_everyone()


def _inner(optimizer):
    """The torch optimizer inside accelerate's wrapper (state dicts are the torch optimizer's)."""
    return getattr(optimizer, "optimizer", optimizer)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_folders(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, accelerator: Accelerator, trained: TrainingObjects) -> dict:
    """Restore weights, optimizer and scheduler; return this process's own state."""
    weights = load_data_only(path / "trainable.pt")
    optim = load_data_only(path / "optim.pt")
    load_trainable(accelerator.unwrap_model(trained.model), _inner(trained.optimizer), weights, optim["optimizer"])
    trained.scheduler.load_state_dict(optim["scheduler"])
    return load_data_only(path / f"rank{accelerator.process_index}.pt")


def load_data_only(path: Path):
    """A checkpoint file's tensors and plain data; a TrainingError, before anything in it is built, when it
    holds other Python objects (which unpickling could make run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        named = re.search(r"GLOBAL ([\w.]+)", str(error))  # the callable or class the file asked for
        what = f"it names {named.group(1)}" if named else "not plain data"
        run_dir = path.parent.parent.parent
        raise TrainingError(f"{path}: not loaded: it holds Python objects beyond tensors and plain data ({what}), "
                            "which could run code; it is a checkpoint of an older icft or was tampered with. Train "
                            f"again with the same config (icft train --config {run_dir / 'config.yaml'} "
                            f"--output-dir {run_dir})") from None  # fmt: skip


def rng_states(rng: random.Random) -> dict:
    """Every generator a training step draws from. On a GPU, dropout (LoRA's included) draws from the CUDA
    generator of the process's own device (accelerate gives each process one): saved where CUDA is in use."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy = [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]  # numbers: loadable with weights_only
    states = {"python": random.getstate(), "numpy": numpy, "torch": torch.get_rng_state(),
              "recipe": rng.getstate()}  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # not initialized: nothing ran on a GPU
        states["cuda"] = torch.cuda.get_rng_state()  # the current device's
    return states


def restore_rng_states(states: dict, rng: random.Random) -> None:
    """Restore rng_states(). A checkpoint without a CUDA state (an older one, or a CPU run) leaves CUDA's
    generator as seeded; a CUDA state resumed on a machine without CUDA is not needed there."""
    random.setstate(_as_tuples(states["python"]))
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(states["torch"])
    rng.setstate(_as_tuples(states["recipe"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _as_tuples(state) -> tuple:
    """random.Random's state as setstate takes it: (version, tuple of ints, gauss)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss
