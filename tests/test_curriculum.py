"""Difficulty scorers, the score cache, stages and competence-paced sampling."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from icft.curriculum import (
    SCORERS,
    CompetenceSampler,
    ModelLoss,
    Stage,
    attach_difficulty,
    competence,
    difficulty_scores,
    length_score,
    model_loss_score,
    normalise,
    rarity_score,
    stages_by_field,
    stages_by_quantile,
)
from icft.data.schema import Example


def text(id_: str, body: str, **kw) -> Example:
    return Example(id=id_, kind="text", source="test", text=body, **kw)


EASY = "Asthma is a disease."
HARD = (
    "A 34-year-old woman presents with episodic palpitations, diaphoresis and paroxysmal hypertension; "
    "urinary metanephrines are elevated and abdominal imaging shows an adrenal pheochromocytoma, "
    "so preoperative alpha-blockade with phenoxybenzamine precedes adrenalectomy."
)
CORPUS = [
    text("easy", EASY),
    text("d1", "Diabetes is a disease."),
    text("d2", "Influenza is a disease."),
    text("d3", "Gout is a disease."),
    text("hard", HARD),
]


def ladder(n: int, stage: str = "s") -> list[Example]:
    """n examples whose difficulty rises with their index."""
    return [text(f"e{i}", f"example {i}", stage=stage, difficulty=i / max(1, n - 1)) for i in range(n)]


# ------------------------------------------------------------------------------------------- competence


@pytest.mark.parametrize(
    "schedule, at_start, at_half, at_end",
    [
        ("linear", 0.2, 0.6, 1.0),  # 0.2 + 0.8 * 0.5
        ("sqrt", 0.2, math.sqrt(0.52), 1.0),  # sqrt(0.04 + 0.96 * 0.5)
        ("step", 0.2, 0.6, 1.0),  # floor(0.5 * 4) / 4 = 0.5 of the way
        ("none", 1.0, 1.0, 1.0),
    ],
)
def test_competence_values(schedule, at_start, at_half, at_end):
    assert competence(0, 100, schedule, 0.2) == pytest.approx(at_start)
    assert competence(50, 100, schedule, 0.2) == pytest.approx(at_half)
    assert competence(100, 100, schedule, 0.2) == pytest.approx(at_end)
    assert competence(500, 100, schedule, 0.2) == pytest.approx(1.0)


def test_competence_step_jumps_in_quarters():
    assert competence(24, 100, "step", 0.2) == pytest.approx(0.2)
    assert competence(25, 100, "step", 0.2) == pytest.approx(0.4)
    assert competence(74, 100, "step", 0.2) == pytest.approx(0.6)
    assert competence(99, 100, "step", 0.2) == pytest.approx(0.8)


@pytest.mark.parametrize("schedule", ["linear", "sqrt", "step", "none"])
@pytest.mark.parametrize("start", [0.0, 0.1, 0.5])
def test_competence_monotone_and_starts_at_start(schedule, start):
    values = [competence(s, 40, schedule, start) for s in range(-5, 60)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(start <= v <= 1.0 for v in values)
    if schedule != "none":
        assert values[0] == pytest.approx(start)


def test_competence_edge_cases():
    assert competence(0, 0, "linear", 0.1) == 1.0
    assert competence(0, -3, "sqrt", 0.1) == 1.0
    with pytest.raises(ValueError, match="cubic"):
        competence(0, 10, "cubic", 0.1)


# ---------------------------------------------------------------------------------------------- sampler


def test_sampler_draws_from_easiest_share_then_whole_stage():
    stage = Stage("s", ladder(20))
    sampler = CompetenceSampler(stage, pacing_steps=100, schedule="linear", start=0.25, seed=0)
    first = {ex.id for _ in range(50) for ex in sampler.sample(0, 4)}
    assert first == {f"e{i}" for i in range(5)}  # ceil(0.25 * 20) = 5, and 200 draws reach all of them
    late = sampler.sample(100, 20)
    assert sorted(ex.id for ex in late) == sorted(ex.id for ex in stage.examples)  # no replacement


def test_sampler_replaces_only_when_pool_is_too_small():
    sampler = CompetenceSampler(Stage("s", ladder(10)), 100, "linear", 0.3, seed=1)
    draw = sampler.sample(0, 3)
    assert len({ex.id for ex in draw}) == 3
    draw = sampler.sample(0, 8)
    assert len(draw) == 8 and {ex.id for ex in draw} <= {"e0", "e1", "e2"}


def test_mixed_baseline_is_one_stage_without_pacing():
    examples = ladder(12, stage="basic")[:6] + ladder(12, stage="advanced")[6:]
    sampler = CompetenceSampler(Stage("mixed", examples), 100, "none", 0.1, seed=0)
    assert len({ex.id for ex in sampler.sample(0, 12)}) == 12


def test_sampler_is_deterministic_and_leaves_global_rng_alone():
    stage = Stage("s", ladder(30))
    random.seed(123)
    before = random.getstate()
    a = CompetenceSampler(stage, 50, "sqrt", 0.2, seed=7)
    b = CompetenceSampler(stage, 50, "sqrt", 0.2, seed=7)
    c = CompetenceSampler(stage, 50, "sqrt", 0.2, seed=8)
    draws_a = [ex.id for s in range(10) for ex in a.sample(s, 5)]
    assert draws_a == [ex.id for s in range(10) for ex in b.sample(s, 5)]
    assert draws_a != [ex.id for s in range(10) for ex in c.sample(s, 5)]
    assert random.getstate() == before


def test_sampler_state_dict_round_trip():
    stage = Stage("s", ladder(30))
    sampler = CompetenceSampler(stage, 50, "linear", 0.2, seed=3)
    sampler.sample(10, 5)
    state = json.loads(json.dumps(sampler.state_dict()))  # survives a JSON checkpoint too
    expected = [ex.id for ex in sampler.sample(20, 5)]
    resumed = CompetenceSampler(stage, 50, "linear", 0.2, seed=999)
    resumed.load_state_dict(state)
    assert [ex.id for ex in resumed.sample(20, 5)] == expected


def test_sampler_rejects_empty_stage_and_bad_schedule():
    with pytest.raises(ValueError, match="no examples"):
        CompetenceSampler(Stage("empty", []), 10, "linear", 0.1, seed=0)
    with pytest.raises(ValueError, match="cubic"):
        CompetenceSampler(Stage("s", ladder(3)), 10, "cubic", 0.1, seed=0)


# ---------------------------------------------------------------------------------------------- scorers


def test_length_and_rarity_rank_the_vignette_harder():
    length, rarity = length_score(CORPUS), rarity_score(CORPUS)
    assert length[0] == 4  # "Asthma is a disease."
    assert length[-1] > 20
    assert rarity[-1] > rarity[0]
    assert rarity.argmax() == len(CORPUS) - 1
    assert np.all(np.isfinite(rarity))


def test_rarity_counts_shared_words_as_common():
    examples = [text("a", "fever cough"), text("b", "fever rash"), text("c", "fever cough")]
    rarity = rarity_score(examples)
    assert rarity[1] > rarity[0] == pytest.approx(rarity[2])


def test_scorers_use_the_preference_chosen_answer():
    short = Example(
        id="p", kind="preference", source="t", prompt="Why?", chosen="Because.", rejected="x " * 50
    )
    assert length_score([short])[0] == 4  # "Question: Why?\nAnswer: Because.", never the rejected one


def test_normalise_ranks_with_ties_and_outliers():
    assert normalise(np.array([10.0, 20.0, 20.0, 30.0])).tolist() == [0.0, 0.5, 0.5, 1.0]
    assert normalise(np.array([1.0, 2.0, 1e9])).tolist() == [0.0, 0.5, 1.0]
    assert normalise(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert normalise(np.array([5.0, 5.0, 5.0])).tolist() == [0.5, 0.5, 0.5]
    assert normalise(np.array([7.0])).tolist() == [0.0]
    assert normalise(np.array([])).shape == (0,)


# ---------------------------------------------------------------------------------------- model loss


class ExplodingModel:
    def __getattr__(self, name):
        raise AssertionError(f"the model was used ({name}) despite a cache hit")

    def __call__(self, *args, **kwargs):
        raise AssertionError("the model was called despite a cache hit")


def qa_examples() -> list[Example]:
    return CORPUS + [
        Example(id="q", kind="qa", source="t", question="First-line?", options=["SABA", "ACE"], answer=0),
        Example(id="o", kind="qa", source="t", question="Name a beta blocker.", answer="Metoprolol"),
    ]  # fmt: skip


def test_model_loss_is_mean_token_nll(tiny_llama):
    model, tokenizer = tiny_llama
    examples = qa_examples()
    nll = model_loss_score(examples, model, tokenizer, max_length=64, batch_size=3)
    assert nll.shape == (len(examples),)
    assert np.all(np.isfinite(nll))
    # A near-uniform random model: per-token NLL is about log(vocab), whatever the target's length.
    assert np.allclose(nll, math.log(len(tokenizer)), atol=1.0)


def test_difficulty_scores_cache_hit_skips_the_model(tiny_llama, tmp_path):
    model, tokenizer = tiny_llama
    examples = qa_examples()
    weights = {"length": 1.0, "rarity": 0.5, "model_loss": 2.0}
    first = difficulty_scores(examples, weights, ModelLoss(model, tokenizer, "tiny"), cache_dir=tmp_path)
    assert first.shape == (len(examples),) and first.min() >= 0.0 and first.max() <= 1.0
    assert [p.suffix for p in tmp_path.iterdir()] == [".npy"]  # no temporary file left behind
    exploding = ModelLoss(ExplodingModel(), ExplodingModel(), "tiny")
    again = difficulty_scores(examples, weights, exploding, cache_dir=tmp_path)
    np.testing.assert_array_equal(first, again)
    # Other text, weights or model name: a different key, so the model is needed again.
    other_model = ModelLoss(ExplodingModel(), ExplodingModel(), "other")
    for changed_examples, changed_weights, scorer in (
        (examples[:-1] + [text("o", "changed")], weights, exploding),
        (examples, {**weights, "rarity": 1.0}, exploding),
        (examples, weights, other_model),
    ):
        with pytest.raises(AssertionError, match="cache hit"):
            difficulty_scores(changed_examples, changed_weights, scorer, cache_dir=tmp_path)


def test_difficulty_scores_weighted_mean_of_normalised_scores():
    only_length = difficulty_scores(CORPUS, {"length": 1.0, "model_loss": 0.0})
    np.testing.assert_allclose(only_length, normalise(length_score(CORPUS)))
    mixed = difficulty_scores(CORPUS, {"length": 3.0, "rarity": 1.0})
    expected = (3 * normalise(length_score(CORPUS)) + normalise(rarity_score(CORPUS))) / 4
    np.testing.assert_allclose(mixed, expected)
    assert mixed.argmax() == len(CORPUS) - 1


def test_difficulty_scores_errors():
    with pytest.raises(ValueError, match="perplexity"):
        difficulty_scores(CORPUS, {"length": 1.0, "perplexity": 1.0})
    with pytest.raises(ValueError, match="model_loss"):
        difficulty_scores(CORPUS, {"model_loss": 1.0})
    with pytest.raises(ValueError, match="positive"):
        difficulty_scores(CORPUS, {"length": 0.0})
    assert set(SCORERS) == {"length", "rarity", "model_loss"}


# ------------------------------------------------------------------------------------------------ stages


def test_attach_difficulty_copies_and_keeps_given_values():
    examples = [text("a", "x"), text("b", "y", difficulty=0.9)]
    out = attach_difficulty(examples, np.array([0.3, 0.1]))
    assert [ex.difficulty for ex in out] == [0.3, 0.9]
    assert examples[0].difficulty is None  # the input is not changed
    with pytest.raises(ValueError):
        attach_difficulty(examples, [0.1])


def test_stages_by_field_orders_stages_and_sorts_by_difficulty():
    examples = [
        text("a1", "x", stage="advanced", difficulty=0.9),
        text("b1", "x", stage="basic", difficulty=0.5),
        text("b2", "x", stage="basic", difficulty=0.1),
        text("b3", "x", stage="basic", difficulty=0.5),
        text("a2", "x", stage="advanced", difficulty=0.2),
    ]
    stages = stages_by_field(examples, ["basic", "advanced"])
    assert [s.name for s in stages] == ["basic", "advanced"]
    assert [ex.id for ex in stages[0].examples] == ["b2", "b1", "b3"]  # the tie keeps input order
    assert [ex.id for ex in stages[1].examples] == ["a2", "a1"]


def test_stages_by_field_errors():
    examples = [text("b1", "x", stage="basic"), text("x1", "x", stage="expert")]
    with pytest.raises(ValueError) as err:
        stages_by_field(examples, ["basic"])
    assert "expert" in str(err.value) and "x1" in str(err.value)
    with pytest.raises(ValueError, match="None"):
        stages_by_field([text("n1", "x")], ["basic"])
    with pytest.raises(ValueError, match="advanced"):
        stages_by_field(examples[:1], ["basic", "advanced"])


def test_stages_by_quantile_equal_sizes_easiest_first():
    rng = random.Random(0)
    examples = ladder(10)
    rng.shuffle(examples)
    stages = stages_by_quantile(examples, 3)
    assert [s.name for s in stages] == ["stage1", "stage2", "stage3"]
    sizes = [len(s.examples) for s in stages]
    assert sum(sizes) == 10 and max(sizes) - min(sizes) <= 1
    for s in stages:
        diffs = [ex.difficulty for ex in s.examples]
        assert diffs == sorted(diffs)
    for easier, harder in zip(stages, stages[1:]):
        assert easier.examples[-1].difficulty <= harder.examples[0].difficulty


def test_stages_by_quantile_errors():
    with pytest.raises(ValueError, match="x1"):
        stages_by_quantile([text("x1", "no difficulty")], 1)
    with pytest.raises(ValueError):
        stages_by_quantile(ladder(2), 3)
    with pytest.raises(ValueError):
        stages_by_quantile(ladder(2), 0)
