"""The terms that hold a model near what it knew, as components the training loop calls without knowing which.

Each one is a `Regularizer`: it fills one loss part (`part`) of each micro-batch from `penalty`, and may keep
state across steps (`on_step`, `on_stage_end`, `state_dict`). The recipe builds them from the config
(`recipes/train.py: build_regularizers`) and calls them as a list; their states go into a checkpoint under
"regularizers" (`regularizer_states`, `load_regularizer_states`).

- `StoredTeacher`: ICFT's consistency term. The teacher is the model's own output distribution on each
  long-term memory item, stored when the item entered the memory (`losses.consistency_kl`). Each memory
  group has its own teacher and weight: one StoredTeacher covers the consolidated (medical) stages, whose
  teacher is the model at each stage's end; another (`StoredTeacher.self_memory`) the protected stage-0
  group, whose teacher is the untrained model (memory.general), in a loss part of its own.
- `EMATeacher`: the same term with an exponential moving average of the trainable parameters as the
  teacher, run on the replayed items (I-LoRA / CLS-ER: a slow "long-term" copy of the fast weights). It
  costs a second forward pass over those items each step; stored outputs cost none.
- `FrozenBaseTeacher`: the untrained model's next-token distribution on the same batch as an anchor, the
  KL-to-base baseline (Learning without Forgetting, Li & Hoiem 2017; the KL penalty of RLHF recipes). With
  LoRA the base model is the same network with its adapter switched off, so it needs no second copy.
- `EWC`: elastic weight consolidation (Kirkpatrick et al. 2017) on the trainable parameters (the LoRA
  adapter). At each stage end the diagonal of the empirical Fisher information is estimated from squared
  gradients of the task loss on a sample of that stage, and added to the running total (online EWC,
  Schwarz et al. 2018); the penalty `weight / 2 * sum F (theta - theta_end_of_stage)^2` then resists
  moving the parameters that earlier stages relied on.

The parts are logged as they are returned (`loss_consistency`, `loss_kl_base`, `loss_ewc` in metrics.jsonl):
the consistency teachers return the plain KL, which the recipe weights by `loss.consistency`; the
KL-to-base anchor and EWC carry their own weights (`loss.kl_base`, `loss.ewc`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .data.schema import Example
from .errors import TrainingError
from .likelihood import target_logits
from .losses import consistency_kl, top_k_outputs

# EWC's Fisher estimate at a stage end: FISHER_EXAMPLES examples of the stage (all of a smaller stage), drawn
# with the stage's index as seed, in batches of FISHER_BATCH_SIZE: FISHER_EXAMPLES / FISHER_BATCH_SIZE
# forward-backward passes per stage end, each the size of a small training micro-batch. The batch size is
# part of the estimate, not only of its cost: the Fisher is the mean squared gradient of a batch's mean
# loss, so a larger batch averages more of the per-example gradient noise away and gives smaller values.
FISHER_EXAMPLES = 64
FISHER_BATCH_SIZE = 8


@dataclass
class Batch:
    """A micro-batch after the model's forward pass, as the regularizers see it."""

    inputs: dict[str, torch.Tensor]  # the collated rows on the device: input_ids, attention_mask, labels
    logits: torch.Tensor  # the model's logits at the target positions (likelihood.target_logits), (n, vocab)
    token_rows: torch.Tensor  # (n,) the row each of those target tokens is in
    ltm_start: int  # the rows from here on replay long-term memory items
    ltm_items: list  # those items (memory.MemoryItem), with the outputs stored for them at consolidation
    ltm_inputs: dict[str, torch.Tensor] | None  # those rows collated on their own, on the CPU; None: no LTM rows

    def ltm_logits(self) -> torch.Tensor:
        """The model's logits at the LTM rows' target tokens (tokens come out row by row, in item order)."""
        return self.logits[self.token_rows >= self.ltm_start]

    def item_logits(self, indices: list[int]) -> torch.Tensor:
        """The same for the LTM items at `indices` (ascending) alone: their tokens, in item order."""
        if len(indices) == len(self.ltm_items):
            return self.ltm_logits()
        rows = torch.tensor([self.ltm_start + i for i in indices], device=self.token_rows.device)
        return self.logits[torch.isin(self.token_rows, rows)]


class Regularizer:
    """What the training loop asks of a regularizer. Every hook but `penalty` does nothing by default."""

    name: str  # the key of its state in a checkpoint
    part: str  # the loss part it fills (progress.LOSS_PARTS)

    def penalty(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor | None:
        """Its loss part for this micro-batch; None where it has nothing to say (the part is then 0)."""
        raise NotImplementedError

    def on_step(self, model: torch.nn.Module) -> None:
        """After each optimizer step (the unwrapped model)."""

    def on_stage_end(self, model: torch.nn.Module, stage: int, examples: list[Example],
                     task_loss: Callable[[list[Example]], torch.Tensor]) -> None:  # fmt: skip
        """At the end of curriculum stage `stage` (its index), whose training examples are `examples`;
        `task_loss` gives the task loss of a list of examples with gradients."""

    def state_dict(self) -> dict:
        """What a resumed run needs; {} for a regularizer without state."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def regularizer_states(regularizers: list[Regularizer]) -> dict[str, dict]:
    """Each regularizer's state by name, for a checkpoint."""
    return {r.name: r.state_dict() for r in regularizers}


def load_regularizer_states(regularizers: list[Regularizer], saved: dict) -> None:
    """Restore `regularizer_states` from a process's checkpoint state `saved`. A regularizer with state that the
    checkpoint lacks (written under another loss or memory config) is a TrainingError."""
    states = saved.get("regularizers")
    if states is None:  # a checkpoint of an older version: EWC and the EMA teacher under keys of their own
        states = {name: saved[name] for name in (EWC.name, EMATeacher.name) if saved.get(name) is not None}
    for regularizer in regularizers:
        if regularizer.name in states:
            regularizer.load_state_dict(states[regularizer.name])
        elif regularizer.state_dict():
            raise TrainingError(
                f"the checkpoint holds no state for the regularizer '{regularizer.name}': it was written under "
                "another loss or memory config"
            )


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # under DDP the peft model is the wrapped module


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in _unwrapped(model).named_parameters() if p.requires_grad}


def _consistency(batch: Batch, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor) -> torch.Tensor:
    student = batch.ltm_logits()
    if teacher_ids.shape[0] != student.shape[0]:
        raise TrainingError("stored LTM teacher outputs do not match the replayed tokens")
    return consistency_kl(student, teacher_ids, teacher_logprobs)


class StoredTeacher(Regularizer):
    """KL(stored outputs || model) on the replayed LTM items' target tokens: ICFT's consistency term. Its
    state is the long-term memory itself, saved with the memory.

    `protected_stages` picks its group: items of those stages are left to the other StoredTeacher
    (`protected=False`, ICFT's own term on the consolidated stages), or are its only items (`protected=True`,
    the stage-0 memory's term, times `weight`, in the part `self_consistency`)."""

    name, part = "stored", "consistency"

    def __init__(self, protected_stages: frozenset[str] = frozenset(), protected: bool = False, weight: float = 1.0):
        self.protected_stages, self.protected, self.weight = protected_stages, protected, weight

    @classmethod
    def self_memory(cls, stage: str, weight: float) -> StoredTeacher:
        """The stage-0 memory's teacher: the untrained model's outputs, its own part and weight."""
        teacher = cls(frozenset({stage}), protected=True, weight=weight)
        teacher.name, teacher.part = "stored_self", "self_consistency"
        return teacher

    def penalty(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor | None:
        mine = [i for i, item in enumerate(batch.ltm_items)
                if (item.stage in self.protected_stages) == self.protected]  # fmt: skip
        if not mine:
            return None
        device = batch.logits.device
        ids = torch.cat([batch.ltm_items[i].teacher_ids for i in mine]).to(device)
        logprobs = torch.cat([batch.ltm_items[i].teacher_logprobs for i in mine]).to(device)
        student = batch.item_logits(mine)
        if ids.shape[0] != student.shape[0]:
            raise TrainingError("stored LTM teacher outputs do not match the replayed tokens")
        kl = consistency_kl(student, ids, logprobs)
        return kl if self.weight == 1.0 else self.weight * kl


class EMATeacher(Regularizer):
    """KL(EMA model || model) on the replayed LTM items' target tokens, the teacher's top-k tokens plus a rest
    bucket like the stored outputs."""

    name, part = "ema", "consistency"

    def __init__(self, model: torch.nn.Module, decay: float, top_k: int):
        self.decay, self.top_k = decay, top_k
        self.shadow = {n: p.detach().clone() for n, p in _trainable(model).items()}

    def penalty(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor | None:
        if not batch.ltm_items:
            return None
        inputs = {k: v.to(batch.logits.device) for k, v in batch.ltm_inputs.items()}
        with self.weights_in(model), torch.no_grad():
            ids, logprobs = top_k_outputs(target_logits(_unwrapped(model), inputs)[0], self.top_k)
        return _consistency(batch, ids, logprobs)

    @torch.no_grad()
    def on_step(self, model: torch.nn.Module) -> None:
        for n, p in _trainable(model).items():
            self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextmanager
    def weights_in(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the model with the averaged weights, in eval mode (no dropout in a teacher). The averages stand
        in for the parameters as module attributes for the while; nothing is copied into a parameter, so
        the student's pending backward pass is unaffected."""
        inner, was_training = _unwrapped(model), model.training
        swapped = []  # (module, attribute, the student's parameter)
        for n in _trainable(inner):
            path, _, attribute = n.rpartition(".")
            module = inner.get_submodule(path)
            swapped.append((module, attribute, getattr(module, attribute)))
            setattr(module, attribute, torch.nn.Parameter(self.shadow[n], requires_grad=False))
        model.eval()
        try:
            yield
        finally:
            for module, attribute, parameter in swapped:
                setattr(module, attribute, parameter)
            model.train(was_training)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = dict(state["shadow"])


class FrozenBaseTeacher(Regularizer):
    """weight * KL(p_base || p_model) over the target tokens of a batch, on the base's top-k tokens plus a
    rest bucket (`losses.consistency_kl`, the same divergence ICFT's consistency loss uses)."""

    name, part = "kl_base", "kl_base"

    def __init__(self, weight: float, top_k: int):
        self.weight, self.top_k = weight, top_k

    def penalty(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        with base_weights(model), torch.no_grad():
            base = target_logits(model, batch.inputs)[0]
        ids, logprobs = top_k_outputs(base, self.top_k)
        return self.weight * consistency_kl(batch.logits, ids, logprobs)


@contextmanager
def base_weights(model: torch.nn.Module) -> Iterator[None]:
    """Run a peft model as its base model (adapter off, eval mode: no dropout in a teacher). Nothing is
    copied or changed in place, so the student's pending backward pass is unaffected."""
    peft_model = _unwrapped(model)
    if not hasattr(peft_model, "disable_adapter"):
        raise ValueError("the KL-to-base anchor needs a LoRA (peft) model: set peft.method=lora")
    was_training = model.training
    model.eval()
    try:
        with peft_model.disable_adapter():
            yield
    finally:
        model.train(was_training)


class EWC(Regularizer):
    name, part = "ewc", "ewc"

    def __init__(self, weight: float):
        self.weight = weight
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: torch.nn.Module, batch: Batch | None = None) -> torch.Tensor | None:
        """The EWC term for the current parameters (the batch plays no part); None before the first stage end."""
        if not self.fisher:
            return None
        params = _trainable(model)
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]).pow(2)).sum() for n in self.fisher)
        return 0.5 * self.weight * total

    def on_stage_end(self, model: torch.nn.Module, stage: int, examples: list[Example],
                     task_loss: Callable[[list[Example]], torch.Tensor]) -> None:  # fmt: skip
        sample = random.Random(stage).sample(examples, min(FISHER_EXAMPLES, len(examples)))
        batches = (sample[i : i + FISHER_BATCH_SIZE] for i in range(0, len(sample), FISHER_BATCH_SIZE))
        self.consolidate(model, (task_loss(b) for b in batches))

    def consolidate(self, model: torch.nn.Module, batch_losses: Iterator[torch.Tensor]) -> None:
        """Add this stage's Fisher estimate (mean squared gradient over `batch_losses`) and re-anchor."""
        params = _trainable(model)
        fisher = {n: torch.zeros_like(p) for n, p in params.items()}
        count = 0
        for loss in batch_losses:
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for (n, _), g in zip(params.items(), grads):
                if g is not None:
                    fisher[n] += g.detach().pow(2)
            count += 1
        for n in fisher:
            self.fisher[n] = self.fisher.get(n, 0) + fisher[n] / max(1, count)
            self.anchor[n] = params[n].detach().clone()

    def state_dict(self) -> dict:
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_state_dict(self, state: dict) -> None:
        self.fisher, self.anchor = dict(state["fisher"]), dict(state["anchor"])
