"""The short-term memory: the current stage's examples with their latest losses; hard ones are replayed."""

from __future__ import annotations

import math
import random

from ..data.schema import Example
from .items import MemoryItem, item_from_state, item_to_state


def _weighted_order(weights: list[float], n: int, rng: random.Random) -> list[int]:
    """n distinct indices drawn with probability proportional to weight, one after another.

    Efraimidis-Spirakis keys (u ** (1 / w), compared as logs) give that draw in one sort. Zero weights
    come last, in random order, so they are picked only once every positive weight is taken.
    """
    keys = []
    for i, w in enumerate(weights):
        u = 1.0 - rng.random()  # in (0, 1]: log is finite
        keys.append(((1, math.log(u) / w) if w > 0 else (0, u), i))
    keys.sort(reverse=True)
    return [i for _, i in keys[:n]]


class ShortTermMemory:
    """Bounded buffer of the current stage's examples with their latest losses."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: dict[str, MemoryItem] = {}  # by example id, in insertion order

    def update(self, examples: list[Example], losses: list[float]) -> None:
        """Insert or refresh by example id. Over capacity, evict from the kind with the most items its
        lowest-loss (best learned) example, so that every kind stays represented for consolidation.

        Losses must be on one scale across kinds: the recipe passes each example's per-token NLL of its
        (chosen) answer.
        """
        if len(examples) != len(losses):
            raise ValueError(f"{len(examples)} examples but {len(losses)} losses")
        for ex, loss in zip(examples, losses):
            item = self._items.get(ex.id)
            if item is None:
                self._items[ex.id] = MemoryItem(example=ex, loss=float(loss), stage=ex.stage or "")
            else:
                item.example, item.loss = ex, float(loss)
        for _ in range(len(self._items) - self.capacity):
            by_kind: dict[str, list[tuple[int, MemoryItem]]] = {}
            for i, item in enumerate(self._items.values()):
                by_kind.setdefault(item.example.kind, []).append((i, item))
            # Ties between kinds go to the kind seen first (max keeps the first); an unknown (nan) loss ranks
            # lowest; then oldest.
            victims = max(by_kind.values(), key=len)
            _, victim = min(victims, key=lambda pair: (-math.inf if math.isnan(pair[1].loss) else pair[1].loss,
                                                       pair[0]))  # fmt: skip
            del self._items[victim.example.id]

    def sample_hard(self, n: int, rng: random.Random) -> list[Example]:
        """n examples drawn with probability loss / sum of losses (uniform when no loss is positive)."""
        items = list(self._items.values())
        weights = [item.loss if item.loss > 0 else 0.0 for item in items]  # nan > 0 is False
        if not any(w > 0 for w in weights):
            weights = [1.0] * len(items)
        drawn: list[Example] = []
        while items and len(drawn) < n:
            picks = _weighted_order(weights, min(n - len(drawn), len(items)), rng)
            drawn.extend(items[i].example for i in picks)
        return drawn

    def items(self) -> list[MemoryItem]:
        return list(self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def reset(self) -> None:
        self._items.clear()

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "items": [item_to_state(item) for item in self._items.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        items = [item_from_state(s) for s in state["items"]]
        self._items = {item.example.id: item for item in items}
