"""Two continual-learning baselines the comparison needs, as small add-ons to the recipe.

- `EWC`: elastic weight consolidation (Kirkpatrick et al. 2017) on the trainable parameters (the LoRA
  adapter). At each stage end the diagonal of the empirical Fisher information is estimated from squared
  gradients of the task loss on a sample of that stage, and added to the running total (online EWC,
  Schwarz et al. 2018); the penalty `weight / 2 * sum F (theta - theta_end_of_stage)^2` then resists
  moving the parameters that earlier stages relied on.
- `EMATeacher`: an exponential moving average of the trainable parameters, used as the consistency
  teacher on replayed long-term memory items instead of the outputs stored at consolidation. This is
  the I-LoRA / CLS-ER design (a slow "long-term" copy of the fast weights); ICFT's default, stored
  outputs, costs no second forward pass.
- `FrozenBaseTeacher`: the untrained model's next-token distribution on the same batch as an anchor, the
  KL-to-base baseline (Learning without Forgetting, Li & Hoiem 2017; the KL penalty of RLHF recipes). With
  LoRA the base model is the same network with its adapter switched off, so it needs no second copy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .likelihood import target_logits
from .losses import consistency_kl, top_k_outputs


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class EWC:
    def __init__(self, weight: float):
        self.weight = weight
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: torch.nn.Module) -> torch.Tensor | None:
        """The EWC term for the current parameters; None before the first stage end."""
        if not self.fisher:
            return None
        params = _trainable(model)
        total = sum((self.fisher[n] * (params[n] - self.anchor[n]).pow(2)).sum() for n in self.fisher)
        return 0.5 * self.weight * total

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


class EMATeacher:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in _trainable(model).items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for n, p in _trainable(model).items():
            self.shadow[n].mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)

    @contextmanager
    def weights_in(self, model: torch.nn.Module) -> Iterator[None]:
        """Run the model with the averaged weights (in eval mode: no dropout in a teacher)."""
        params, was_training = _trainable(model), model.training
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        model.eval()
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])
            model.train(was_training)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = dict(state["shadow"])



class FrozenBaseTeacher:
    """lambda * KL(p_base || p_model) over the target tokens of a batch, on the base's top-k tokens plus a
    rest bucket (`losses.consistency_kl`, the same divergence ICFT's consistency loss uses)."""

    def __init__(self, weight: float, top_k: int):
        self.weight, self.top_k = weight, top_k

    def penalty(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
        """`logits` are the model's own at the batch's target positions (`likelihood.target_logits`)."""
        with base_weights(model), torch.no_grad():
            base = target_logits(model, batch)[0]
        ids, logprobs = top_k_outputs(base, self.top_k)
        return self.weight * consistency_kl(logits, ids, logprobs)


@contextmanager
def base_weights(model: torch.nn.Module) -> Iterator[None]:
    """Run a peft model as its base model (adapter off, eval mode: no dropout in a teacher). Nothing is
    copied or changed in place, so the student's pending backward pass is unaffected."""
    peft_model = getattr(model, "module", model)  # under DDP the peft model is the wrapped module
    if not hasattr(peft_model, "disable_adapter"):
        raise ValueError("the KL-to-base anchor needs a LoRA (peft) model: set peft.method=lora")
    was_training = model.training
    model.eval()
    try:
        with peft_model.disable_adapter():
            yield
    finally:
        model.train(was_training)
