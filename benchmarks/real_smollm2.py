"""Does ICFT help a real model? Medical skill gained against general skill kept, on real data (issue 27).

One instruction-tuned model (SmolLM2-135M-Instruct by default, through its chat template) is fine-tuned on a
real medical curriculum read in place from ../shared/data, by ICFT and by what a team would do anyway, at
equal steps and seeds. Every run is scored on the same held-out items through the one evaluation path
(`icft.evaluation.evaluate.evaluate_examples`), against the untrained model.

Stages (ICFT's order, general to specific):
  general    ChatDoctor GenMedGPT-5k patient -> doctor dialogues (response generation)
  knowledge  MedQuAD open questions
  clinical   PubMedQA yes/no/maybe with its abstract, MEDIQA 2019 human-judged answer pairs (preference), MMLU
             medical dev multiple choice
Held out by group, never trained on: ChatDoctor and PubMedQA by a hash of the id, MedQuAD by focus, MEDIQA by
question text, MMLU medical by question text (one question sits in two subsets under two ids). Held-out
groups go to test or to validation (the stage matrices), never to both; a held-out item whose question is
also a training question is dropped. `disjointness` counts overlaps (all must be 0; also a test). MEDIQA
answers are cut to their first --mediqa-words words (the pairs are several hundred words; uncut, the
question would fall out of the context), in training and test alike.

Measured on the held-out items, each beside its trivial baselines on the same items:
  medical gain       PubMedQA accuracy and macro-F1, MMLU medical accuracy, MEDIQA preference accuracy
                     (length-normalised), answer NLL per token on ChatDoctor and MedQuAD, ROUGE-L of greedy
                     answers on the first --rouge-items of each
  general retention  MMLU general (mmlu_general/dev.jsonl, 48 non-medical subjects, never trained) accuracy,
                     and the "own voice": the untrained model's greedy answers to other MMLU general
                     questions asked without options (computed once, cached) and their answer NLL under each
                     model; a rise is forgetting of what the model used to say.
The table's four figures, each a change against the untrained model with higher = better, paired over seeds
and items (`icft.evaluation.statistics.paired_items`, 95% bootstrap): medical accuracy (PubMedQA + MMLU
medical + MEDIQA items pooled), medical answer NLL drop (ChatDoctor + MedQuAD items pooled), general
accuracy, own-voice NLL drop (negative = forgetting); and ICFT minus each method on the same four.

Methods: `icft.recipes.compare.METHOD_OVERRIDES` on one config (base, lora-sequential, lora-mixed,
lora-kl-base, lora-ilora, icft by default), and WiSE-FT points at no training cost: the final adapters of
lora-sequential and icft with their LoRA scaling multiplied by each --wise alpha (peft's `set_scale`).

Tuning (--tune), the same number of tries for every method: each method's defaults and its two TRIES,
trained at the first seed and scored on validation only (the medical files' validation items and own-voice
prompts that are not the test's); every seed then runs the try with the best validation trade (medical
answer NLL drop + own-voice NLL drop). The ablations (icft-no-*) take ICFT's chosen try.

Resumable: everything lives in --work-dir/<config name>-<hash of config and sizes>/; a run with eval.json
is finished and skipped, a run trained but not evaluated is evaluated, an interrupted one resumes from its
last checkpoint. Jobs are ordered seed by seed, so a cut-short benchmark still holds whole seeds.

    python benchmarks/real_smollm2.py --config configs/real-smollm2.yaml --tune --jobs 2 --threads 1 \
        --out benchmarks/results/real-smollm2
    # a GPU and a bigger model: the same benchmark, a bigger budget
    python benchmarks/real_smollm2.py --config configs/real-smollm2-gpu.yaml \
        --set model.name=Qwen/Qwen2.5-1.5B-Instruct --test-items 200 --rouge-items 50 --general-items 300 \
        --voice-items 100 --out benchmarks/results/real-smollm2-gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from base_models import floors  # noqa: E402  (the trivial floors of the base-model benchmark, reused)

from icft.config import RunConfig, load_config  # noqa: E402
from icft.data.loaders import load_examples  # noqa: E402
from icft.data.schema import Example  # noqa: E402
from icft.errors import ConfigError  # noqa: E402
from icft.evaluation.baselines import trivial_baselines  # noqa: E402
from icft.evaluation.stage_eval import fixed_sample  # noqa: E402
from icft.evaluation.statistics import Difference, paired_items, paired_runs  # noqa: E402
from icft.io import write_json, write_jsonl, write_text  # noqa: E402
from icft.memory import example_text  # noqa: E402
from icft.recipes.compare import METHOD_OVERRIDES, method_config, run_status, train_run  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# name: (file under the shared folder, stage, share of its groups held out of training)
MEDICAL = {
    "chatdoctor": ("chatdoctor_genmedgpt5k/dialogue.jsonl", "general", 0.05),
    "medquad": ("medquad/qa.jsonl", "knowledge", 0.05),
    "pubmedqa": ("pubmedqa/train.jsonl", "clinical", 0.25),
    "mediqa": ("mediqa2019/pairs.jsonl", "clinical", 0.30),
    "mmlu_medical": ("mmlu_medical/dev.jsonl", "clinical", 0.40),
}
GENERAL = "mmlu_general/dev.jsonl"
TEST_SHARE = 0.67  # of the held-out groups; the rest are validation
GENERATED = ("chatdoctor", "medquad")  # open answers: NLL on all test items, ROUGE-L on the first rouge_items
# The table's figures: (test sets pooled, per-item value, sign that makes higher better, label)
COMPOSITES = {
    "medical_accuracy": (("pubmedqa", "mmlu_medical", "mediqa"), "hit", 1, "medical accuracy"),
    "medical_nll": (GENERATED, "answer_nll", -1, "medical answer NLL drop"),
    "general_accuracy": (("mmlu_general",), "hit", 1, "MMLU general accuracy"),
    "own_voice": (("own_voice",), "answer_nll", -1, "own-voice NLL drop"),
}
PLOT_AXES = ("medical_nll", "own_voice")  # x: medical gain, y: general retention change
DETAIL_METRICS = ("accuracy", "macro_f1", "preference_accuracy", "answer_nll", "rougeL")
WISE_OF = ("lora-sequential", "icft")
REFERENCE = "icft"
# Tuning on validation, the same number of tries for every method (3: its defaults, the config's settings,
# and the two below). Each try is a run named "<method>@<tag>" (the defaults: "<method>"), trained at the
# first seed and scored on validation only; the one with the best validation trade (see `trade`) is the
# method's setting for every seed. The ablations (icft-no-*) take ICFT's chosen settings.
# A try's keys are config keys, and "lr_scale", which multiplies the method's own learning rate (train.lr).
TRIES: dict[str, dict[str, dict[str, object]]] = {
    "lora-sequential": {"lr-x0.5": {"lr_scale": 0.5}, "lr-x2": {"lr_scale": 2.0}},
    "lora-mixed": {"lr-x0.5": {"lr_scale": 0.5}, "lr-x2": {"lr_scale": 2.0}},
    "icft": {"lr-x2": {"lr_scale": 2.0}, "memory-x2": {"loss.consistency": 2.0, "memory.ltm_replay": 0.5}},
    "lora-kl-base": {"lr-x2": {"lr_scale": 2.0}, "kl3": {"loss.kl_base": 3.0}},
    "lora-ilora": {"lr-x2": {"lr_scale": 2.0}, "ema0.999": {"memory.ema_decay": 0.999}},
}


@dataclass
class Sizes:
    """How much each run trains on and is tested on (the CPU budget's defaults; the GPU command raises them)."""

    train: int = 200  # training pool per source (0: all); MMLU medical and MEDIQA have fewer
    test: int = 16  # test items per medical file
    validation: int = 8  # validation items per file, for the stage matrices
    rouge: int = 6  # of the ChatDoctor / MedQuAD test items, those also answered greedily for ROUGE-L
    new_tokens: int = 24  # per greedy answer (ROUGE-L and the own-voice references)
    general: int = 30  # MMLU general items scored for accuracy
    voice: int = 20  # MMLU general questions (others) asked without options: the own-voice prompts
    mediqa_words: int = 100  # MEDIQA answers cut to this many words
    max_words: dict[str, int] = field(default_factory=lambda: {"chatdoctor": 90, "medquad": 110})


# ----------------------------------------------------------------------------------------------------------
# Data


def bucket(key: str) -> int:
    """0-9999 from a hash of the key: the same side of every split in every run and process."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000


def normalise(text: str | None) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).split())


def group_of(name: str, ex: Example) -> str:
    """What a held-out split keeps together: a MedQuAD focus, a MEDIQA or MMLU question, else the item."""
    if name == "medquad":
        return "focus:" + normalise(ex.meta.get("focus") or ex.id)
    if name == "mediqa":
        return "question:" + normalise(ex.prompt)
    if name == "mmlu_medical":
        return "question:" + normalise(ex.question)
    return "id:" + ex.id


def words(ex: Example) -> int:
    if ex.kind == "dialogue":
        return sum(len(t["content"].split()) for t in ex.turns or [])
    return len((ex.question or ex.prompt or "").split()) + len(str(ex.answer or ex.chosen or "").split())


def cut_pair(ex: Example, n_words: int) -> Example:
    cut = {k: " ".join(getattr(ex, k).split()[:n_words]) for k in ("chosen", "rejected")}
    return dataclasses.replace(ex, **cut, meta={**ex.meta, "cut_words": n_words})


def build(data: Path, sizes: Sizes) -> dict[str, dict[str, list[Example]]]:
    """{"train" | "validation" | "test" | "tuning": {name: examples}}, each example with its stage; "test"
    also holds "mmlu_general" (accuracy) and "voice_prompts" (the own-voice questions, answers filled in
    later), "tuning" other own-voice questions for the tuning tries."""
    split: dict[str, dict[str, list[Example]]] = {"train": {}, "validation": {}, "test": {}}
    parts: dict[str, tuple[list[Example], list[Example]]] = {}
    for name, (path, stage, share) in MEDICAL.items():
        examples = load_examples(data / path).examples
        if name == "mediqa":
            examples = [cut_pair(ex, sizes.mediqa_words) for ex in examples]
        limit = sizes.max_words.get(name)
        examples = [dataclasses.replace(ex, stage=stage) for ex in examples if not limit or words(ex) <= limit]
        held = [ex for ex in examples if bucket(f"{name}/{group_of(name, ex)}") < share * 10_000]
        train = [ex for ex in examples if bucket(f"{name}/{group_of(name, ex)}") >= share * 10_000]
        parts[name] = train, held
    # a question asked in any training source is not held out (MEDIQA and MedQuAD share "How to diagnose COPD?")
    asked = {normalise(example_text(ex)) for train, _ in parts.values() for ex in train}
    for name, (train, held) in parts.items():
        held = [ex for ex in held if normalise(example_text(ex)) not in asked]
        is_test = [bucket(f"test/{group_of(name, ex)}") < TEST_SHARE * 10_000 for ex in held]
        split["train"][name] = fixed_sample(train, sizes.train)
        split["test"][name] = fixed_sample([ex for ex, t in zip(held, is_test) if t], sizes.test)
        split["validation"][name] = fixed_sample([ex for ex, t in zip(held, is_test) if not t], sizes.validation)
    general = sorted(load_examples(data / GENERAL).examples, key=lambda ex: bucket("general/" + ex.id))
    split["test"]["mmlu_general"] = general[: sizes.general]
    voice = [Example(id="voice/" + ex.id, kind="qa", source="own_voice", question=ex.question, answer="-")
             for ex in general[sizes.general : sizes.general + 2 * sizes.voice]]  # fmt: skip
    split["test"]["voice_prompts"] = voice[: sizes.voice]
    split["tuning"] = {"voice_prompts": voice[sizes.voice :]}  # the tuning tries' own-voice prompts
    return split


def disjointness(split: dict[str, dict[str, list[Example]]]) -> dict[str, int]:
    """Held-out (test and validation) items that share something with training: an id, a question text
    (normalised), a MedQuAD focus, a MEDIQA question id; and test items that share a group with
    validation. All must be 0."""
    train = [ex for group in split["train"].values() for ex in group]
    held = [ex for part in ("test", "validation") for group in split[part].values() for ex in group]

    def questions(examples: list[Example]) -> set[str]:
        return {normalise(example_text(ex)) for ex in examples} - {""}

    def meta(examples: list[Example], key: str) -> set[str]:
        return {normalise(ex.meta.get(key)) for ex in examples if ex.meta.get(key)}

    groups = {part: {f"{name}/{group_of(name, ex)}" for name, exs in split[part].items() if name in MEDICAL
                     for ex in exs} for part in ("train", "validation", "test")}  # fmt: skip
    return {
        "ids": len({ex.id for ex in train} & {ex.id for ex in held}),
        "questions": len(questions(train) & questions(held)),
        "medquad_foci": len(meta(train, "focus") & meta(held, "focus")),
        "mediqa_questions": len(meta(train, "question_id") & meta(held, "question_id")),
        "groups_train_held": len(groups["train"] & (groups["test"] | groups["validation"])),
        "groups_test_validation": len(groups["test"] & groups["validation"]),
    }


def test_sets(split: dict, voice: list[Example], sizes: Sizes) -> dict[str, list[Example]]:
    """Every evaluated set: the medical test files, MMLU general, the own-voice items, and the generated
    subsets ("<name>_gen") scored for ROUGE-L."""
    sets = {name: split["test"][name] for name in (*MEDICAL, "mmlu_general")}
    sets["own_voice"] = voice
    for name in GENERATED:
        sets[f"{name}_gen"] = split["test"][name][: sizes.rouge]
    return sets


# ----------------------------------------------------------------------------------------------------------
# Scoring one model


def evaluate(model, tokenizer, template: str, sets: dict[str, list[Example]], max_length: int,
             new_tokens: int, generate: bool = True) -> dict[str, dict]:  # fmt: skip
    """{set: {"metrics": {...}, "items": {id: {"hit" | "answer_nll" | "rougeL": value}}, "seconds"}}.
    Only the "_gen" sets generate answers of new_tokens (one token elsewhere: answer NLL needs none)."""
    from icft.evaluation.evaluate import evaluate_examples

    out = {}
    for name, examples in sets.items():
        is_gen = name.endswith("_gen")
        if not examples or (is_gen and not generate):
            continue
        start = time.perf_counter()
        if name == "own_voice":
            nll = own_voice_nll(model, tokenizer, template, examples, max_length)
            out[name] = {"metrics": {"answer_nll": statistics.mean(nll)},
                         "items": {ex.id: {"answer_nll": v} for ex, v in zip(examples, nll)},
                         "seconds": time.perf_counter() - start}  # fmt: skip
            continue
        result = evaluate_examples(model, tokenizer, examples, max_length=max_length, progress=False,
                                   template=template, max_new_tokens=new_tokens if is_gen else 1)  # fmt: skip
        keep = ("rougeL",) if is_gen else ("hit", "answer_nll")
        # ROUGE-L only where answers were generated in full (elsewhere they are one token long)
        wanted = ("rougeL",) if is_gen else tuple(m for m in (*DETAIL_METRICS, "accuracy_norm") if m != "rougeL")
        metrics = {k: v for k, v in result.scalars().items() if k in wanted}
        out[name] = {
            "metrics": metrics,
            "items": {r["id"]: {k: r[k] for k in keep if k in r} for r in result.items},
            "seconds": time.perf_counter() - start,
        }
    return out


def own_voice(work: Path, prompts: list[Example], config: RunConfig, new_tokens: int,
              file_name: str = "own_voice.jsonl") -> list[Example]:  # fmt: skip
    """The untrained model's greedy answers to the general prompts, as open qa items (cached in `work`)."""
    path = work / file_name
    if path.exists():
        return load_examples(path).examples
    from icft.data.formatting import resolve_template
    from icft.evaluation.evaluate import evaluate_examples
    from icft.runs import load_base

    model, tokenizer = load_base(config.model.name)
    template = resolve_template(tokenizer, config.data.template)
    result = evaluate_examples(model, tokenizer, prompts, max_length=config.model.max_length, progress=False,
                               template=template, max_new_tokens=new_tokens)  # fmt: skip
    voice = [dataclasses.replace(ex, answer=r["answer"].strip()) for ex, r in zip(prompts, result.items)
             if r.get("answer", "").strip()]  # fmt: skip
    write_jsonl(path, [ex.to_dict() for ex in voice])
    return voice


def own_voice_nll(model, tokenizer, template: str, voice: list[Example], max_length: int) -> list[float]:
    """Answer NLL per token of the untrained model's own greedy answers. Scored on the answer's tokens alone,
    without the end-of-turn text: the answers were cut at a token budget, where the untrained model would
    not have ended its turn, so an end-of-turn token would swamp the figure."""
    from icft.data.formatting import prompt_and_target
    from icft.likelihood import answer_nll

    pairs = [(prompt_and_target(ex, tokenizer, template)[0], str(ex.answer)) for ex in voice]
    return answer_nll(model, tokenizer, pairs, max_length, template=template)


def set_lora_scale(model, alpha: float) -> None:
    """WiSE-FT for a LoRA adapter: every LoRA layer's scaling becomes alpha x lora_alpha / r."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.scaling:
                module.set_scale(adapter, alpha)


# ----------------------------------------------------------------------------------------------------------
# Runs


@dataclass
class Job:
    method: str  # a method, or a try "<method>@<tag>"
    seed: int
    wise: tuple[float, ...] = ()
    validation_only: bool = False  # a tuning try: scored on validation, not on test


def run_dir(work: Path, method: str, seed: int) -> Path:
    return work / "base" if method == "base" else work / method / f"seed{seed}"


def tuned_as(method: str) -> str:
    """Whose tries a method takes: the ablations take ICFT's."""
    return REFERENCE if method.startswith(REFERENCE + "-") else method


def config_of(config: RunConfig, name: str, seed: int) -> RunConfig:
    """The run config of a method or of a try "<method>@<tag>" (the method's config plus the try's keys)."""
    from icft.config import check

    method, _, tag = name.partition("@")
    cfg = method_config(config, method, seed)
    # an ablation keeps what it takes away (icft-no-ltm stays without LTM replay under ICFT's tries)
    ablated = METHOD_OVERRIDES[method] if tuned_as(method) != method else {}
    for key, value in TRIES[tuned_as(method)][tag].items() if tag else ():
        if key == "lr_scale":
            cfg.train.lr *= value
        elif key not in ablated:
            section, key_name = key.split(".")
            setattr(getattr(cfg, section), key_name, value)
    check(cfg)
    return cfg


def wise_dir(work: Path, method: str, alpha: float, seed: int) -> Path:
    return work / "wise" / f"{method}-a{alpha:g}" / f"seed{seed}"


def run_job(config: RunConfig, job: Job, work: Path, sets: dict[str, list[Example]], sizes: Sizes,
            wise_sets: tuple[str, ...] = (), validation_sets: dict | None = None) -> dict:  # fmt: skip
    """Train (nothing for base), evaluate, then evaluate each WiSE-FT point; every result kept as eval.json
    in its folder, written last (a tuning try: validation.json, from validation_sets). Returns {"train_s",
    "eval_s"} of what this call did."""
    from icft.data.formatting import resolve_template
    from icft.runs import load_base, load_run

    folder = run_dir(work, job.method, job.seed)
    cfg = config_of(config, job.method, job.seed)
    timing: dict[str, float] = {}
    todo_wise = [a for a in job.wise if not (wise_dir(work, job.method, a, job.seed) / "eval.json").exists()]
    done = folder / ("validation.json" if job.validation_only else "eval.json")
    if done.exists() and not todo_wise:
        return timing
    start = time.perf_counter()
    if job.method == "base":
        model, tokenizer = load_base(cfg.model.name)
    else:
        status = run_status(folder)
        if status != "trained" and not (folder / "eval.json").exists():
            train_run(cfg, folder, status)
            timing["train_s"] = time.perf_counter() - start
        model, tokenizer = load_run(folder)
    template = resolve_template(tokenizer, cfg.data.template)
    max_length = cfg.model.max_length
    if job.validation_only:
        start = time.perf_counter()
        scores = evaluate(model, tokenizer, template, validation_sets, max_length, sizes.new_tokens, generate=False)
        timing["validation_s"] = time.perf_counter() - start
        write_json(done, {"method": job.method, "seed": job.seed, "lr": cfg.train.lr, "sets": scores, **timing})
        return timing
    if not (folder / "eval.json").exists():
        start = time.perf_counter()
        scores = evaluate(model, tokenizer, template, sets, max_length, sizes.new_tokens)
        timing["eval_s"] = time.perf_counter() - start
        record = {"method": job.method, "seed": job.seed, "lr": cfg.train.lr, "sets": scores, **timing}
        if job.method != "base":
            summary = json.loads((folder / "summary.json").read_text())
            record["train_wall_s"] = summary.get("wall_s")
            record["stage_eval"] = json.loads((folder / "stage_eval.json").read_text())
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "eval.json", record)
    for alpha in todo_wise:
        start = time.perf_counter()
        set_lora_scale(model, alpha)
        chosen = {k: v for k, v in sets.items() if k in wise_sets} if wise_sets else sets
        scores = evaluate(model, tokenizer, template, chosen, max_length, sizes.new_tokens, generate=False)
        seconds = time.perf_counter() - start
        record = {"method": job.method, "seed": job.seed, "alpha": alpha, "sets": scores, "eval_s": seconds}
        write_json(wise_dir(work, job.method, alpha, job.seed) / "eval.json", record)
        timing[f"wise_{alpha:g}_s"] = seconds
    return timing


def plan_jobs(methods: list[str], seeds: list[int], wise: tuple[float, ...]) -> list[Job]:
    """Seed by seed: a benchmark cut short holds whole seeds of every method."""
    jobs = [Job("base", seeds[0])] if "base" in methods else []
    for seed in seeds:
        jobs += [Job(m, seed, wise if m.partition("@")[0] in WISE_OF else ()) for m in methods if m != "base"]
    return jobs


def tries(method: str) -> list[str]:
    """A method's tuning tries: its defaults first."""
    return [method] + [f"{method}@{tag}" for tag in TRIES.get(method, {})]


def trade(record: dict, base: dict) -> dict[str, float]:
    """A try's validation figures against the untrained model's: medical answer NLL drop (every validation
    item of the medical files), own-voice NLL drop (the validation own-voice prompts), and their sum, the
    figure a try is chosen by: medical skill gained plus general skill kept, in the same unit (nats per
    answer token), equal weights."""

    def mean_nll(scores: dict, names: tuple[str, ...]) -> float:
        values = [v["answer_nll"] for n in names if n in scores for v in scores[n]["items"].values()
                  if "answer_nll" in v]  # fmt: skip
        return statistics.mean(values)

    medical = mean_nll(base["sets"], tuple(MEDICAL)) - mean_nll(record["sets"], tuple(MEDICAL))
    voice = mean_nll(base["sets"], ("own_voice",)) - mean_nll(record["sets"], ("own_voice",))
    # shown beside it, not chosen by: the drop on the open answers alone, the table's medical NLL figure
    generated = mean_nll(base["sets"], GENERATED) - mean_nll(record["sets"], GENERATED)
    return {"medical_nll_drop": medical, "own_voice_drop": voice, "trade": medical + voice,
            "open_answers_nll_drop": generated}  # fmt: skip


def select(work: Path, methods: list[str]) -> dict[str, dict]:
    """{method: {"chosen": name, "tries": {name: trade figures}}} for each method whose tries are all scored."""
    base_path = run_dir(work, "base", 0) / "validation.json"
    if not base_path.exists():
        return {}
    base = json.loads(base_path.read_text())
    out = {}
    for method in methods:
        if method == "base" or method not in TRIES:
            continue
        paths = {name: run_dir(work, name, 0) / "validation.json" for name in tries(method)}
        if not all(path.exists() for path in paths.values()):
            continue
        records = {name: json.loads(path.read_text()) for name, path in paths.items()}
        scored = {name: {**trade(record, base), "lr": record.get("lr"),
                         "seconds": record.get("train_s", 0.0) + record.get("validation_s", 0.0)}
                  for name, record in records.items()}  # fmt: skip
        out[method] = {"chosen": max(scored, key=lambda n: scored[n]["trade"]), "tries": scored}
    return out


def tuning_table(selection: dict[str, dict]) -> list[str]:
    lines = ["| method | try | lr | validation medical NLL drop | own-voice drop | trade (sum) | chosen | "
             "open answers only: NLL drop | open answers only: trade |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
    for method, found in selection.items():
        for name, t in found["tries"].items():
            tag = name.partition("@")[2] or "defaults"
            chosen = "yes" if name == found["chosen"] else ""
            open_trade = t["open_answers_nll_drop"] + t["own_voice_drop"]
            lines.append(f"| {method} | {tag} | {t.get('lr', 0):g} | {t['medical_nll_drop']:+.3f} | "
                         f"{t['own_voice_drop']:+.3f} | {t['trade']:+.3f} | {chosen} | "
                         f"{t['open_answers_nll_drop']:+.3f} | {open_trade:+.3f} |")  # fmt: skip
    return lines


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ["ICFT_QUIET"] = "1"


def run_all(config: RunConfig, jobs: list[Job], work: Path, sets: dict, sizes: Sizes, n_jobs: int,
            threads: int, wise_sets: tuple[str, ...] = (), validation_sets: dict | None = None) -> None:  # fmt: skip
    """Every job, each in a fresh process (its own peak memory), n_jobs side by side."""
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_worker_init, initargs=(threads,),
                             max_tasks_per_child=1) as pool:  # fmt: skip
        futures = {
            pool.submit(run_job, config, job, work, sets, sizes, wise_sets, validation_sets): job for job in jobs
        }
        for future in as_completed(futures):
            job = futures[future]
            try:
                timing = future.result()
            except Exception as error:  # one failed run is reported; the others still finish
                print(f"FAILED {job.method} seed {job.seed}: {type(error).__name__}: {error}", flush=True)
                continue
            said = ", ".join(f"{k} {v:.0f}" for k, v in timing.items()) or "kept"
            print(f"[{time.perf_counter() - started:.0f}s] {job.method} seed {job.seed}: {said}", flush=True)


def load_evals(work: Path, methods: list[str], seeds: list[int], wise: tuple[float, ...]) -> dict[str, dict]:
    """{name: {seed: eval.json}} of every finished run; WiSE points are named "<method> a=<alpha>"."""
    out: dict[str, dict] = {}
    for method in methods:
        for seed in seeds[:1] if method == "base" else seeds:
            path = run_dir(work, method, seed) / "eval.json"
            if path.exists():
                out.setdefault(method, {})[seed] = json.loads(path.read_text())
        for alpha in wise if method.partition("@")[0] in WISE_OF else ():
            for seed in seeds:
                path = wise_dir(work, method, alpha, seed) / "eval.json"
                if path.exists():
                    out.setdefault(f"{method} a={alpha:g}", {})[seed] = json.loads(path.read_text())
    return out


# ----------------------------------------------------------------------------------------------------------
# Summary, report and plot (pure functions of the evals: tested on synthetic numbers)


def composite_items(record: dict, composite: str) -> dict[str, float]:
    """One run's per-item values of a composite figure, signed so that higher is better."""
    sets, key, sign, _ = COMPOSITES[composite]
    return {f"{name}/{item}": sign * values[key] for name in sets if name in record["sets"]
            for item, values in record["sets"][name]["items"].items() if key in values}  # fmt: skip


def _diff(d: Difference | None) -> dict | None:
    return None if d is None else d.to_json()


def summarise(evals: dict[str, dict], reference: str = REFERENCE) -> dict:
    """{"vs_base": {method: {composite: diff}}, "vs_reference": {...}, "detail": {method: {set/metric:
    {"mean", "low", "high"}}}, "seeds": {method: [...]}}. Differences are paired over seeds and items;
    the untrained model (one run) pairs with every seed."""
    base = next(iter(evals["base"].values()))
    out: dict[str, Any] = {"vs_base": {}, "vs_reference": {}, "detail": {}, "seeds": {}}
    for method, runs in evals.items():
        out["seeds"][method] = sorted(runs)
        out["detail"][method] = detail(runs)
        if method == "base":
            continue
        base_runs = dict.fromkeys(runs, base)
        out["vs_base"][method] = {c: _paired(runs, base_runs, c) for c in COMPOSITES}
        if reference in evals and method != reference:
            out["vs_reference"][method] = {c: _paired(evals[reference], runs, c) for c in COMPOSITES}
    return out


def _paired(ours: dict[int, dict], theirs: dict[int, dict], composite: str) -> dict | None:
    """ours minus theirs on a composite figure, paired by seed and item."""
    found = paired_items({s: composite_items(r, composite) for s, r in ours.items()},
                         {s: composite_items(r, composite) for s, r in theirs.items()})  # fmt: skip
    return _diff(found)


def detail(runs: dict[int, dict]) -> dict[str, dict]:
    """Each set's metrics: mean over seeds and, with 2+ seeds, a 95% t interval over seeds."""
    values: dict[str, list[float]] = {}
    for record in runs.values():
        for name, scored in record["sets"].items():
            for metric, value in scored["metrics"].items():
                if metric in DETAIL_METRICS and value is not None and math.isfinite(value):
                    values.setdefault(f"{name}/{metric}", []).append(value)
    out = {}
    for key, vs in values.items():
        zeros = dict.fromkeys(range(len(vs)), 0.0)
        spread = paired_runs(dict(enumerate(vs)), zeros) if len(vs) > 1 else None
        out[key] = {"mean": statistics.mean(vs), "n_seeds": len(vs),
                    "low": spread.low if spread else None, "high": spread.high if spread else None}  # fmt: skip
    return out


def fmt(d: dict | None, scale: float = 1.0, bold: bool = True) -> str:
    """mean [low, high], bold where the interval excludes 0."""
    if d is None:
        return "–"
    text = f"{scale * d['mean']:+.3f} [{scale * d['low']:+.3f}, {scale * d['high']:+.3f}]"
    return f"**{text}**" if bold and d["significant"] else text


def main_table(summary: dict, reference: str = REFERENCE) -> list[str]:
    """The one table: each method against the untrained model, then the reference minus each method."""
    labels = [COMPOSITES[c][3] for c in COMPOSITES]
    header = ["method", "seeds", *[f"{label} vs base" for label in labels],
              *[f"{reference} − method: {label}" for label in labels]]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---|---:|" + "---:|" * (len(header) - 2)]
    for method, row in summary["vs_base"].items():
        theirs = summary["vs_reference"].get(method, {})
        cells = [fmt(row.get(c)) for c in COMPOSITES]
        cells += [fmt(theirs.get(c)) if theirs else "–" for c in COMPOSITES]
        lines.append(f"| {method} | {len(summary['seeds'][method])} | " + " | ".join(cells) + " |")
    return lines


def detail_table(summary: dict, floor_rows: dict[str, dict[str, float]]) -> list[str]:
    """Each test set's own metrics (mean over seeds), with the trivial baselines on the same items."""
    methods = list(summary["detail"])
    keys = list(dict.fromkeys(k for m in methods for k in summary["detail"][m]))
    names = sorted({name for row in floor_rows.values() for name in row})
    lines = ["| set/metric | " + " | ".join(methods + names) + " |", "|---|" + "---:|" * (len(methods) + len(names))]
    for key in keys:
        cells = []
        for m in methods:
            d = summary["detail"][m].get(key)
            cells.append("–" if d is None else f"{d['mean']:.3f}")
        cells += [f"{floor_rows.get(key, {})[n]:.3f}" if n in floor_rows.get(key, {}) else "–" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def floor_rows(sets: dict[str, list[Example]]) -> dict[str, dict[str, float]]:
    """{set/metric: {floor: value}}: the trivial baselines on exactly the evaluated items."""
    out: dict[str, dict[str, float]] = {}
    for name, examples in sets.items():
        if not examples:
            continue
        if examples[0].options or examples[0].kind == "preference":
            metric = "preference_accuracy" if examples[0].kind == "preference" else "accuracy"
            found = floors(examples)
            out[f"{name}/{metric}"] = {k: v for k, v in found.items() if k != "majority_macro_f1"}
            if "majority_macro_f1" in found:
                out[f"{name}/macro_f1"] = {"majority": found["majority_macro_f1"]}
        elif name.endswith("_gen"):
            rouge = trivial_baselines(examples).get("majority", {}).get("rougeL")
            if rouge is not None:
                out[f"{name}/rougeL"] = {"constant answer": rouge}
    return out


def stage_matrix_lines(evals: dict[str, dict], method: str) -> list[str]:
    """A method's validation answer NLL per stage after each stage, mean over seeds: does it forget?"""
    runs = [r["stage_eval"] for r in evals.get(method, {}).values() if "stage_eval" in r]
    if not runs:
        return []
    stages = runs[0]["stages"]
    lines = [f"| {method}: after stage | " + " | ".join(f"{s} NLL" for s in stages) + " |",
             "|---|" + "---:|" * len(stages)]  # fmt: skip
    for i, stage in enumerate(stages):
        cells = []
        for j in range(len(stages)):
            vs = [r["nll_matrix"][i][j] for r in runs if r["nll_matrix"][i][j] is not None]
            cells.append(f"{statistics.mean(vs):.3f}" if vs else "–")
        lines.append(f"| {i + 1} ({stage}) | " + " | ".join(cells) + " |")
    return lines


def plain_words(summary: dict, reference: str = REFERENCE) -> list[str]:
    """One line per comparison: where the reference is ahead, behind, or within noise."""
    out = []
    for method, row in summary["vs_reference"].items():
        if " a=" in method:
            continue
        said = []
        for c, d in row.items():
            if d is None:
                continue
            verdict = "ahead" if d["low"] > 0 else "behind" if d["high"] < 0 else "no clear difference"
            said.append(f"{COMPOSITES[c][3]}: {verdict} ({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])")
        out.append(f"- {reference} against {method}: " + "; ".join(said) + ".")
    return out


def plot(summary: dict, path: Path, axes: tuple[str, str] = PLOT_AXES) -> None:
    """Medical gain (x) against general retention change (y), the untrained model at the origin: one point
    per method with its 95% intervals, the WiSE-FT points of a method joined by a line (alpha 0 = base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, y_key = axes
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.plot([0], [0], "ks", label="base (untrained)")
    rows = summary["vs_base"]
    colours = {}
    for method, row in rows.items():
        if " a=" in method or row.get(x_key) is None or row.get(y_key) is None:
            continue
        x, y = row[x_key], row[y_key]
        bars = ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["low"]], [x["high"] - x["mean"]]],
                           yerr=[[y["mean"] - y["low"]], [y["high"] - y["mean"]]], fmt="o", capsize=3,
                           label=method)  # fmt: skip
        colours[method] = bars[0].get_color()
    wise_of = [m for m in rows if " a=" not in m and m.partition("@")[0] in WISE_OF]
    for index, method in enumerate(wise_of):
        points = [(float(m.split("a=")[1]), r) for m, r in rows.items() if m.startswith(f"{method} a=")]
        if not points or method not in rows:
            continue
        points = [(0.0, {x_key: {"mean": 0.0}, y_key: {"mean": 0.0}}), *sorted(points, key=lambda p: p[0]),
                  (1.0, rows[method])]  # fmt: skip
        xs = [p[1][x_key]["mean"] for p in points]
        ys = [p[1][y_key]["mean"] for p in points]
        ax.plot(xs, ys, "--.", color=colours.get(method, "0.5"), lw=1, label=f"{method} WiSE-FT (alpha 0..1)")
        for alpha, x, y in zip([p[0] for p in points], xs, ys):
            if 0 < alpha < 1:
                ax.annotate(f"a={alpha:g}", (x, y), textcoords="offset points", xytext=(5, 3 - 11 * index), fontsize=7,
                            color=colours.get(method, "0.5"))  # fmt: skip
    ax.set_xlabel(f"medical gain: {COMPOSITES[x_key][3]} vs base (higher = better)")
    ax.set_ylabel(f"general retention: {COMPOSITES[y_key][3]} vs base (below 0 = forgetting)")
    ax.set_title("Medical skill gained against general skill kept (95% intervals)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(summary: dict, evals: dict, floors_by: dict, setup: list[str], notes: list[str],
           reference: str = REFERENCE) -> str:  # fmt: skip
    lines = ["# Does ICFT help a real model? (issue 27)", "", *setup, "",
             "Each figure: change against the untrained model (higher = better), mean [95% bootstrap interval "
             "over seeds and items, paired]; **bold** where the interval excludes 0. Medical accuracy pools the "
             "PubMedQA, MMLU medical and MEDIQA test items; medical answer NLL drop pools ChatDoctor and MedQuAD "
             "(nats per answer token); own-voice NLL drop is minus the rise in NLL of the untrained model's own "
             "greedy answers to general questions (negative = forgetting). `a=` rows are WiSE-FT points (the "
             "method's final adapter scaled by alpha, no training). ICFT minus a method is paired over the seeds "
             "both have.", "",
             *main_table(summary, reference), "", "In plain words (from the table, ICFT minus each method):",
             "", *plain_words(summary, reference), ""]  # fmt: skip
    lines += ["![medical gain against general retention](plot.png)", "", "## Per test set", "",
              "Mean over seeds (answer NLL: lower is better); the trivial baselines score the same items.", "",
              *detail_table(summary, floors_by), ""]  # fmt: skip
    for method in [m for m in evals if m.partition("@")[0] == "lora-sequential"] + [reference]:
        matrix = stage_matrix_lines(evals, method)
        if matrix:
            lines += [f"Validation answer NLL per stage after each stage, {method} (mean over seeds; a rise down "
                      "a column is forgetting of that stage):", "", *matrix, ""]  # fmt: skip
    return "\n".join(lines + notes) + "\n"


# ----------------------------------------------------------------------------------------------------------


def set_metrics(evals: dict[str, dict]) -> dict[str, dict]:
    """{model: {seed: {set: metrics}}}: every run's own figures, for results.json."""
    out: dict[str, dict] = {}
    for method, runs in evals.items():
        out[method] = {seed: {name: v["metrics"] for name, v in r["sets"].items()} for seed, r in runs.items()}
    return out


def time_line(times: dict[str, dict[str, float]]) -> str:
    """Measured seconds: training (its own clock, summary.json) and evaluation, per run and in all."""

    def mean_of(key: str, wise: bool) -> list[float]:
        return [t[key] for name, t in times.items() if key in t and (" a=" in name) == wise]

    train, evals, wise = mean_of("train_wall_s", False), mean_of("eval_s", False), mean_of("eval_s", True)
    parts = [f"training {statistics.mean(train):.0f} s per run ({len(train)} runs)" if train else "",
             f"evaluation {statistics.mean(evals):.0f} s per model ({len(evals)})" if evals else "",
             f"WiSE-FT point {statistics.mean(wise):.0f} s ({len(wise)})" if wise else "",
             f"{(sum(train) + sum(evals) + sum(wise)) / 60:.0f} process-minutes in all"]  # fmt: skip
    return "Measured: " + ", ".join(p for p in parts if p) + "."


def config_key(config: RunConfig, sizes: Sizes) -> str:
    tree = config.to_dict()
    tree.pop("compare")
    return hashlib.sha256(json.dumps([tree, dataclasses.asdict(sizes)], sort_keys=True).encode()).hexdigest()[:10]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/real-smollm2.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--methods", help="default: the config's compare.methods")
    parser.add_argument("--seeds", help="comma-separated; default: the config's compare.seeds")
    parser.add_argument("--wise", default="0.25,0.5,0.75", help="WiSE-FT alphas ('' for none)")
    for name, value in dataclasses.asdict(Sizes()).items():
        if isinstance(value, int):
            parser.add_argument(f"--{name.replace('_', '-')}-items" if name in ("test", "rouge", "general", "voice")
                                else f"--{name.replace('_', '-')}", dest=f"size_{name}", type=int, default=value,
                                help=f"Sizes.{name} (default {value})")  # fmt: skip
    parser.add_argument("--wise-sets", default="", help="test sets the WiSE-FT points are scored on (default all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: cores / jobs)")
    parser.add_argument("--work-dir", default="runs/real-smollm2")
    parser.add_argument("--out", help="write results.json, report.md and plot.png here")
    parser.add_argument("--label", default="", help="a line put in bold at the top of the report")
    parser.add_argument("--report-only", action="store_true", help="summarise the finished runs, train nothing")
    parser.add_argument("--tune", action="store_true",
                        help="first train each method's tries (TRIES) at the first seed and score them on validation; "
                        "every method whose tries are all scored then runs with its chosen try")  # fmt: skip
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / MEDICAL["pubmedqa"][0]).exists():
        print(f"skipped: {data} does not hold the shared medical data ({MEDICAL['pubmedqa'][0]} missing)")
        return 0
    sizes = Sizes(**{k: getattr(args, f"size_{k}") for k, v in dataclasses.asdict(Sizes()).items()
                     if isinstance(v, int)})  # fmt: skip
    try:  # a bad config value or an unknown method: one line and exit 2, before any data or model loads
        config = load_config(args.config, args.set)
        methods = args.methods.split(",") if args.methods else list(config.compare.methods)
        for method in methods:
            config_of(config, method, 0)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(config.compare.seeds)
    wise = tuple(float(a) for a in args.wise.split(",") if a.strip())
    work = Path(args.work_dir) / f"{config.name}-{config_key(config, sizes)}"
    work.mkdir(parents=True, exist_ok=True)

    split = build(data, sizes)
    overlaps = disjointness(split)
    if any(overlaps.values()):
        raise SystemExit(f"error: held-out items overlap training: {overlaps}")
    for part in ("train", "validation"):
        write_jsonl(work / f"{part}.jsonl", [ex.to_dict() for group in split[part].values() for ex in group])
    config.data.train, config.data.validation = [str(work / "train.jsonl")], [str(work / "validation.jsonl")]
    counts = {part: {k: len(v) for k, v in split[part].items()} for part in split}
    print(f"work folder {work}\n" + "\n".join(f"{p}: {c}" for p, c in counts.items()), flush=True)
    print(f"held-out/train overlaps: {overlaps}", flush=True)

    start = time.perf_counter()
    voice = own_voice(work, split["test"]["voice_prompts"], config, sizes.new_tokens)
    sets = test_sets(split, voice, sizes)
    validation_voice = own_voice(work, split["tuning"]["voice_prompts"], config, sizes.new_tokens,
                                 "own_voice_validation.jsonl")  # fmt: skip
    validation_sets = {**{name: split["validation"][name] for name in MEDICAL}, "own_voice": validation_voice}
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    if args.tune and not args.report_only:
        jobs = [Job(name, seeds[0], validation_only=True) for m in methods for name in (["base"] if m == "base"
                else tries(m) if m in TRIES else [])]  # fmt: skip
        run_all(config, jobs, work, sets, sizes, args.jobs, threads, (), validation_sets)
    selection = select(work, methods)
    if selection:
        print("\n".join(tuning_table(selection)), flush=True)
    chosen = {m: selection[tuned_as(m)]["chosen"].replace(tuned_as(m), m, 1) if tuned_as(m) in selection else m
              for m in methods}  # fmt: skip
    methods = [chosen[m] for m in methods]
    reference = chosen.get(REFERENCE, REFERENCE)
    if not args.report_only:
        wise_sets = tuple(k for k in args.wise_sets.split(",") if k)
        run_all(config, plan_jobs(methods, seeds, wise), work, sets, sizes, args.jobs, threads, wise_sets)
    evals = load_evals(work, methods, seeds, wise)
    if "base" not in evals:
        print("no finished base run yet: nothing to summarise")
        return 1
    summary = summarise(evals, reference)
    floors_by = floor_rows(sets)
    times = {f"{m}/seed{s}": {k: r[k] for k in ("train_s", "train_wall_s", "eval_s") if r.get(k) is not None}
             for m, runs in evals.items() for s, r in runs.items()}  # fmt: skip
    command = "python benchmarks/real_smollm2.py " + " ".join(sys.argv[1:])
    setup = [f"`{command}`", "",
             f"Model {config.model.name}, max length {config.model.max_length}, LoRA r={config.peft.r} on "
             f"{config.peft.target_modules}, {config.train.max_steps} steps of batch {config.train.batch_size}, "
             f"lr {config.train.lr:g} unless a chosen try says otherwise, seeds {seeds}; test items per medical file "
             f"{sizes.test} (ROUGE-L on {sizes.rouge}, {sizes.new_tokens} new tokens), MMLU general {sizes.general}, "
             f"own-voice prompts {len(voice)}. Test sets: "
             + ", ".join(f"{k} {len(v)}" for k, v in sets.items()) + ".", "", time_line(times)]  # fmt: skip
    if selection:
        tuning_s = sum(t["seconds"] for found in selection.values() for t in found["tries"].values())
        setup[-1] += f" Tuning (other tries' training, every try's validation): {tuning_s / 60:.0f} process-minutes."
    if args.label:
        setup = [f"**{args.label}**", "", *setup]
    notes = [f"Held-out/train overlaps (all 0): {overlaps}. Work folder: `{work}`."]
    if selection:
        notes = ["## Tuning on validation", "",
                 "Every method had the same number of tries (its defaults and two others, `TRIES` in the script), "
                 "each trained at seed 0 and scored on validation only (every validation item of the medical files; "
                 f"{len(validation_voice)} own-voice prompts that are not the test's); the chosen try has the best "
                 "trade, the sum of the two drops against the untrained model (nats per answer token).", "",
                 *tuning_table(selection), "", *notes]  # fmt: skip
    text = report(summary, evals, floors_by, setup, notes, reference)
    print(text)
    if args.out:
        out = Path(args.out)
        write_json(out / "results.json", {"command": command, "config": config.to_dict(),
                                          "sizes": dataclasses.asdict(sizes), "counts": counts,
                                          "overlaps": overlaps, "summary": summary, "floors": floors_by,
                                          "times": times, "elapsed_s": time.perf_counter() - start,
                                          "selection": selection,
                                          "metrics": set_metrics(evals)})  # fmt: skip
        write_text(out / "report.md", text)
        plot(summary, out / "plot.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
