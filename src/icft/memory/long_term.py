"""The long-term memory: exemplars of finished stages, balanced per (stage, kind), with the model's outputs.

Saved as memory.jsonl (one exemplar a line, readable) and tensors.pt (settings, embeddings and teacher
outputs by example id).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from ..data.schema import Example
from ..io import atomic_path
from .items import MemoryItem, item_from_state, item_to_state
from .selection import SELECTIONS, _herding_order, _k_center_order, quotas

MEMORY_FILE = "memory.jsonl"
TENSORS_FILE = "tensors.pt"


def _uniform_draw(items: list, n: int, rng: random.Random) -> list:
    """n items, each at most once while n <= len(items); beyond that, whole rounds then a partial one."""
    drawn: list = []
    while items and len(drawn) < n:
        drawn.extend(rng.sample(items, min(n - len(drawn), len(items))))
    return drawn


class LongTermMemory:
    """Bounded store of exemplars from finished stages, balanced per (stage, kind)."""

    def __init__(self, capacity: int, selection: str = "herding"):
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r} (expected one of: {', '.join(SELECTIONS)})")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.selection = selection
        # (stage, kind) -> exemplars in priority order (the order selection picked them).
        self._groups: dict[tuple[str, str], list[MemoryItem]] = {}
        # Stages whose groups consolidation never shrinks nor counts against capacity: the stage-0 memory of
        # the untrained model's own answers (memory.general), which must outlast every later stage.
        self.protected: set[str] = set()

    def protect(self, stage: str, items: list[MemoryItem]) -> list[MemoryItem]:
        """Store `items` as the protected group(s) of `stage`, outside capacity; returns the stored copies."""
        self.protected.add(stage)
        stored = [dataclasses.replace(item, stage=stage) for item in items]
        for item in stored:
            self._groups.setdefault((stage, item.example.kind), []).append(item)
        return stored

    def is_protected(self, item: MemoryItem) -> bool:
        return item.stage in self.protected

    def consolidate(
        self, stage: str, items: list[MemoryItem], embeddings: np.ndarray, rng: random.Random
    ) -> list[MemoryItem]:
        """Add exemplars for `stage` chosen from `items` (rows of `embeddings`), then re-balance groups.

        Returns the newly stored items (copies: the STM's own items are left alone).
        """
        if len(items) != len(embeddings):
            raise ValueError(f"{len(items)} items but {len(embeddings)} embedding rows")
        stored = {item.example.id for item in self.items()}
        candidates: dict[tuple[str, str], list[MemoryItem]] = {}
        for item, embedding in zip(items, embeddings):
            if item.example.id in stored:
                continue  # re-consolidating a stage merges: an id is stored once
            stored.add(item.example.id)
            copy = dataclasses.replace(item, stage=stage, embedding=np.array(embedding, dtype=np.float32))
            candidates.setdefault((stage, item.example.kind), []).append(copy)

        keys = [key for key in self._groups if key[0] not in self.protected]  # protected groups are left whole
        keys += [key for key in candidates if key not in self._groups]
        sizes = [len(self._groups.get(key, [])) + len(candidates.get(key, [])) for key in keys]
        added: list[MemoryItem] = []
        for key, quota in zip(keys, quotas(sizes, self.capacity)):
            kept = self._groups.get(key, [])[:quota]  # shrinking keeps the first-selected exemplars
            new = self._select(kept, candidates.get(key, []), quota, rng)
            added.extend(new)
            if kept or new:
                self._groups[key] = kept + new
            else:
                self._groups.pop(key, None)
        return added

    def _select(
        self, kept: list[MemoryItem], candidates: list[MemoryItem], quota: int, rng: random.Random
    ) -> list[MemoryItem]:
        """Candidates to add to a group already holding `kept`, continuing its priority order."""
        wanted = quota - len(kept)
        if wanted <= 0 or not candidates:
            return []
        if self.selection == "reservoir":
            return rng.sample(candidates, min(wanted, len(candidates)))
        pool = np.stack([item.embedding for item in kept + candidates])
        order = _herding_order if self.selection == "herding" else _k_center_order
        picked = order(pool, quota, list(range(len(kept))))
        return [candidates[i - len(kept)] for i in picked[len(kept) :]]

    def set_teacher(self, example_id: str, ids: torch.Tensor, logprobs: torch.Tensor) -> None:
        """Record the model's top-k outputs on a stored exemplar, the consistency loss's target."""
        if ids.shape != logprobs.shape or ids.dim() != 2:
            raise ValueError(f"ids {tuple(ids.shape)} and logprobs {tuple(logprobs.shape)}: want equal (n, k)")
        for item in self.items():
            if item.example.id == example_id:
                item.teacher_ids = ids.detach().to("cpu", torch.int64).clone()
                item.teacher_logprobs = logprobs.detach().to("cpu", torch.float32).clone()
                return
        raise KeyError(f"example id {example_id!r} is not in long-term memory")

    def sample(self, n: int, rng: random.Random, protected: bool = False) -> list[MemoryItem]:
        """n stored items uniformly, without replacement when n <= their number: of the consolidated stages,
        or with `protected` of the protected (stage-0) groups; each kind of replay has its own share."""
        return _uniform_draw(self.items(protected), n, rng)

    def retrieve(self, query_embeddings: np.ndarray, k: int) -> list[list[MemoryItem]]:
        """Top-k stored items by cosine similarity, for each query row (a single vector is one query)."""
        queries = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
        items = [item for item in self.items() if item.embedding is not None]
        if not items or k <= 0:
            return [[] for _ in queries]
        keys = np.stack([item.embedding for item in items])
        scores = _unit_rows(queries) @ _unit_rows(keys).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties go to earlier exemplars
        return [[items[i] for i in row] for row in top]

    def items(self, protected: bool | None = None) -> list[MemoryItem]:
        """Every stored item (None), or only those of consolidated stages (False) or protected ones (True)."""
        return [item for (stage, _), group in self._groups.items() for item in group
                if protected is None or (stage in self.protected) == protected]  # fmt: skip

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def counts(self) -> dict[str, int]:
        return {f"{stage}/{kind}": len(group) for (stage, kind), group in self._groups.items()}

    def state_dict(self) -> dict:
        state = {
            "capacity": self.capacity, "selection": self.selection,
            "items": [item_to_state(item) for item in self.items()],
        }  # fmt: skip
        if self.protected:  # only then: a memory without a stage-0 group saves exactly what it always did
            state["protected"] = sorted(self.protected)
        return state

    def load_state_dict(self, state: dict) -> None:
        fresh = LongTermMemory(int(state["capacity"]), state["selection"])  # validates the settings
        self.capacity, self.selection = fresh.capacity, fresh.selection
        self.protected = set(state.get("protected", ()))
        self._set_items([item_from_state(s) for s in state["items"]])

    def _set_items(self, items: list[MemoryItem]) -> None:
        # items() lists groups one after another in priority order, so appending rebuilds them exactly.
        self._groups = {}
        for item in items:
            self._groups.setdefault((item.stage, item.example.kind), []).append(item)

    def save(self, directory: str | Path) -> None:
        """memory.jsonl (one exemplar a line, readable) and tensors.pt (settings and tensors by id)."""
        items = self.items()
        records = [
            # nan loss (never trained on) is written as null, not NaN: memory.jsonl stays strict JSON
            {"example": i.example.to_dict(), "stage": i.stage, "loss": None if math.isnan(i.loss) else i.loss}
            for i in items
        ]
        tensors = {
            "capacity": self.capacity,
            "selection": self.selection,
            "embeddings": {
                item.example.id: torch.from_numpy(np.array(item.embedding, np.float32))
                for item in items
                if item.embedding is not None
            },
            "teacher_ids": {i.example.id: i.teacher_ids for i in items if i.teacher_ids is not None},
            # Half precision on disk: 2 bytes a log-probability is plenty for a KL target and halves the file.
            # In memory and in checkpoints they stay float32, so a resumed run is exact.
            "teacher_logprobs": {i.example.id: i.teacher_logprobs.half() for i in items
                                 if i.teacher_logprobs is not None},  # fmt: skip
        }
        if self.protected:
            tensors["protected"] = sorted(self.protected)
        with atomic_path(directory, is_dir=True) as tmp:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            (tmp / MEMORY_FILE).write_text(lines, encoding="utf-8")
            torch.save(tensors, tmp / TENSORS_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> LongTermMemory:
        directory = Path(directory)
        tensors = torch.load(directory / TENSORS_FILE, weights_only=True)
        memory = cls(int(tensors["capacity"]), tensors["selection"])
        memory.protected = set(tensors.get("protected", ()))
        path = directory / MEMORY_FILE
        items = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            example = Example.from_dict(record["example"], path=str(path), line=number)
            embedding = tensors["embeddings"].get(example.id)
            loss = record.get("loss")
            items.append(MemoryItem(
                example=example,
                loss=float("nan") if loss is None else float(loss),
                embedding=None if embedding is None else embedding.numpy().astype(np.float32),
                teacher_ids=tensors["teacher_ids"].get(example.id),
                teacher_logprobs=_float(tensors["teacher_logprobs"].get(example.id)),
                stage=record.get("stage", ""),
            ))  # fmt: skip
        memory._set_items(items)
        return memory


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _float(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.float()
