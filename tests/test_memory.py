"""Tests for the dual-stage memory (icft.memory)."""

from __future__ import annotations

import io
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch

from icft.data.schema import Example
from icft.memory import (
    Embedder,
    LongTermMemory,
    MemoryItem,
    ShortTermMemory,
    example_text,
    herding,
    k_center,
)


def qa(i: int | str, stage: str = "s1") -> Example:
    return Example(
        id=f"qa-{i}", kind="qa", source="test", stage=stage, question=f"Question {i}?",
        options=["yes", "no", "maybe"], answer=0, meta={"tier": 1},
    )  # fmt: skip


def text(i: int | str, stage: str = "s1") -> Example:
    return Example(id=f"text-{i}", kind="text", source="test", stage=stage, text=f"Passage {i}.")


def items_with_embeddings(examples: list[Example], seed: int) -> tuple[list[MemoryItem], np.ndarray]:
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(len(examples), 8)).astype(np.float32)
    return [MemoryItem(example=ex, loss=float(i)) for i, ex in enumerate(examples)], embeddings


def stage_items(stage: str, n_qa: int, n_text: int, seed: int) -> tuple[list[MemoryItem], np.ndarray]:
    examples = [qa(f"{stage}-{i}", stage) for i in range(n_qa)] + [text(f"{stage}-{i}", stage) for i in range(n_text)]
    return items_with_embeddings(examples, seed)


# --- short-term memory ---------------------------------------------------------------------------------


def test_stm_capacity_and_eviction_keeps_highest_losses():
    stm = ShortTermMemory(capacity=5)
    rng = random.Random(0)
    losses = {}
    for _ in range(10):
        batch = [qa(rng.randrange(30)) for _ in range(4)]
        batch_losses = [rng.random() * 5 for _ in batch]
        stm.update(batch, batch_losses)
        for ex, loss in zip(batch, batch_losses):
            losses[ex.id] = loss  # latest loss per id
        assert len(stm) <= 5
    assert len(stm) == 5
    kept = {item.example.id for item in stm.items()}
    assert len(kept) == len(stm.items())  # no duplicate ids
    # Every kept item's loss is its latest one (exact eviction choices are checked below).
    for item in stm.items():
        assert item.loss == losses[item.example.id]

    stm = ShortTermMemory(capacity=3)
    stm.update([qa(i) for i in range(6)], [0.5, 3.0, 0.1, 2.0, 4.0, 1.0])
    assert {item.example.id for item in stm.items()} == {"qa-1", "qa-3", "qa-4"}
    stm.update([qa(1)], [0.0])  # refreshing: qa-1 is now learned, but nothing is over capacity
    assert len(stm) == 3 and stm.items()[0].loss == 0.0
    stm.update([qa(7)], [1.5])
    assert {item.example.id for item in stm.items()} == {"qa-3", "qa-4", "qa-7"}
    stm.reset()
    assert len(stm) == 0 and stm.sample_hard(3, random.Random(0)) == []


def test_stm_sample_hard_prefers_high_loss():
    stm = ShortTermMemory(capacity=10)
    stm.update([qa(i) for i in range(4)], [0.1, 0.1, 0.1, 5.0])
    rng = random.Random(1)
    firsts = Counter(stm.sample_hard(1, rng)[0].id for _ in range(2000))
    # qa-3 carries 5.0 / 5.3 of the weight.
    assert firsts["qa-3"] > 1700
    assert all(firsts[f"qa-{i}"] < 150 for i in range(3))

    draw = stm.sample_hard(4, rng)
    assert sorted(ex.id for ex in draw) == [f"qa-{i}" for i in range(4)]  # without replacement
    assert len(stm.sample_hard(9, rng)) == 9  # more than stored: whole rounds, then a partial one


def test_stm_sample_hard_without_losses_is_uniform():
    stm = ShortTermMemory(capacity=10)
    stm.update([qa(i) for i in range(4)], [math.nan, 0.0, math.nan, 0.0])
    rng = random.Random(2)
    counts = Counter(stm.sample_hard(1, rng)[0].id for _ in range(4000))
    assert all(800 < counts[f"qa-{i}"] < 1200 for i in range(4))


def test_stm_state_dict_round_trip():
    stm = ShortTermMemory(capacity=4)
    stm.update([qa(0), text(1), qa(2)], [1.0, math.nan, 3.0])
    buffer = io.BytesIO()
    torch.save(stm.state_dict(), buffer)
    buffer.seek(0)
    restored = ShortTermMemory(capacity=1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.capacity == 4
    assert [i.example for i in restored.items()] == [i.example for i in stm.items()]
    assert [i.loss for i in restored.items()][::2] == [1.0, 3.0]
    assert math.isnan(restored.items()[1].loss)


# --- exemplar selection --------------------------------------------------------------------------------


def test_herding_mean_beats_random_subset():
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(200, 16)) * np.linspace(0.5, 3.0, 16)
    picked = herding(cloud, 10)
    assert len(set(picked)) == 10 and picked == herding(cloud, 10)  # distinct, deterministic
    mean = cloud.mean(axis=0)
    herding_gap = np.linalg.norm(cloud[picked].mean(axis=0) - mean)
    random_gaps = [np.linalg.norm(cloud[rng.choice(200, 10, replace=False)].mean(axis=0) - mean)
                   for _ in range(50)]  # fmt: skip
    assert herding_gap < min(random_gaps)
    assert herding(cloud, 500) == herding(cloud, 200) and len(herding(cloud, 500)) == 200
    assert herding(cloud, 0) == []


def test_k_center_covers_better_than_random():
    rng = np.random.default_rng(1)
    cloud = rng.normal(size=(200, 2))  # low dimension: coverage differences are clear

    def coverage(idx) -> float:
        d = np.linalg.norm(cloud[:, None, :] - cloud[None, idx, :], axis=2)
        return d.min(axis=1).max()

    picked = k_center(cloud, 15)
    assert len(set(picked)) == 15 and picked == k_center(cloud, 15)
    assert picked[0] == int(np.argmin(np.linalg.norm(cloud - cloud.mean(axis=0), axis=1)))
    random_cover = [coverage(rng.choice(200, 15, replace=False)) for _ in range(50)]
    assert coverage(picked) < min(random_cover)
    assert sorted(k_center(np.ones((3, 2)), 3)) == [0, 1, 2]  # duplicates are still pickable


# --- long-term memory ---------------------------------------------------------------------------------


def test_ltm_rejects_unknown_selection():
    with pytest.raises(ValueError, match="random"):
        LongTermMemory(10, selection="random")


@pytest.mark.parametrize("selection", ["herding", "kcenter", "reservoir"])
def test_ltm_capacity_and_balance(selection):
    ltm = LongTermMemory(capacity=12, selection=selection)
    rng = random.Random(0)
    ltm.consolidate("s1", *stage_items("s1", 10, 10, seed=1), rng)
    assert ltm.counts() == {"s1/qa": 6, "s1/text": 6}

    ltm.consolidate("s2", *stage_items("s2", 10, 10, seed=2), rng)
    sizes = list(ltm.counts().values())
    assert len(ltm) == 12 and len(sizes) == 4 and max(sizes) - min(sizes) <= 1

    ltm.consolidate("s3", *stage_items("s3", 10, 10, seed=3), rng)
    sizes = list(ltm.counts().values())
    assert len(ltm) == 12 and len(sizes) == 6 and max(sizes) - min(sizes) <= 1
    assert sizes == [2] * 6

    # Uneven capacity: the leftover slots go to the largest groups, sizes still within one.
    ltm = LongTermMemory(capacity=7, selection=selection)
    ltm.consolidate("s1", *stage_items("s1", 8, 5, seed=4), rng)
    assert ltm.counts() == {"s1/qa": 4, "s1/text": 3}
    ltm.consolidate("s2", *stage_items("s2", 9, 9, seed=5), rng)
    assert len(ltm) == 7 and max(ltm.counts().values()) - min(ltm.counts().values()) <= 1


def test_ltm_capacity_never_exceeded_with_small_groups():
    rng = random.Random(3)
    ltm = LongTermMemory(capacity=9)
    for s in range(6):
        stage = f"s{s}"
        n_qa, n_text = rng.randrange(0, 6), rng.randrange(0, 6)
        ltm.consolidate(stage, *stage_items(stage, n_qa, n_text, seed=s), rng)
        assert len(ltm) <= 9
        assert all(n > 0 for n in ltm.counts().values())
    # A group too small for its share leaves its slots to the others instead of wasting them.
    ltm = LongTermMemory(capacity=10)
    ltm.consolidate("s1", *stage_items("s1", 20, 1, seed=6), rng)
    assert ltm.counts() == {"s1/qa": 9, "s1/text": 1}


def test_ltm_shrinking_keeps_first_selected():
    ltm = LongTermMemory(capacity=8)
    items, embeddings = stage_items("s1", 20, 0, seed=7)
    ltm.consolidate("s1", items, embeddings, random.Random(0))
    first = [item.example.id for item in ltm.items()]
    assert first == [items[i].example.id for i in herding(embeddings, 8)]
    ltm.consolidate("s2", *stage_items("s2", 20, 0, seed=8), random.Random(0))
    assert [item.example.id for item in ltm.items()][:4] == first[:4]


def test_ltm_reconsolidation_does_not_duplicate():
    ltm = LongTermMemory(capacity=20)
    rng = random.Random(0)
    items, embeddings = stage_items("s1", 6, 0, seed=9)
    added = ltm.consolidate("s1", items[:4], embeddings[:4], rng)
    assert len(added) == 4 and all(item.stage == "s1" for item in added)
    added = ltm.consolidate("s1", items, embeddings, rng)  # the STM again, later in the stage
    assert sorted(item.example.id for item in added) == ["qa-s1-4", "qa-s1-5"]
    ids = [item.example.id for item in ltm.items()]
    assert len(ids) == len(set(ids)) == 6
    assert ltm.consolidate("s1", items, embeddings, rng) == []
    assert items[0].embedding is None  # the STM's own items are not modified


def test_ltm_set_teacher_and_sample():
    ltm = LongTermMemory(capacity=10)
    ltm.consolidate("s1", *stage_items("s1", 5, 0, seed=10), random.Random(0))
    with pytest.raises(KeyError, match="nope"):
        ltm.set_teacher("nope", torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3))
    ltm.set_teacher("qa-s1-0", torch.ones(2, 3, dtype=torch.int32), torch.zeros(2, 3, dtype=torch.float64))
    item = next(i for i in ltm.items() if i.example.id == "qa-s1-0")
    assert item.teacher_ids.dtype == torch.int64 and item.teacher_logprobs.dtype == torch.float32

    rng = random.Random(0)
    assert sorted(i.example.id for i in ltm.sample(5, rng)) == sorted(i.example.id for i in ltm.items())
    assert len(ltm.sample(3, rng)) == 3 and len(ltm.sample(12, rng)) == 12
    assert LongTermMemory(10).sample(3, rng) == []


def test_ltm_retrieve_returns_exact_match_first():
    ltm = LongTermMemory(capacity=30)
    items, embeddings = stage_items("s1", 10, 10, seed=11)
    ltm.consolidate("s1", items, embeddings, random.Random(0))
    queries = embeddings[[3, 15]] * 2.5  # cosine ignores scale
    results = ltm.retrieve(queries, k=4)
    assert [len(r) for r in results] == [4, 4]
    assert results[0][0].example.id == items[3].example.id
    assert results[1][0].example.id == items[15].example.id
    assert len(ltm.retrieve(embeddings[0], k=50)[0]) == 20
    assert LongTermMemory(5).retrieve(embeddings[:2], k=3) == [[], []]


def filled_ltm() -> LongTermMemory:
    ltm = LongTermMemory(capacity=6, selection="kcenter")
    rng = random.Random(0)
    ltm.consolidate("s1", *stage_items("s1", 4, 4, seed=12), rng)
    ltm.consolidate("s2", *stage_items("s2", 4, 0, seed=13), rng)
    gen = torch.Generator().manual_seed(0)
    for item in ltm.items()[::2]:
        n = len(item.example.id)
        ltm.set_teacher(item.example.id, torch.randint(0, 1000, (n, 5), generator=gen),
                        torch.randn(n, 5, generator=gen))  # fmt: skip
    ltm.items()[1].loss = math.nan
    return ltm


def assert_same_memory(a: LongTermMemory, b: LongTermMemory, saved: bool = False) -> None:
    """`saved`: b was read from disk, where teacher log-probabilities are kept in half precision."""
    assert (a.capacity, a.selection, a.counts()) == (b.capacity, b.selection, b.counts())
    for x, y in zip(a.items(), b.items(), strict=True):
        assert x.example == y.example and x.stage == y.stage
        assert x.loss == y.loss or (math.isnan(x.loss) and math.isnan(y.loss))
        assert y.embedding.dtype == np.float32 and np.array_equal(x.embedding, y.embedding)
        for name in ("teacher_ids", "teacher_logprobs"):
            tx, ty = getattr(x, name), getattr(y, name)
            if tx is None or ty is None:
                assert tx is None and ty is None
            elif saved and name == "teacher_logprobs":
                assert ty.dtype == torch.float32 and torch.allclose(tx, ty, rtol=1e-3, atol=1e-3)
            else:
                assert tx.dtype == ty.dtype and torch.equal(tx, ty)


def test_ltm_save_load_round_trip(tmp_path):
    ltm = filled_ltm()
    ltm.save(tmp_path / "ltm")
    ltm.save(tmp_path / "ltm")  # overwriting an existing save works
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ltm"]
    assert sorted(p.name for p in (tmp_path / "ltm").iterdir()) == ["memory.jsonl", "tensors.pt"]
    assert len((tmp_path / "ltm" / "memory.jsonl").read_text().splitlines()) == len(ltm)
    assert_same_memory(ltm, LongTermMemory.load(tmp_path / "ltm"), saved=True)
    tensors = torch.load(tmp_path / "ltm" / "tensors.pt")
    assert all(t.dtype == torch.float16 for t in tensors["teacher_logprobs"].values())


def test_ltm_state_dict_round_trip():
    ltm = filled_ltm()
    buffer = io.BytesIO()
    torch.save(ltm.state_dict(), buffer)
    buffer.seek(0)
    restored = LongTermMemory(1)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert_same_memory(ltm, restored)


# --- embeddings -----------------------------------------------------------------------------------------


def test_example_text_is_the_input_side():
    assert example_text(qa(1)) == "Question 1?"
    assert example_text(text(1)) == "Passage 1."
    pref = Example(id="p", kind="preference", source="t", prompt="Why?", chosen="A", rejected="B")
    assert example_text(pref) == "Why?"
    turns = [{"role": "user", "content": "I have a cough."}, {"role": "assistant", "content": "Since when?"},
             {"role": "user", "content": "A week."}, {"role": "assistant", "content": "See a GP."}]  # fmt: skip
    assert example_text(Example(id="d", kind="dialogue", source="t", turns=turns)) == "I have a cough.\nA week."


def test_embedder_real_model():
    vectors = Embedder().encode([
        "What is the first-line treatment for type 2 diabetes?",
        "Which drug is usually started first for type 2 diabetes mellitus?",
        "The football match was postponed because of heavy rain.",
    ])  # fmt: skip
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert Embedder().encode([]).shape == (0, 384)


def preference(i: int | str, stage: str = "s1") -> Example:
    return Example(id=f"pref-{i}", kind="preference", source="test", stage=stage, prompt=f"Treat {i}?",
                   chosen="Test first.", rejected="Ignore it.")  # fmt: skip


def test_stm_eviction_keeps_every_kind_even_when_one_kind_has_lower_losses():
    """Preference pairs with low losses must not all be evicted: eviction is balanced across kinds."""
    stm = ShortTermMemory(capacity=6)
    stm.update([qa(i) for i in range(6)], [5.0 + i for i in range(6)])
    stm.update([preference(i) for i in range(6)], [0.1 * i for i in range(6)])
    kinds = Counter(item.example.kind for item in stm.items())
    assert kinds == {"qa": 3, "preference": 3}
    # Within a kind the best-learned (lowest loss) go first.
    assert {item.example.id for item in stm.items() if item.example.kind == "qa"} == {"qa-3", "qa-4", "qa-5"}
    assert {item.example.id for item in stm.items() if item.example.kind == "preference"} == {
        "pref-3", "pref-4", "pref-5"}


@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
def test_replayed_fraction_matches_the_share_at_any_batch_size(batch_size):
    from icft.memory import ReplaySchedule

    schedule = ReplaySchedule(batch_size, ltm_share=0.25, stm_share=0.125)
    ltm = stm = 0
    for _ in range(200):
        n_ltm, n_stm = schedule.counts(True, True)
        assert 0 <= n_ltm + n_stm <= batch_size
        ltm, stm = ltm + n_ltm, stm + n_stm
    slots = 200 * batch_size
    assert abs(ltm / slots - 0.25) <= 0.02 and abs(stm / slots - 0.125) <= 0.02
    assert ltm > 0 and stm > 0  # round(1 * 0.25) == 0 replayed nothing at all


def test_replay_schedule_saves_nothing_up_for_an_empty_memory_and_resumes_exactly():
    from icft.memory import ReplaySchedule

    schedule = ReplaySchedule(2, 0.25, 0.125)
    for _ in range(50):
        assert schedule.counts(False, False) == (0, 0)
    assert schedule.carry == {"ltm": 0.0, "stm": 0.0}
    for _ in range(7):
        schedule.counts(True, True)
    copy = ReplaySchedule(2, 0.25, 0.125)
    copy.load_state_dict(schedule.state_dict())
    assert [schedule.counts(True, True) for _ in range(20)] == [copy.counts(True, True) for _ in range(20)]
