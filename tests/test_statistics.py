"""Paired bootstrap intervals on synthetic scores whose true difference is known."""

from __future__ import annotations

import numpy as np
import pytest

from icft.evaluation.statistics import compare_to, paired_items, paired_runs


def _scores(values: np.ndarray, ids: list[str]) -> dict[int, dict[str, float]]:
    return {seed: dict(zip(ids, map(float, row))) for seed, row in enumerate(values)}


IDS = [f"q{i}" for i in range(200)]


def test_identical_methods_give_an_interval_around_zero():
    hits = np.random.default_rng(1).integers(0, 2, size=(3, len(IDS)))
    d = paired_items(_scores(hits, IDS), _scores(hits, IDS))
    assert d.mean == 0 and d.low <= 0 <= d.high and not d.significant
    assert (d.n_seeds, d.n_items) == (3, 200)


def test_same_skill_different_answers_is_not_significant():
    rng = np.random.default_rng(2)
    a, b = rng.random((3, len(IDS))) < 0.6, rng.random((3, len(IDS))) < 0.6  # both 60% right, independently
    d = paired_items(_scores(a, IDS), _scores(b, IDS))
    assert d.low < 0 < d.high and not d.significant and d.high - d.low > 0.05


def test_a_method_ahead_on_every_item_is_significant():
    base = np.random.default_rng(3).random((3, len(IDS))) * 0.5
    d = paired_items(_scores(base + 0.2, IDS), _scores(base, IDS))
    assert d.mean == pytest.approx(0.2) and d.low == pytest.approx(0.2) and d.high == pytest.approx(0.2)
    assert d.significant


def test_noisy_gain_interval_covers_the_true_gain():
    rng = np.random.default_rng(4)
    theirs = rng.random((3, 400)) < 0.4
    ours = theirs | (rng.random((3, 400)) < 0.25)  # flips a quarter of the misses: +0.15 on average
    ids = [f"q{i}" for i in range(400)]
    d = paired_items(_scores(ours, ids), _scores(theirs, ids))
    assert d.low < 0.15 < d.high and d.low > 0.05 and d.significant


def test_seeds_are_resampled_not_only_items():
    # every item gains +1 with seed 0 and loses 1 with seed 1: items alone look constant, seeds do not agree
    base = np.zeros((2, len(IDS)))
    ours = base + np.array([[1.0], [-1.0]])
    d = paired_items(_scores(ours, IDS), _scores(base, IDS))
    assert d.mean == 0 and d.low == pytest.approx(-1) and d.high == pytest.approx(1) and not d.significant


def test_items_pair_by_id_and_only_shared_items_count():
    ours = {0: {"a": 1.0, "b": 0.0, "c": 1.0}}
    theirs = {0: {"c": 1.0, "b": 0.0, "a": 1.0, "extra": 0.0}}  # another order, one item only they have
    d = paired_items(ours, theirs)
    assert d.mean == 0 and d.n_items == 3
    assert paired_items({0: {"a": 1.0}}, {1: {"a": 1.0}}) is None  # no seed in common


def test_run_level_metrics_get_a_paired_t_interval_over_seeds():
    d = paired_runs({0: 0.10, 1: 0.12, 2: 0.11}, {0: 0.30, 1: 0.31, 2: 0.29})  # differences -0.20, -0.19, -0.18
    half = 4.302653 * 0.01 / np.sqrt(3)  # t(0.975, 2 df) x sd / sqrt(n)
    assert d.mean == pytest.approx(-0.19) and (d.low, d.high) == pytest.approx((-0.19 - half, -0.19 + half))
    assert d.significant and d.n_items == 0
    # Three seeds that all favour one side are not enough when they disagree this much: the bootstrap gave
    # about [min, max] = [+0.01, +0.09] here and called it significant; the t interval does not.
    spread = paired_runs({0: 0.11, 1: 0.15, 2: 0.19}, {0: 0.1, 1: 0.1, 2: 0.1})
    assert spread.low < 0 < spread.high and not spread.significant
    assert paired_runs({0: 0.1}, {0: 0.3}) is None  # one difference has no spread: no interval


def test_compare_to_reports_every_method_and_metric():
    rng = np.random.default_rng(5)
    hits = (rng.random((2, len(IDS))) < 0.5).astype(float)

    def run(shift: float, seed: int) -> dict:
        return {"retention": {"accuracy": dict(zip(IDS, hits[seed] + shift))},
                "unseen": {"rougeL": {"x": 0.5}, "answer_nll": {"x": 2.0 - shift}}}  # fmt: skip

    items = {"icft": {0: run(0.2, 0), 1: run(0.2, 1)}, "lora": {0: run(0.0, 0), 1: run(0.0, 1)}}
    runs = {"icft": {0: {"forgetting": 0.0}, 1: {"forgetting": 0.1}},
            "lora": {0: {"forgetting": 0.2}, 1: {"forgetting": 0.2, "average_accuracy": None}}}  # fmt: skip
    out = compare_to("icft", items, runs)
    # every metric that is a mean over items (the registry's paired ones) is paired where items.json has it
    assert set(out) == {"lora"}
    assert set(out["lora"]) == {"retention/accuracy", "unseen/rougeL", "unseen/answer_nll", "forgetting"}
    assert out["lora"]["unseen/answer_nll"]["mean"] == pytest.approx(-0.2)
    assert out["lora"]["retention/accuracy"]["significant"] and out["lora"]["retention/accuracy"]["mean"] > 0.19
    assert out["lora"]["unseen/rougeL"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n_seeds": 2, "n_items": 1,
                                            "significant": False}  # fmt: skip
    assert out["lora"]["forgetting"]["mean"] == pytest.approx(-0.15)
