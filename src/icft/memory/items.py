"""A memory item (an example with its loss, embedding and stored teacher outputs) and its saved form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..data.schema import Example


@dataclass(eq=False)  # identity equality: field-wise == on arrays and tensors is ambiguous
class MemoryItem:
    example: Example
    loss: float = float("nan")  # latest training loss seen (STM)
    embedding: np.ndarray | None = None  # (384,) for retrieval (LTM)
    teacher_ids: torch.Tensor | None = None  # (n_target_tokens, k) int64: top-k token ids at consolidation
    teacher_logprobs: torch.Tensor | None = None  # (n_target_tokens, k) float32: their log-probabilities
    stage: str = ""


def item_to_state(item: MemoryItem) -> dict[str, Any]:
    embedding = None if item.embedding is None else torch.from_numpy(np.array(item.embedding, np.float32))
    return {
        "example": item.example.to_dict(), "loss": float(item.loss), "stage": item.stage,
        "embedding": embedding, "teacher_ids": item.teacher_ids, "teacher_logprobs": item.teacher_logprobs,
    }  # fmt: skip


def item_from_state(state: dict[str, Any]) -> MemoryItem:
    embedding = state.get("embedding")
    return MemoryItem(
        example=Example.from_dict(state["example"]),
        loss=float(state.get("loss", float("nan"))),
        embedding=None if embedding is None else embedding.numpy().astype(np.float32),
        teacher_ids=state.get("teacher_ids"),
        teacher_logprobs=state.get("teacher_logprobs"),
        stage=state.get("stage", ""),
    )
