"""The untrained base models on the shared real data, beside the floors that need no model.

Each model is scored by the one evaluation path (`icft.evaluation.evaluate.evaluate_examples`, with the
prompt template its tokenizer calls for) on the dev files in ../shared/data (read in place, never copied):
  pubmedqa     pubmedqa/train.jsonl       yes/no/maybe questions on an abstract: accuracy, macro-F1
  mmlu_medical mmlu_medical/dev.jsonl     4-option multiple choice: accuracy
  mmlu_general mmlu_general/dev.jsonl     4-option multiple choice: accuracy
  mediqa2019   mediqa2019/pairs.jsonl     human-judged answer pairs: preference accuracy (length-normalised)
  medquad      medquad/qa.jsonl           open answers: answer NLL (a fixed random sample of the 14,688)
Beside them, on the same items: `random` (expected score of a uniform guess), `majority` (one constant
answer), `position` (the best fixed option position) from `trivial_baselines`, and for the preference pairs
`longer` (pick the longer answer: the `longest option` cheat). A model is above its floor where the low end
of its 95% interval (Wilson, over items) is above the best of these. The gap between the two models gets a
paired bootstrap interval over items (`icft.evaluation.statistics.paired_items`).

Answer NLL is per token of each model's own tokenizer, so it is also given per character of the reference
answer (summed NLL / characters), which two tokenizers share.

    python benchmarks/base_models.py --max-examples 40 --out benchmarks/results/base-models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from icft.data.formatting import prompt_and_target, reference, resolve_template  # noqa: E402
from icft.data.kinds import choice_type  # noqa: E402
from icft.data.loaders import load_examples  # noqa: E402
from icft.data.prompt_format import PromptFormat  # noqa: E402
from icft.data.tokenize import encode_pair  # noqa: E402
from icft.evaluation.baselines import cheat_scores, longest_option, trivial_baselines  # noqa: E402
from icft.evaluation.evaluate import EvalSettings, evaluate_examples  # noqa: E402
from icft.evaluation.statistics import paired_items  # noqa: E402
from icft.io import write_json, write_text  # noqa: E402
from icft.models import MINILM_DECODER, SMOLLM2, load_model  # noqa: E402
from icft.tables import cell, markdown  # noqa: E402

FILES = {
    "pubmedqa": "pubmedqa/train.jsonl",
    "mmlu_medical": "mmlu_medical/dev.jsonl",
    "mmlu_general": "mmlu_general/dev.jsonl",
    "mediqa2019": "mediqa2019/pairs.jsonl",
    "medquad": "medquad/qa.jsonl",
}
FLOORS = ("random", "majority", "position", "longer")
CHOICE_METRICS = ("accuracy", "accuracy_norm", "macro_f1", "preference_accuracy")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def sample(examples: list, n: int | None, seed: str) -> list:
    """All examples, or a fixed random `n` of them in file order (a file's first n can be one subject)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def load_files(data: Path, max_examples: int | None, medquad_sample: int, seed: int) -> dict[str, list]:
    out = {}
    for name, path in FILES.items():
        n = min(medquad_sample, max_examples or medquad_sample) if name == "medquad" else max_examples
        out[name] = sample(load_examples(data / path).examples, n, f"{seed}/{name}")
    return out


def wilson(hits: list[int]) -> tuple[float, float]:
    ci = stats.binomtest(int(sum(hits)), len(hits)).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def t_interval(values: list[float]) -> tuple[float, float]:
    mean, n = float(np.mean(values)), len(values)
    if n < 2:
        return mean, mean
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def floors(examples: list) -> dict[str, float]:
    """Each no-model rule's accuracy (preference accuracy on pairs) on exactly these items."""
    trivial = trivial_baselines(examples)
    metric = "preference_accuracy" if choice_type(examples[0]) == "preference" else "accuracy"
    out = {name: trivial.get(key, {}).get(metric) for name, key in
           (("random", "random"), ("majority", "majority"), ("position", "position-prior"))}  # fmt: skip
    if metric == "preference_accuracy":
        out["longer"] = cheat_scores({"longer": longest_option}, examples)["longer"]
    if examples[0].options and "macro_f1" in trivial.get("majority", {}):
        out["majority_macro_f1"] = trivial["majority"]["macro_f1"]
    return {k: v for k, v in out.items() if v is not None}


def score_model(name: str, files: dict[str, list], max_length: int, batch_size: int, work: Path | None) -> dict:
    """Per file: per-item hits and answer NLLs, the metrics, and the seconds it took. Each file's result is
    kept in `work` (keyed by the model, the items and max_length) and reused by a later run."""
    model, tokenizer = load_model(name)
    template = resolve_template(tokenizer, "auto")
    out = {"template": template, "files": {}}
    for file, examples in files.items():
        key = hashlib.sha256(json.dumps([name, max_length, [ex.id for ex in examples]]).encode()).hexdigest()[:16]
        kept = work / f"{name.replace('/', '--')}-{file}-{key}.json" if work else None
        if kept and kept.exists():
            out["files"][file] = json.loads(kept.read_text())
            continue
        start = time.perf_counter()
        # MedQuAD is scored for answer NLL only: one generated token keeps the generation pass cheap.
        settings = EvalSettings(batch_size, max_new_tokens=1 if file == "medquad" else 64)
        result = evaluate_examples(model, PromptFormat(tokenizer, template, max_length), examples, settings)
        seconds = time.perf_counter() - start
        n_tokens = [encode_pair(tokenizer, *prompt_and_target(ex, tokenizer, template), max_length, add_eos=False,
                                template=template).n_target for ex in examples]  # fmt: skip
        nll = [r["answer_nll"] for r in result.items]
        chars = [max(1, len(reference(ex))) for ex in examples]
        out["files"][file] = {
            "n": len(examples),
            "seconds": seconds,
            "hits": [r["hit"] for r in result.items if "hit" in r],
            "answer_nll": nll,
            "nll_per_char": [v * k / c for v, k, c in zip(nll, n_tokens, chars)],
            "metrics": {k: v for k, v in result.scalars().items() if k in CHOICE_METRICS},
        }
        if kept:
            write_json(kept, out["files"][file])
        print(f"  {name} {file}: {len(examples)} items, {seconds:.0f} s", file=sys.stderr, flush=True)
    del model
    return out


def summarise(scored: dict[str, dict], files: dict[str, list]) -> dict:
    """The figures the tables show, per file: each model's accuracy / NLL with intervals, floors, gaps."""
    names = list(scored)
    out = {}
    for file, examples in files.items():
        row: dict = {"n": len(examples), "models": {}}
        for name in names:
            f = scored[name]["files"][file]
            entry = {"seconds": f["seconds"], **f["metrics"]}
            if f["hits"]:
                entry["accuracy"] = float(np.mean(f["hits"]))
                entry["accuracy_ci"] = wilson(f["hits"])
            entry["answer_nll"] = float(np.mean(f["answer_nll"]))
            entry["answer_nll_ci"] = t_interval(f["answer_nll"])
            entry["nll_per_char"] = float(np.mean(f["nll_per_char"]))
            entry["nll_per_char_ci"] = t_interval(f["nll_per_char"])
            row["models"][name] = entry
        if scored[names[0]]["files"][file]["hits"]:
            row["floors"] = floors(examples)
            row["floor"] = max(v for k, v in row["floors"].items() if k in FLOORS)
            for name in names:
                row["models"][name]["above_floor"] = row["models"][name]["accuracy_ci"][0] > row["floor"]
        if len(names) == 2:
            a, b = (scored[n]["files"][file] for n in names)
            key = "hits" if a["hits"] else "nll_per_char"
            gap = paired_items({0: dict(enumerate(a[key]))}, {0: dict(enumerate(b[key]))})
            row["gap"] = {"metric": "accuracy" if a["hits"] else "nll_per_char", **gap.to_json()}
        out[file] = row
    return out


def fmt_ci(value: float, ci: tuple[float, float], digits: int = 3) -> str:
    return f"{value:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def tables(summary: dict, names: list[str]) -> str:
    choice = [f for f, row in summary.items() if "floors" in row]
    gap = [f"{names[0]} - {names[1]} [95% CI]"] if len(names) == 2 else []
    rows = []
    for file in choice:
        row = summary[file]
        cells = [fmt_ci(row["models"][n]["accuracy"], row["models"][n]["accuracy_ci"])
                 + (" *" if row["models"][n]["above_floor"] else "") for n in names]  # fmt: skip
        cells += [cell(row["floors"].get(k)) for k in FLOORS]
        if "gap" in row:
            cells.append(fmt_ci(row["gap"]["mean"], (row["gap"]["low"], row["gap"]["high"]), 3))
        rows.append([file, str(row["n"]), *cells])
    nll_rows = []
    for file, row in summary.items():
        cells = []
        for n in names:
            m = row["models"][n]
            cells += [fmt_ci(m["answer_nll"], m["answer_nll_ci"], 2), fmt_ci(m["nll_per_char"], m["nll_per_char_ci"])]
        nll_rows.append([file, str(row["n"]), *cells])
    nll_header = ["file", "n", *(f"{n} NLL/{unit}" for n in names for unit in ("token", "char"))]
    lines = ["Accuracy (preference accuracy on mediqa2019) with its 95% Wilson interval over items; floors on the "
             "same items; * = the interval's low end is above the best floor.", "",
             *markdown(["file", "n", *names, *FLOORS, *gap], rows), "",
             "Answer NLL (mean per answer token, each model's own tokenizer) and per answer character (comparable "
             "across tokenizers), 95% t interval over items.", "",
             *markdown(nll_header, nll_rows)]  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder (default ../shared/data)")
    parser.add_argument("--models", default=f"{SMOLLM2},{MINILM_DECODER}", help="comma-separated model names")
    parser.add_argument("--max-examples", type=int, help="a fixed random sample of this many items per file")
    parser.add_argument("--medquad-sample", type=int, default=200, help="MedQuAD items scored (fixed sample)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fixed samples")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--work-dir", default="runs/base-models", help="each model's finished files, reused")
    parser.add_argument("--out", help="write results.json and report.md in this folder")
    args = parser.parse_args()
    for option in ("max_examples", "medquad_sample"):
        value = getattr(args, option)
        if value is not None and value < 1:
            print(f"error: --{option.replace('_', '-')} must be at least 1, got {value}", file=sys.stderr)
            return 2
    data = Path(args.data)
    if not (data / FILES["pubmedqa"]).exists():
        print(f"skipped: {data} does not hold the shared medical data ({FILES['pubmedqa']} missing)")
        return 0
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    files = load_files(data, args.max_examples, args.medquad_sample, args.seed)
    start = time.perf_counter()
    try:
        work = Path(args.work_dir)
        work.mkdir(parents=True, exist_ok=True)
        scored = {name: score_model(name, files, args.max_length, args.batch_size, work) for name in names}
    except (OSError, ValueError) as err:  # an unknown model name or a folder that is not a model
        print(f"error: {err}".splitlines()[0], file=sys.stderr)
        return 2
    summary = summarise(scored, files)
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    command = f"{threads}python benchmarks/base_models.py " + " ".join(sys.argv[1:])
    models = ", ".join(f"{n} ({scored[n]['template']} template)" for n in names)
    setup = (f"{models}; max length {args.max_length}, "
             f"batch {args.batch_size}, sample seed {args.seed}, {torch.get_num_threads()} CPU threads, "
             f"{time.perf_counter() - start:.0f} s in all")  # fmt: skip
    report = f"# Base models on the shared dev data\n\n`{command}`\n\n{setup}\n\n{tables(summary, names)}\n"
    print(report)
    results = {"command": command, "setup": setup, "files": {f: {"n": len(e), "ids": [ex.id for ex in e]}
               for f, e in files.items()}, "summary": summary,
               "items": {n: {f: {k: v for k, v in s.items() if k in ("hits", "answer_nll", "nll_per_char")}
                             for f, s in scored[n]["files"].items()} for n in names}}  # fmt: skip
    if args.json:
        write_json(args.json, results)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_json(Path(args.out) / "results.json", results)
        write_text(Path(args.out) / "report.md", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
