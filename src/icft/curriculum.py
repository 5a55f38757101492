"""Curriculum: how hard each example is, which stage it belongs to, and how much of a stage to show when.

Difficulty is a weighted mean of scorers (text length, word rarity, the base model's loss), each
normalised by rank so that one outlier cannot squash the rest. Within a stage, examples are drawn from
the easiest competence(t) share, which grows to the whole stage over `pacing_steps` steps
(Platanios et al. 2019, "Competence-based Curriculum Learning for Neural Machine Translation").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import PACINGS as SCHEDULES
from .config import SCORERS, CurriculumConfig
from .data.formatting import prompt_and_target
from .data.schema import Example
from .io import atomic_path

STEP_JUMPS = 4  # the "step" schedule raises competence in this many equal jumps

_WORD = re.compile(r"\w+")


def _text(ex: Example) -> str:
    prompt, target = prompt_and_target(ex)
    return prompt + target


def _words(ex: Example) -> list[str]:
    return _WORD.findall(_text(ex).lower())


# ---------------------------------------------------------------------------------------------- scorers


def length_score(examples: list[Example]) -> np.ndarray:
    """Raw: number of words of prompt + target."""
    return np.array([len(_words(ex)) for ex in examples], dtype=np.float64)


def rarity_score(examples: list[Example]) -> np.ndarray:
    """Raw: mean inverse document frequency of an example's words, IDF over these examples."""
    docs = [_words(ex) for ex in examples]
    df = Counter(w for words in docs for w in set(words))
    n = len(docs)
    # Smoothed IDF (as scikit-learn's): a word in every example still counts a little, never divides by 0.
    idf = {w: math.log((1 + n) / (1 + c)) + 1.0 for w, c in df.items()}
    return np.array([np.mean([idf[w] for w in words]) if words else 0.0 for words in docs], dtype=np.float64)


def model_loss_score(
    examples: list[Example], model, tokenizer, max_length: int = 256, batch_size: int = 32, template: str = "plain"
) -> np.ndarray:
    """Raw: the model's mean per-token negative log-likelihood of each target given its prompt."""
    from .likelihood import ScoreSettings, answer_nll  # torch-heavy; only this scorer needs it

    pairs = [prompt_and_target(ex, tokenizer, template) for ex in examples]
    settings = ScoreSettings(max_length, batch_size, template)
    return np.array(answer_nll(model, tokenizer, pairs, settings), dtype=np.float64)


def normalise(raw: np.ndarray) -> np.ndarray:
    """Map to [0, 1] by rank, ties sharing their average rank: robust to outliers. One example -> 0.0."""
    raw = np.asarray(raw, dtype=np.float64)
    n = len(raw)
    if n <= 1:
        return np.zeros(n, dtype=np.float64)
    _, inverse, counts = np.unique(raw, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts  # 0-based rank of each distinct value's first occurrence
    avg_rank = first_rank + (counts - 1) / 2.0
    return avg_rank[inverse.reshape(-1)] / (n - 1)


def _cache_key(examples: list[Example], weights: dict[str, float], model_name: str, template: str) -> str:
    h = hashlib.sha256()
    for ex in examples:
        prompt, target = prompt_and_target(ex)
        h.update(json.dumps([ex.id, prompt, target]).encode("utf-8"))
    h.update(json.dumps(sorted((k, float(v)) for k, v in weights.items())).encode("utf-8"))
    h.update(json.dumps([model_name, template]).encode("utf-8"))
    return h.hexdigest()


@dataclass
class ModelLoss:
    """The `model_loss` scorer's model and tokenizer, and what names them in the difficulty cache's key."""

    model: Any
    tokenizer: Any
    model_name: str = ""  # the config's model.name: the cache key's stand-in for the weights
    template: str = "plain"  # the prompt template the losses are taken in


def difficulty_scores(
    examples: list[Example],
    weights: dict[str, float],
    scorer: ModelLoss | None = None,
    cache_dir: str | Path | None = None,
) -> np.ndarray:
    """Weighted mean of the rank-normalised scorers with weight > 0, in [0, 1]; cached in cache_dir. The
    `model_loss` scorer needs `scorer`; without one the key names no model and the plain template."""
    for name, w in weights.items():
        if name not in SCORERS:
            raise ValueError(f"unknown difficulty scorer '{name}' (expected one of: {', '.join(SCORERS)})")
        if w < 0:
            raise ValueError(f"difficulty scorer '{name}' has negative weight {w}")
    active = {k: float(w) for k, w in weights.items() if w > 0}
    if not active:
        raise ValueError(f"no difficulty scorer has a positive weight: {weights}")

    scorer = scorer or ModelLoss(None, None)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{_cache_key(examples, weights, scorer.model_name, scorer.template)}.npy"
        if path.exists():
            cached = np.load(path)
            if cached.shape == (len(examples),):
                return cached

    if "model_loss" in active and (scorer.model is None or scorer.tokenizer is None):
        raise ValueError("difficulty scorer 'model_loss' needs a model and a tokenizer")
    total = np.zeros(len(examples), dtype=np.float64)
    for name, w in active.items():
        if name == "length":
            raw = length_score(examples)
        elif name == "rarity":
            raw = rarity_score(examples)
        else:
            raw = model_loss_score(examples, scorer.model, scorer.tokenizer, template=scorer.template)
        total += w * normalise(raw)
    scores = total / sum(active.values())

    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, scores)  # a file handle: np.save would add ".npy" to the temporary name
    return scores


def attach_difficulty(examples: list[Example], scores) -> list[Example]:
    """Copies with .difficulty = score; a difficulty already given in the data file wins."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(examples):
        raise ValueError(f"{len(scores)} difficulty scores for {len(examples)} examples")
    return [
        ex if ex.difficulty is not None else dataclasses.replace(ex, difficulty=float(s))
        for ex, s in zip(examples, scores)
    ]


# ----------------------------------------------------------------------------------------------- stages


@dataclass
class Stage:
    name: str
    examples: list[Example]  # sorted by difficulty ascending (stable: ties keep input order)


def _by_difficulty(examples: list[Example]) -> list[Example]:
    # Unscored examples count as hardest: a curriculum should not open on data it knows nothing about.
    return sorted(examples, key=lambda ex: math.inf if ex.difficulty is None else ex.difficulty)


def stages_by_field(examples: list[Example], names: list[str]) -> list[Stage]:
    """One stage per name, in the given order, from each example's `stage` field."""
    if len(set(names)) != len(names):
        raise ValueError(f"stage names repeat: {names}")
    groups: dict[str, list[Example]] = {name: [] for name in names}
    for ex in examples:
        if ex.stage not in groups:
            raise ValueError(
                f"example '{ex.id}' has stage {ex.stage!r}, which is not among the curriculum stages {names}"
            )
        groups[ex.stage].append(ex)
    for name, group in groups.items():
        if not group:
            raise ValueError(f"curriculum stage '{name}' has no examples")
    return [Stage(name, _by_difficulty(group)) for name, group in groups.items()]


def stages_by_quantile(examples: list[Example], num_stages: int) -> list[Stage]:
    """Split by difficulty into `num_stages` stages of (nearly) equal size: stage1 is the easiest."""
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages}")
    if num_stages > len(examples):
        raise ValueError(f"cannot split {len(examples)} examples into {num_stages} stages")
    for ex in examples:
        if ex.difficulty is None:
            raise ValueError(f"example '{ex.id}' has no difficulty; score or attach difficulty first")
    ordered = _by_difficulty(examples)
    bounds = np.linspace(0, len(ordered), num_stages + 1).round().astype(int)
    return [Stage(f"stage{i + 1}", ordered[bounds[i] : bounds[i + 1]]) for i in range(num_stages)]


# ------------------------------------------------------------------------------------------------ pacing


def competence(step: int, pacing_steps: int, schedule: str, start: float) -> float:
    """Share of a stage (easiest first) available at `step`, from `start` up to 1 at `pacing_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown competence schedule '{schedule}' (expected one of: {', '.join(SCHEDULES)})"
        )
    if not 0.0 <= start <= 1.0:
        raise ValueError(f"competence start must be in [0, 1], got {start}")
    if schedule == "none" or pacing_steps <= 0:
        return 1.0
    t = min(1.0, max(0.0, step / pacing_steps))
    if schedule == "linear":
        c = start + (1 - start) * t
    elif schedule == "sqrt":
        c = math.sqrt(start**2 + (1 - start**2) * t)
    else:
        c = start + (1 - start) * math.floor(t * STEP_JUMPS) / STEP_JUMPS
    return min(1.0, max(start, c))


class CompetenceSampler:
    """Draw examples of one stage from its easiest competence(t) share."""

    def __init__(self, stage: Stage, pacing_steps: int, schedule: str, start: float, seed: int):
        if not stage.examples:
            raise ValueError(f"stage '{stage.name}' has no examples to sample")
        competence(0, pacing_steps, schedule, start)  # fail on a bad schedule now, not mid-training
        self.stage, self.pacing_steps, self.schedule, self.start = stage, pacing_steps, schedule, start
        self.rng = random.Random(seed)  # our own RNG: resumable, and untouched by anyone else's draws

    def pool_size(self, step: int) -> int:
        c = competence(step, self.pacing_steps, self.schedule, self.start)
        # The epsilon keeps float noise (0.1 * 30 = 3.0000000000000004) from adding an example.
        return min(len(self.stage.examples), max(1, math.ceil(c * len(self.stage.examples) - 1e-9)))

    def sample(self, step: int, n: int) -> list[Example]:
        """n examples, uniform over the pool at `step` (the step within this stage)."""
        pool = self.pool_size(step)
        if n <= pool:
            idx = self.rng.sample(range(pool), n)
        else:
            idx = self.rng.choices(range(pool), k=n)
        return [self.stage.examples[i] for i in idx]

    def state_dict(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}  # lists, so JSON and torch.save both keep it

    def load_state_dict(self, state: dict) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))


# ------------------------------------------------------------------------------------------- the schedule


class StageSchedule:
    """Which stage each optimizer step trains on, how much of it pacing shows, and where each stage ends.

    `stages` are the curriculum stages (the accuracy matrix has one row per stage end). With order
    "mixed" all stages are shuffled into one pool and trained together, but the stage ends still mark
    when memory is consolidated and the matrix row is taken, so every method is measured at the same
    steps. A stage ends at its step budget or earlier, when its validation loss plateaus (the steps it
    leaves go to the next stage).
    """

    def __init__(self, stages: list[Stage], budgets: list[int], config: CurriculumConfig, seed: int):
        """`budgets`: steps per stage (`stage_budgets`); from `config`, its order, pacing, start_competence and
        pacing_share."""
        if len(budgets) != len(stages):
            raise ValueError(f"{len(budgets)} step budgets for {len(stages)} stages")
        order, schedule, start = config.order, config.pacing, config.start_competence
        self.stages, self.order = stages, order
        self.ends = [int(b) for b in np.cumsum(budgets)]  # the step after which each stage is done
        if order == "mixed":
            everything = _by_difficulty([ex for s in stages for ex in s.examples])
            pools, pool_budgets, schedule = [Stage("mixed", everything)], [self.ends[-1]], "none"
        else:
            pools, pool_budgets = stages, list(budgets)
        self.pacing, self.start = schedule, start
        self.pacing_steps = [int(b * config.pacing_share) for b in pool_budgets]
        self.samplers = [CompetenceSampler(pool, n, schedule, start, seed=seed + 31 * i)
                         for i, (pool, n) in enumerate(zip(pools, self.pacing_steps))]  # fmt: skip
        self.plateau_best, self.plateau_checks = math.inf, 0

    @property
    def total_steps(self) -> int:
        return self.ends[-1]

    def stage_index(self, step: int) -> int:
        """The curriculum stage that step `step` (0-based) belongs to."""
        return next(i for i, end in enumerate(self.ends) if step < end)

    def _pool(self, step: int) -> tuple[int, int]:
        """(sampler index, the step within that sampler's pool)."""
        if self.order == "mixed":
            return 0, step
        i = self.stage_index(step)
        return i, step - (self.ends[i - 1] if i else 0)

    def competence(self, step: int) -> float:
        i, local = self._pool(step)
        return competence(local, self.pacing_steps[i], self.pacing, self.start)

    def sample(self, step: int, n: int) -> list[Example]:
        i, local = self._pool(step)
        return self.samplers[i].sample(local, n)

    def ends_stage(self, steps_done: int) -> bool:
        return steps_done in self.ends

    def record_validation_loss(self, steps_done: int, loss: float, patience: int, min_delta: float) -> bool:
        """Track the current stage's validation loss; end the stage now once it stops improving."""
        if loss < self.plateau_best - min_delta:
            self.plateau_best, self.plateau_checks = loss, 0
        else:
            self.plateau_checks += 1
        if self.plateau_checks < patience:
            return False
        self.ends[self.stage_index(steps_done - 1)] = steps_done
        return True

    def start_next_stage(self) -> None:
        self.plateau_best, self.plateau_checks = math.inf, 0

    def state_dict(self) -> dict:
        return {"ends": list(self.ends), "plateau": [self.plateau_best, self.plateau_checks],
                "samplers": [s.state_dict() for s in self.samplers]}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.ends = list(state["ends"])
        self.plateau_best, self.plateau_checks = state["plateau"]
        for sampler, s in zip(self.samplers, state["samplers"]):
            sampler.load_state_dict(s)


def stage_budgets(total: int, stages: list[Stage], shares: list[float] | None) -> list[int]:
    """Optimizer steps per stage: configured shares, or in proportion to stage sizes; they sum to total."""
    if total < len(stages):
        raise ValueError(f"train.max_steps={total} is fewer than the {len(stages)} curriculum stages")
    shares = shares or [len(s.examples) for s in stages]
    if len(shares) != len(stages):
        raise ValueError(f"curriculum.stage_steps has {len(shares)} entries for {len(stages)} stages")
    budgets = [max(1, int(total * s / sum(shares))) for s in shares]
    budgets[-1] = total - sum(budgets[:-1])
    return budgets
