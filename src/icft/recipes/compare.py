"""Compare ICFT with baselines: same data, step budget and seeds; mean and std over seeds, paired statistics.

Methods (each a set of config overrides on the same base config, so the comparison is a config diff):
- base:                the untrained model
- full-ft:             all data mixed, every weight trained
- lora-mixed:          all stages shuffled together, LoRA
- lora-sequential:     stages in order, no pacing, no memory
- lora-curriculum:     stages in order with competence pacing, no memory
- lora-memory:         stages in order without pacing, with STM/LTM replay and the consistency loss
- lora-ewc:            stages in order, no pacing, no memory; an EWC penalty keeps the adapter near earlier stages
- lora-ilora:          stages in order, no pacing; LTM replay with an EMA teacher for the consistency loss, no STM
                       (I-LoRA-style)
- lora-kl-base:        stages in order, no pacing, no memory; the task loss plus loss.kl_base x KL from the frozen
                       base model's next-token distribution on the same batch (the LwF / self-distillation anchor)
- lora-mixed-memory:   all stages shuffled together, with the memory: is it the order or the memory that helps?
- icft:                pacing and memory: the full method
- icft-no-consistency: icft without the consistency loss (replay only)
- icft-no-stm:         icft without short-term replay
- icft-no-ltm:         icft without long-term replay
- icft-no-pacing:      icft without pacing (the same config as lora-memory, so the two share their runs)
- icft-paper:          today's ICFT by name (the same config as icft: one run for both)
- icft-self:           icft plus the stage-0 memory of the untrained model's own answers to memory.general
                       (its own teacher and weight, from step 0) and WiSE-FT merging at an alpha chosen on
                       validation (train.merge_alpha: auto); needs memory.general in the base config
- icft-no-self-memory: icft-self without the stage-0 memory (merging only)
- icft-no-merge:       icft-self without merging (the stage-0 memory only)

The ablations (icft-no-*) may run fewer seeds than the rest (compare.ablation_seeds).

A comparison is a grid of runs. Each run is a Point (method, seed, resolved config) and lives in the folder
<output>/runs/<method>-s<seed>-<hash>, where <hash> is a short hash of the config it trains (run_hash): two
methods that resolve to the same config are one run, and a changed config is a new folder, never a mix. A
folder is trained when it has no finished summary, resumed when it has a checkpoint, kept otherwise; a tested
run also gets items.json (every test item's score, so statistics can pair items across methods and seeds) and
result.json, written last.

Evaluation sets (compare.test; compare.validation for the `trade` criterion) are files, each an EvalSet:
its label, how many new tokens an open answer gets (0: likelihoods only), whether its answer NLL pools into
the content composite, and whether it is an own-voice set: its prompts' references are the untrained model's
greedy answers (computed once, cached in <output>/own_voice/), scored by answer NLL, so a rise is forgetting.

Tries (compare.tries; compare.lr_scales is the shorthand "every trained method at these rate scales"): more
points of the grid. At the first seed, each try of a method (its defaults, and each tag's config keys, with
"lr_scale" times its rate) is trained and read on validation only (folders <method>-s<seed>-<tag>-<hash>); the
named compare.criterion picks one (tuning.json), which every seed of the method then runs; the seed-0 run is
the try's own folder (same config). Nothing here is tuned on test data.

WiSE-FT points (compare.wise_alphas): each tested LoRA run's final adapter scaled by alpha (no training),
scored on the test sets (compare.wise_sets) into <run>/wise/a<alpha>/, reported and paired as the method
"<method> a=<alpha>".

The report (results.json, tuning.json, report.md, plots) is built from the folders alone (report): run
`icft compare` again on the same output folder and it retrains nothing that is finished.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from ..config import EvalSet, RunConfig, check, save_config
from ..data.schema import Example
from ..data.sources import load_data
from ..errors import ConfigError
from ..evaluation.baselines import trivial_baselines
from ..evaluation.report import (
    below_baselines,
    composites,
    difference_table,
    in_plain_words,
    mean_matrix,
    mean_std,
    plots,
    report_markdown,
    results_table,
    trade_figures,
)
from ..evaluation.statistics import CONFIDENCE, N_RESAMPLES, compare_to
from ..io import write_json, write_jsonl, write_text
from ..runs import config_hash

METHOD_OVERRIDES: dict[str, dict[str, object]] = {
    "base": {},
    "full-ft": {"peft.method": "full", "curriculum.order": "mixed", "memory.enabled": False},
    "lora-mixed": {"curriculum.order": "mixed", "memory.enabled": False},
    "lora-sequential": {"curriculum.pacing": "none", "memory.enabled": False},
    "lora-curriculum": {"memory.enabled": False},
    "lora-memory": {"curriculum.pacing": "none", "memory.enabled": True},
    "lora-ewc": {"curriculum.pacing": "none", "memory.enabled": False, "loss.ewc": 100.0},
    "lora-ilora": {"curriculum.pacing": "none", "memory.enabled": True, "memory.teacher": "ema",
                   "memory.stm_replay": 0.0},  # fmt: skip
    "lora-kl-base": {"curriculum.pacing": "none", "memory.enabled": False, "loss.kl_base": 1.0},
    "lora-mixed-memory": {"curriculum.order": "mixed", "memory.enabled": True},
    "icft": {"memory.enabled": True},
    "icft-no-consistency": {"memory.enabled": True, "loss.consistency": 0.0},
    "icft-no-stm": {"memory.enabled": True, "memory.stm_replay": 0.0},
    "icft-no-ltm": {"memory.enabled": True, "memory.ltm_replay": 0.0},
    "icft-no-pacing": {"curriculum.pacing": "none", "memory.enabled": True},  # = lora-memory: one run for both
    # Issue 36. icft-paper: today's ICFT by name (the same config as icft, so one run for both). icft-self: a
    # stage-0 memory of the untrained model's own answers to memory.general (from the base config), replayed
    # from step 0 with its own teacher (the untrained model), then WiSE-FT merging at an alpha chosen on
    # validation; its ablations leave out one of the two.
    "icft-paper": {"memory.enabled": True, "memory.general": [], "train.merge_alpha": None},
    "icft-self": {"memory.enabled": True, "memory.general_size": 64, "memory.general_replay": 0.5,
                  "train.merge_alpha": "auto"},  # fmt: skip
    "icft-no-self-memory": {"memory.enabled": True, "memory.general_size": 0, "train.merge_alpha": "auto"},
    "icft-no-merge": {"memory.enabled": True, "memory.general_size": 64, "memory.general_replay": 0.5,
                      "train.merge_alpha": None},  # fmt: skip
}
REFERENCE = "icft"  # the method the paired differences are taken from
RUNS = "runs"  # <output>/runs/<method>-s<seed>-<hash>: one folder per distinct run config
OWN_VOICE = "own_voice"  # <output>/own_voice/<label>-<hash>.jsonl: the untrained model's answers, once
# Metrics of generated answers: a set scored without answers (EvalSet.answers 0) reports none of them.
GENERATED = ("rougeL", "rouge1", "rouge2", "bleu", "distinct1", "distinct2", "embedding_similarity", "mean_length")


def method_config(config: RunConfig, method: str, seed: int, lr: float | None = None,
                  overrides: dict[str, object] | None = None) -> RunConfig:  # fmt: skip
    """The config of one method/seed run; `lr` replaces the method's own learning rate (default_lr), and
    `overrides` (a try: config keys, and "lr_scale" times the rate) go on top of the method's own."""
    if method not in METHOD_OVERRIDES:
        known = ", ".join(METHOD_OVERRIDES)
        raise ConfigError(f"config key 'compare.methods': unknown method '{method}' (known: {known})")
    out = copy.deepcopy(config)
    extra = dict(overrides or {})
    scale = extra.pop("lr_scale", 1.0)
    for who, keys in ((f"method '{method}'", METHOD_OVERRIDES[method]), (f"a try of '{method}'", extra)):
        for key, value in keys.items():
            section, _, name = key.partition(".")
            if not hasattr(out, section) or not hasattr(getattr(out, section), name):  # setattr would add it
                raise ConfigError(f"{who} sets config key '{key}', which this version does not have")
            setattr(getattr(out, section), name, value)
    out.train.lr = scale * (default_lr(config, method) if lr is None else lr)
    out.train.seed = seed
    out.name = f"{config.name}-{method}-seed{seed}"
    check(out)  # the overrides go through the same checks as the config itself
    return out


def default_lr(config: RunConfig, method: str) -> float:
    return config.compare.full_ft_lr if method == "full-ft" else config.train.lr


def limit_per_kind(examples: list[Example], n: int) -> list[Example]:
    """A fixed random sample of n examples of each kind (qa split into open and multiple choice)."""
    if not n:
        return examples
    examples = list(examples)
    random.Random(0).shuffle(examples)  # files are ordered by condition: the first n would be a few conditions
    taken: dict[str, int] = {}
    out = []
    for ex in examples:
        key = ex.kind + ("-mc" if ex.options else "")
        if taken.get(key, 0) < n:
            taken[key] = taken.get(key, 0) + 1
            out.append(ex)
    return out


def test_label(spec: str) -> str:
    """The short name a test file is reported under: bundled:test-retention -> retention, data/x.jsonl -> x."""
    name = spec.split(":", 1)[1] if spec.startswith("bundled:") else Path(spec).stem
    return name.removeprefix("test-") or name


def labelled(entries: list[EvalSet]) -> dict[str, EvalSet]:
    """Each evaluation set by its label (its own, else test_label of its path; the full path where two
    files would share one short name)."""
    labels = [e.label or test_label(e.path) for e in entries]
    if len(set(labels)) < len(labels):
        labels = [e.label or e.path for e in entries]
    return dict(zip(labels, entries))


def eval_sets(config: RunConfig, entries: list[EvalSet], output_dir: Path) -> dict[str, tuple[EvalSet, list]]:
    """{label: (set, examples)}: the same fixed sample for every method and seed; an own-voice set's examples
    carry the untrained model's answers (own_voice_file, made by prepare_own_voice)."""
    out = {}
    for label, entry in labelled(entries).items():
        spec = str(own_voice_file(config, entry, output_dir)) if entry.own_voice else entry.path
        out[label] = (entry, limit_per_kind(load_data([spec], quiet=True), config.compare.max_test_examples))
    return out


def test_sets(config: RunConfig, output_dir: Path) -> dict[str, tuple[EvalSet, list]]:
    return eval_sets(config, config.compare.test, output_dir)


def validation_sets(config: RunConfig, output_dir: Path) -> dict[str, tuple[EvalSet, list]]:
    """What the `trade` criterion scores tries on: compare.validation, else data.validation as content."""
    entries = config.compare.validation or [EvalSet(path=p, content=True) for p in config.data.validation]
    return eval_sets(config, entries, output_dir)


def own_voice_file(config: RunConfig, entry: EvalSet, output_dir: Path) -> Path:
    """Where an own-voice set's references are cached: named by what they depend on (model, prompt format,
    answer length and the prompts file)."""
    key = config_hash({"model": config.model.name, "template": config.data.template, "answers": entry.answers,
                       "max_length": config.model.max_length, "system": config.data.system_prompt,
                       "prompts": Path(entry.path).read_text() if Path(entry.path).is_file() else entry.path,
                       })[:8]  # fmt: skip
    return output_dir / OWN_VOICE / f"{Path(entry.path).stem}-{key}.jsonl"


def prepare_own_voice(config: RunConfig, output_dir: Path) -> None:
    """The untrained model's greedy answers to each own-voice set's prompts (answers new tokens), once: the
    references its answer NLL is scored on. A prompt it answers with nothing is left out."""
    from ..data.prompt_format import PromptFormat
    from ..evaluation.generation import EVAL_MAX_NEW_TOKENS, own_answers
    from ..runs import Run

    todo = [e for e in (*config.compare.test, *config.compare.validation)
            if e.own_voice and not own_voice_file(config, e, output_dir).exists()]  # fmt: skip
    if not todo:
        return
    run = Run.from_base(config.model.name)
    fmt = PromptFormat.from_config(run.tokenizer, config)
    for entry in todo:
        prompts = load_data([entry.path], quiet=True)
        answers = {a.id.removeprefix("self/"): a.answer for a in own_answers(
            run.model, fmt, prompts, entry.answers or EVAL_MAX_NEW_TOKENS)}  # fmt: skip
        examples = [ex.to_dict() | {"answer": answers[ex.id]} for ex in prompts if ex.id in answers]
        write_jsonl(own_voice_file(config, entry, output_dir), examples)
        print(f"own voice: the untrained model answered {len(examples)} of {len(prompts)} prompts of {entry.path}")


def score_sets(model, fmt, sets: dict[str, tuple[EvalSet, list]], embedder=None) -> tuple[dict, dict]:
    """({"<label>/<metric>": value}, {label: {metric: {id: value}}}) of one model, asked in `fmt` (its length
    is the evaluation's), on each set."""
    from ..evaluation.evaluate import EvalSettings, evaluate_examples
    from ..evaluation.generation import EVAL_MAX_NEW_TOKENS
    from ..likelihood import ScoreSettings, answer_nll

    metrics: dict[str, float] = {}
    items: dict[str, dict] = {}
    for label, (entry, examples) in sets.items():
        if entry.own_voice:  # the answer's tokens alone: cut at a budget, the answers have no end of turn
            pairs = [(fmt.prompt(ex), str(ex.answer)) for ex in examples]
            nll = answer_nll(model, fmt.tokenizer, pairs, ScoreSettings.of(fmt))
            by_id = {ex.id: value for ex, value in zip(examples, nll)}
            found = ({"answer_nll": sum(nll) / max(1, len(nll))}, {"answer_nll": by_id})
        else:
            tokens = EVAL_MAX_NEW_TOKENS if entry.answers is None else max(1, entry.answers)
            result = evaluate_examples(model, fmt, examples, EvalSettings(max_new_tokens=tokens), embedder)
            found = file_summary(result, generated=entry.answers != 0)
        metrics.update({f"{label}/{k}": v for k, v in found[0].items()})
        items[label] = found[1]
    return metrics, items


def file_summary(result, generated: bool = True) -> tuple[dict, dict]:
    """(metrics, items) of one test file from its `evaluate_examples` result. items: {"accuracy" |
    "preference_accuracy": {id: 0/1 hit}, "rougeL": {id: ROUGE-L F}, "answer_nll": {id: NLL}}, whose means are
    the metrics of the same names; statistics pair methods and seeds on them. Without `generated` answers
    (a one-token budget), the metrics of generated text are left out."""
    metrics = {k: v for k, v in result.scalars().items() if generated or k not in GENERATED}
    if "source=icft-general" in result.accuracy_by:
        metrics["general_accuracy"] = result.accuracy_by["source=icft-general"]
    items: dict[str, dict[str, float]] = {}
    for metric, kind in (("accuracy", "qa"), ("preference_accuracy", "preference")):
        hits = {r["id"]: r["hit"] for r in result.items if r["kind"] == kind and "hit" in r}
        if hits:
            items[metric] = hits
    scored = [hit for metric in ("accuracy", "preference_accuracy") for hit in items.get(metric, {}).values()]
    if scored:
        metrics["error_rate"] = 1 - sum(scored) / len(scored)
    for metric in ("rougeL", "answer_nll") if generated else ("answer_nll",):
        values = {r["id"]: r[metric] for r in result.items if metric in r}
        if values:
            items[metric] = values
    return metrics, items


def seeds_of(config: RunConfig, method: str) -> list[int]:
    """The seeds a method runs: `base` once (untrained, the same model whatever the seed), the ablations
    the first compare.ablation_seeds, every other method all of compare.seeds."""
    seeds = config.compare.seeds
    if method == "base":
        return seeds[:1]
    if method.startswith("icft-no-") and config.compare.ablation_seeds:
        return seeds[: config.compare.ablation_seeds]
    return seeds


def run_status(run_dir: Path) -> str:
    """Where a run folder stands: "finished" (result.json), "trained" (training ended, evaluation did not),
    "interrupted" (checkpoints only) or "new"."""
    if (run_dir / "result.json").exists():
        return "finished"
    if (run_dir / "summary.json").exists():  # train writes it after the weights, last
        return "trained"
    if any((run_dir / "checkpoints").glob("step-*")):
        return "interrupted"
    return "new"


def train_run(cfg: RunConfig, run_dir: Path, status: str) -> None:
    """Train unless training already ended; an interrupted run continues from its last checkpoint."""
    from .train import train

    if status in ("new", "interrupted"):
        train(cfg, run_dir, resume=status == "interrupted")


def run_hash(cfg: RunConfig, trained: bool = True) -> str:
    """8 hex digits naming what a run computes: its config without name, output_dir and the compare section
    (which comparison asked for a run does not change it), and without train.packing (how rows go through
    the model, not what they compute: the same losses within 1e-4, tests/test_packing.py). An untrained run
    depends on its model and template."""
    tree = cfg.to_dict()
    if not trained:
        return config_hash({"untrained": tree["model"], "template": tree["data"]["template"]})[:8]
    tree["train"] = {k: v for k, v in tree["train"].items() if k != "packing"}
    return config_hash({k: v for k, v in tree.items() if k not in ("name", "output_dir", "compare")})[:8]


@dataclass
class Point:
    """One run of the grid. A tested point is scored on the test files; an untested one (a try of its
    method, `tag`, or the untrained model for the `trade` criterion) is only read on validation."""

    method: str
    seed: int
    cfg: RunConfig
    tested: bool = True
    scale: float | None = None  # a learning-rate try of compare.lr_scales (its tag: x<scale>)
    tag: str = ""  # a try of compare.tries ("": the method's defaults)

    def __post_init__(self) -> None:
        if self.scale is not None and not self.tag:
            self.tag = f"x{self.scale:g}"

    @property
    def trained(self) -> bool:
        return self.method != "base"

    @property
    def hash(self) -> str:
        return run_hash(self.cfg, self.trained)

    @property
    def prefix(self) -> str:
        return f"{self.method}-s{self.seed}" + (f"-{self.tag}" if self.tag else "")

    def __str__(self) -> str:
        return f"{self.method} seed {self.seed}" + (f" {self.tag}" if self.tag else "")


def run_dir(output_dir: Path, point: Point) -> Path:
    """A point's folder: the one already holding its hash (whichever method named it first), else a new one."""
    found = sorted((output_dir / RUNS).glob(f"*-{point.hash}"))
    return found[0] if found else output_dir / RUNS / f"{point.prefix}-{point.hash}"


def tries_of(config: RunConfig, method: str) -> dict[str, dict]:
    """{tag: overrides} of the runs a method is chosen from ("": its defaults); {} when it is not tuned."""
    if method == "base":
        return {}
    if config.compare.lr_scales:
        return {f"x{s:g}": {"lr_scale": s} for s in config.compare.lr_scales}
    return {"": {}, **config.compare.tries[method]} if method in config.compare.tries else {}


def try_point(config: RunConfig, method: str, seed: int, tag: str, tested: bool = True) -> Point:
    overrides = tries_of(config, method).get(tag, {})
    scale = overrides.get("lr_scale") if config.compare.lr_scales and not tested else None
    return Point(method, seed, method_config(config, method, seed, overrides=overrides), tested, scale,
                 "" if tested else tag)  # fmt: skip


def selection_points(config: RunConfig) -> list[Point]:
    """The tries: each tuned method at the first seed, once per try; with the `trade` criterion also the
    untrained model, which every try is measured against."""
    seed = config.compare.seeds[0]
    points = [try_point(config, m, seed, tag, tested=False) for m in config.compare.methods
              for tag in tries_of(config, m)]  # fmt: skip
    if points and config.compare.criterion == "trade":
        points.insert(0, Point("base", seed, method_config(config, "base", seed), tested=False))
    return points


def seed_points(config: RunConfig, chosen: dict[str, str]) -> list[Point]:
    """The tested runs: every method at each of its seeds, at its chosen try (`chosen`, else its defaults)."""
    return [try_point(config, m, s, chosen.get(m, "")) for m in config.compare.methods for s in seeds_of(config, m)]


def tested_on(config: RunConfig) -> dict:
    """What a run's result.json was scored on: a run tested on other files is tested again. A bare file is
    named by its path alone (as before sets had settings)."""
    sets = [e.path if e == EvalSet(path=e.path) else e.model_dump() for e in config.compare.test]
    return {"test": sets, "max_test_examples": config.compare.max_test_examples}


def validated_on(config: RunConfig) -> dict:
    return {"validation": [e.model_dump() for e in config.compare.validation] or list(config.data.validation),
            "max_test_examples": config.compare.max_test_examples}  # fmt: skip


def wise_alphas(config: RunConfig, point: Point) -> list[float]:
    """The WiSE-FT points of a tested run: compare.wise_alphas for a LoRA run of compare.wise_methods."""
    wanted = config.compare.wise_methods or config.compare.methods
    if not point.tested or not point.trained or point.cfg.peft.method != "lora" or point.method not in wanted:
        return []
    return list(config.compare.wise_alphas)


def wise_dir(folder: Path, alpha: float) -> Path:
    return folder / "wise" / f"a{alpha:g}"


def wise_tested_on(config: RunConfig, alpha: float) -> dict:
    return {**tested_on(config), "alpha": alpha, "sets": list(config.compare.wise_sets)}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def todo(config: RunConfig, point: Point, folder: Path) -> list[str]:
    """What a point's folder lacks: "train", "validate" (a try under `trade`), "test", "wise <alpha>"."""
    status = run_status(folder)
    lacks = ["train"] if point.trained and status in ("new", "interrupted") else []
    if not point.tested:
        checked = (_read(folder / "validation.json") or {}).get("validated_on")
        return lacks + (["validate"] if config.compare.criterion == "trade" and checked != validated_on(config) else [])
    if (_read(folder / "result.json") or {}).get("tested_on") != tested_on(config):
        lacks.append("test")
    for alpha in wise_alphas(config, point):
        if (_read(wise_dir(folder, alpha) / "result.json") or {}).get("tested_on") != wise_tested_on(config, alpha):
            lacks.append(f"wise {alpha:g}")
    return lacks


def plan(config: RunConfig, points: list[Point], output_dir: Path) -> dict[Path, tuple[Point, list[str]]]:
    """Each distinct folder once (points that share a config share it), its point and what it lacks (todo);
    and one printed line on what is kept, completed or resumed."""
    folders: dict[Path, tuple[Point, list[str]]] = {}
    seen: set[str] = set()
    for point in points:
        if point.hash not in seen:  # the first point of each config names its folder
            seen.add(point.hash)
            folder = run_dir(output_dir, point)
            folders[folder] = (point, todo(config, point, folder))
    said: dict[str, list[str]] = {"finished": [], "trained": [], "interrupted": [], "new": []}
    for folder, (point, lacks) in folders.items():
        status = run_status(folder) if lacks else "finished"
        said["trained" if lacks and status == "finished" else status].append(str(point))  # e.g. to test again
    if len(said["new"]) < len(folders):
        print(f"{output_dir}: keeping {len(said['finished'])} finished runs; evaluating "
              f"{len(said['trained'])} trained ({', '.join(said['trained']) or '-'}); resuming "
              f"{len(said['interrupted'])} interrupted ({', '.join(said['interrupted']) or '-'}); "
              f"{len(said['new'])} new", flush=True)  # fmt: skip
    return folders


def run_grid(config: RunConfig, points: list[Point], output_dir: Path) -> None:
    """Do what each point's folder lacks (train, resume, validate, test), one worker process per folder."""
    work = {folder: job for folder, job in plan(config, points, output_dir).items() if job[1]}
    if not work:
        return
    started = time.perf_counter()
    with _pool(config) as pool:
        futures = {pool.submit(run_point, config, point, folder, lacks): point
                   for folder, (point, lacks) in work.items()}  # fmt: skip
        for done, future in enumerate(as_completed(futures), 1):
            print(f"[{done}/{len(work)} {time.perf_counter() - started:.0f}s] {futures[future]}: {future.result()}",
                  flush=True)  # fmt: skip


def run_point(config: RunConfig, point: Point, folder: Path, lacks: list[str]) -> str:
    """Train the point's run if it lacks training (resume if interrupted), then score what it lacks. Runs in a
    worker process; returns its line of scores."""
    if "train" in lacks:
        train_run(point.cfg, folder, run_status(folder))
    if "validate" in lacks:
        validate_run(config, point, folder)
    if not point.tested:
        said = [f"lr {point.cfg.train.lr:.2g}, average stage accuracy {validation_scores(folder)['average_accuracy']}"
                if point.trained else "untrained"]  # fmt: skip
        scored = _read(folder / "validation.json")
        return ", ".join(said + [f"{k}={v:.3f}" for k, v in (scored or {}).get("metrics", {}).items()])
    metrics = evaluate_run(config, point, folder, lacks)
    shown = [k for k in metrics if k.split("/")[-1] in ("accuracy", "preference_accuracy", "rougeL", "answer_nll")]
    return ", ".join(f"{k}={metrics[k]:.3f}" for k in shown[:8])


def load_point(point: Point, folder: Path):
    """(run, prompt format) of a trained run, as `icft eval --run` loads it, or of the untrained model in the
    format the trained methods start from (its config.yaml written, so the folder says what it is)."""
    from ..data.prompt_format import PromptFormat
    from ..runs import Run

    if point.trained:
        run = Run.from_pretrained(folder, memory=False)
        return run, run.format
    run = Run.from_base(point.cfg.model.name)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(point.cfg, folder / "config.yaml")
    return run, PromptFormat.from_config(run.tokenizer, point.cfg)


def validate_run(config: RunConfig, point: Point, folder: Path) -> None:
    """A try's (or the untrained model's) answer NLL on the validation sets: validation.json."""
    run, fmt = load_point(point, folder)
    sets = validation_sets(config, folder.parents[1])
    metrics, items = score_sets(run.model, fmt, sets)
    roles = {label: {"content": e.content, "own_voice": e.own_voice} for label, (e, _) in sets.items()}
    write_json(folder / "validation.json", {"metrics": metrics, "items": items, "roles": roles,
                                            "validated_on": validated_on(config)})  # fmt: skip


def evaluate_run(config: RunConfig, point: Point, folder: Path, lacks: list[str] | None = None) -> dict[str, float]:
    """Score a trained run (or the base model) on each test file, in the prompt format it was trained in:
    items.json, then result.json ({"metrics", "curve", "matrix", "tested_on"}) last; then each WiSE-FT point
    it lacks (`lacks`: all that todo finds)."""
    from ..memory import Embedder
    from ..models import set_lora_scale

    lacks = todo(config, point, folder) if lacks is None else lacks
    run, fmt = load_point(point, folder)
    sets = test_sets(config, folder.parents[1])
    metrics = (_read(folder / "result.json") or {}).get("metrics", {})
    if "test" in lacks:
        metrics, items = score_sets(run.model, fmt, sets, Embedder())
        metrics.update(training_summary(point, folder, run.model))
        write_json(folder / "items.json", items)
        write_json(folder / "result.json", {"metrics": metrics, **training_curves(folder),
                                            "tested_on": tested_on(config)})  # fmt: skip
    chosen = {k: v for k, v in sets.items() if k in config.compare.wise_sets} if config.compare.wise_sets else sets
    for alpha in [a for a in wise_alphas(config, point) if f"wise {a:g}" in lacks]:
        set_lora_scale(run.model, alpha)
        wise_metrics, items = score_sets(run.model, fmt, chosen)
        write_json(wise_dir(folder, alpha) / "items.json", items)
        write_json(wise_dir(folder, alpha) / "result.json", {"metrics": wise_metrics,
                                                             "tested_on": wise_tested_on(config, alpha)})
    return metrics


def training_summary(point: Point, folder: Path, model) -> dict[str, float]:
    """The run-level metrics: cost (summary.json) and validation scores after each stage (stage_eval.json)."""
    from ..models import count_parameters

    if not point.trained:
        return {"trainable_params": 0, "wall_s": 0.0, "total_params": count_parameters(model)[1]}
    summary = json.loads((folder / "summary.json").read_text())
    stage_eval = json.loads((folder / "stage_eval.json").read_text())
    summary.update({k: stage_eval[k] for k in ("average_accuracy", "forgetting", "backward_transfer")})
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}


def training_curves(folder: Path) -> dict[str, list]:
    """The learning curve (metrics.jsonl) and the accuracy matrix; empty for the base model."""
    if not (folder / "stage_eval.json").exists():
        return {"curve": [], "matrix": []}
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return {"curve": [json.loads(x) for x in lines if x],
            "matrix": json.loads((folder / "stage_eval.json").read_text())["accuracy_matrix"]}


def validation_scores(folder: Path) -> dict:
    stage_eval = json.loads((folder / "stage_eval.json").read_text())
    return {"average_accuracy": stage_eval["average_accuracy"], "average_nll": stage_eval["average_nll"]}


def best_try(scores: dict[str, dict], criterion: str) -> str:
    """The tag of the best try. average_accuracy: the best average stage accuracy on validation (lowest
    answer NLL where nothing is scored by choice), a tie going to the rate nearest the configured one; trade:
    the largest trade, a tie going to the first try (the defaults)."""
    def key(tag: str) -> tuple:
        s = scores[tag]
        if criterion == "trade":
            return (s["trade"],)
        quality = s["average_accuracy"] if s["average_accuracy"] is not None else -(s["average_nll"] or math.inf)
        return (quality, -abs(math.log(s["lr_scale"])))

    return max(scores, key=key)


def try_scores(config: RunConfig, point: Point, folder: Path, base: dict | None) -> dict:
    """One try's figures for its criterion: its rate and validation stage scores, and with `trade` its drops
    against the untrained model's validation.json (`base`)."""
    scores = {"lr": point.cfg.train.lr, "lr_scale": tries_of(config, point.method)[point.tag].get("lr_scale", 1.0),
              **validation_scores(folder)}  # fmt: skip
    if config.compare.criterion == "trade":
        scores.update(trade_figures(json.loads((folder / "validation.json").read_text()), base))
    return scores


def chosen_tries(config: RunConfig, output_dir: Path) -> tuple[dict[str, str], dict]:
    """Each tuned method's try, picked by compare.criterion from its tries' folders, and the record
    tuning.json holds. Reads the folders only; ({}, {}) without tries."""
    points = selection_points(config)
    base = [_read(run_dir(output_dir, p) / "validation.json") for p in points if not p.trained]
    scores: dict[str, dict[str, dict]] = {}
    for point in (p for p in points if p.trained):
        scores.setdefault(point.method, {})[point.tag] = try_scores(config, point, run_dir(output_dir, point),
                                                                    base[0] if base else None)  # fmt: skip
    chosen = {m: best_try(by_tag, config.compare.criterion) for m, by_tag in scores.items()}
    record = {m: {"criterion": config.compare.criterion, "chosen": chosen[m] or "defaults",
                  "lr": by_tag[chosen[m]]["lr"], "tries": {t or "defaults": s for t, s in by_tag.items()}}
              for m, by_tag in scores.items()}  # fmt: skip
    return chosen, record


def report(config: RunConfig, output_dir: Path) -> dict:
    """results.json, tuning.json, report.md and the plots, from the run folders alone: no training, no
    evaluation. Returns the results."""
    chosen, tuning = chosen_tries(config, output_dir)
    if tuning:
        write_json(output_dir / "tuning.json", tuning)
    points = seed_points(config, chosen)
    outcomes = {(p.method, p.seed): json.loads((run_dir(output_dir, p) / "result.json").read_text()) for p in points}
    methods, first = config.compare.methods, config.compare.seeds[0]
    per_seed = {m: {s: outcomes[(m, s)]["metrics"] for s in seeds_of(config, m)} for m in methods}
    items = run_items(config, output_dir, points)
    for name, by_seed in wise_outcomes(config, output_dir, points).items():
        per_seed[name] = {s: result["metrics"] for s, (result, _) in by_seed.items()}
        items[name] = {s: found for s, (_, found) in by_seed.items()}
    sets = test_sets(config, output_dir)
    results = {
        "methods": {m: mean_std(list(rows.values())) for m, rows in per_seed.items()},
        "per_seed": {m: {str(s): metrics for s, metrics in rows.items()} for m, rows in per_seed.items()},
        "baselines": baselines_on_tests(sets),
        "statistics": statistics(config, items, per_seed),
        "composites": composites(items, {label: entry for label, (entry, _) in sets.items()}, REFERENCE),
        "learning_rates": {p.method: p.cfg.train.lr for p in points if p.trained},
        "tuning": tuning,
    }
    write_json(output_dir / "results.json", results)
    curves = {m: outcomes[(m, first)]["curve"] for m in methods if outcomes[(m, first)]["curve"]}
    matrices = {m: [outcomes[(m, s)]["matrix"] for s in seeds_of(config, m)] for m in methods
                if outcomes[(m, first)]["matrix"]}  # fmt: skip
    write_text(output_dir / "report.md", report_markdown(results, config, matrices))
    plots(output_dir, curves, {m: mean_matrix(per_seed) for m, per_seed in matrices.items()}, results)
    return results


def run_items(config: RunConfig, output_dir: Path, points: list[Point]) -> dict[str, dict[int, dict]]:
    """{method: {seed: items.json}}; the one `base` run pairs with every seed."""
    items: dict[str, dict[int, dict]] = {}
    for p in points:
        for seed in config.compare.seeds if p.method == "base" else [p.seed]:
            items.setdefault(p.method, {})[seed] = json.loads((run_dir(output_dir, p) / "items.json").read_text())
    return items


def wise_outcomes(config: RunConfig, output_dir: Path, points: list[Point]) -> dict[str, dict[int, tuple]]:
    """{"<method> a=<alpha>": {seed: (result.json, items.json)}} of every WiSE-FT point, in method order."""
    out: dict[str, dict[int, tuple]] = {}
    for p in points:
        for alpha in wise_alphas(config, p):
            folder = wise_dir(run_dir(output_dir, p), alpha)
            out.setdefault(f"{p.method} a={alpha:g}", {})[p.seed] = (_read(folder / "result.json"),
                                                                      _read(folder / "items.json"))  # fmt: skip
    return out


def statistics(config: RunConfig, items: dict, per_seed: dict) -> dict:
    """The paired differences from REFERENCE, on every test item's score (items.json)."""
    differences = compare_to(REFERENCE, items, per_seed) if REFERENCE in config.compare.methods else {}
    return {"reference": REFERENCE, "confidence": CONFIDENCE, "n_resamples": N_RESAMPLES, "differences": differences}


def baselines_on_tests(sets: dict[str, tuple[EvalSet, list]]) -> dict[str, dict[str, float]]:
    """The trivial baselines (random, majority, position prior) on the same test items as the methods."""
    baselines: dict[str, dict[str, float]] = {}
    for label, (entry, examples) in sets.items():
        if entry.own_voice:  # scored by the NLL of the model's own answers: nothing to guess
            continue
        for name, values in trivial_baselines(examples).items():
            kept = {k: v for k, v in values.items() if entry.answers != 0 or k not in GENERATED}
            baselines.setdefault(name, {}).update({f"{label}/{k}": v for k, v in kept.items()})
    return baselines


def compare(config: RunConfig, output_dir: Path) -> dict:
    """Run what the grid lacks (the tries, then the seeded runs at the chosen tries), then report."""
    check_inputs(config, output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, output_dir / "config.yaml")
    prepare_own_voice(config, output_dir)
    selection = selection_points(config)
    if selection:
        print(f"choosing on validation by {config.compare.criterion}: "
              + "; ".join(f"{m}: {', '.join(t or 'defaults' for t in tries_of(config, m))}"
                          for m in dict.fromkeys(p.method for p in selection if p.trained)), flush=True)  # fmt: skip
        run_grid(config, selection, output_dir)
    run_grid(config, seed_points(config, chosen_tries(config, output_dir)[0]), output_dir)
    results = report(config, output_dir)
    print("\n".join([results_table(results), "", *below_baselines(results), "", *difference_table(results), "",
                     *in_plain_words(results)]))
    print(f"\nwrote {output_dir / 'report.md'} (tables, paired differences, plots beside it) and "
          f"{output_dir / 'results.json'}")  # fmt: skip
    return results


def check_inputs(config: RunConfig, output_dir: Path) -> None:
    """Before anything runs or a folder is made: the output folder, every method's config and try, every
    data file (grouped as the runs read them: train together, validation together, each test file alone)."""
    check_output_dir(output_dir)
    for method in config.compare.methods:
        for tag in tries_of(config, method) or [""]:
            try_point(config, method, config.compare.seeds[0], tag)
    unknown = set(config.compare.tries) - set(METHOD_OVERRIDES)  # a known method not run: its tries wait unused
    if unknown:
        raise ConfigError(f"config key 'compare.tries': unknown method {', '.join(sorted(unknown))}")
    entries = [*config.compare.test, *config.compare.validation]
    for specs in (config.data.train, config.data.validation, *([e.path] for e in entries)):
        load_data(specs, quiet=True)
    if selection_points(config) and config.compare.criterion == "trade" and not any(
            e.own_voice for e in config.compare.validation):  # fmt: skip
        raise ConfigError("config key 'compare.criterion': trade needs an own-voice set in compare.validation")


def _pool(config: RunConfig) -> ProcessPoolExecutor:
    """Every run gets a fresh process, so that its peak memory is its own."""
    parallel = config.compare.jobs > 1
    return ProcessPoolExecutor(config.compare.jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_one_thread_worker if parallel else None, max_tasks_per_child=1)


def _one_thread_worker() -> None:
    # Two single-threaded runs side by side get more from two cores than one run on both (1.4x measured
    # with the embedded default): small matrix products do not scale well across threads.
    import torch

    torch.set_num_threads(1)
    os.environ["ICFT_QUIET"] = "1"  # two progress bars at once would garble the terminal


def check_output_dir(output_dir: Path) -> None:
    """Before anything runs: the output folder is new, empty, or an earlier comparison's (its config.yaml)."""
    from ..io import check_output_dir as check_writable

    check_writable(output_dir, "--output-dir")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (output_dir / "config.yaml").is_file():
        raise ConfigError(f"{output_dir}: not empty and not an icft compare folder (no config.yaml): give a new or "
                          "empty --output-dir")  # fmt: skip
    if any(output_dir.glob("*/seed*/")):  # runs of an icft before hash-named folders
        raise ConfigError(f"{output_dir} holds <method>/seed<N> run folders: move them to {RUNS}/ once with "
                          f"`python -m tools.migrate_compare {output_dir}`")  # fmt: skip
