"""ICFT on real public medical data: base vs lora-mixed vs icft, evaluated on held-out parts.

Stages, from the files in ../shared/data (read in place, never copied):
  general:   the bundled general-domain examples (the shared folder has no general text)
  knowledge: MedQuAD question -> answer (open QA)
  clinical:  PubMedQA yes/no/maybe questions, MMLU medical multiple choice, PubMedQA preference pairs
Held out, by a hash of the id (MedQuAD: of the focus, so test documents are on topics never trained on):
  PubMedQA 20%, MMLU-medical 40%, MedQuAD 5% of foci; preference pairs on held-out PubMedQA questions are
  dropped from training too. Validation (for the stage accuracy matrix) is a further slice of training data.
Beside the methods, the table shows what needs no model on the same test items: a uniform random guess, the
majority label (PubMedQA: one constant answer, with its macro-F1 and per-label recall) and the best option
position (MMLU), so a score can be read against its floor.

    python benchmarks/real_data.py --data ../shared/data --steps 150 --json real_data.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icft.config import load_config  # noqa: E402
from icft.data.loaders import load_examples  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.evaluation.baselines import model_label_recalls, trivial_baselines  # noqa: E402
from icft.evaluation.evaluate import evaluate_examples  # noqa: E402
from icft.io import write_jsonl  # noqa: E402
from icft.models import load_model  # noqa: E402
from icft.recipes.compare import method_config  # noqa: E402
from icft.recipes.train import train  # noqa: E402
from icft.runs import load_run  # noqa: E402

METRICS = ("accuracy", "accuracy_norm", "macro_f1", "recall_yes", "recall_no", "recall_maybe", "rougeL")


def bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100


def build(data: Path, max_medquad: int, max_length_words: int) -> dict[str, dict[str, list]]:
    """{"train"|"validation"|"test": {name: examples}} with each example's stage set."""

    def staged(examples, stage):
        return [dataclasses.replace(ex, stage=stage) for ex in examples]

    pubmedqa = load_examples(data / "pubmedqa" / "train.jsonl").examples
    mmlu = load_examples(data / "mmlu_medical" / "dev.jsonl").examples
    pairs = load_examples(data / "medical_llm_rl" / "pairs.jsonl").examples
    medquad = [ex for ex in load_examples(data / "medquad" / "qa.jsonl").examples
               if len(ex.answer.split()) <= max_length_words]  # fmt: skip
    test_pmids = {ex.id for ex in pubmedqa if bucket(ex.id) < 20}
    split = {"train": {}, "validation": {}, "test": {}}

    def put(name, examples, is_test, is_val, stage):
        for part, keep in (("test", is_test), ("validation", lambda e: not is_test(e) and is_val(e)),
                           ("train", lambda e: not is_test(e) and not is_val(e))):  # fmt: skip
            split[part][name] = staged([e for e in examples if keep(e)], stage)

    put("pubmedqa", pubmedqa, lambda e: e.id in test_pmids, lambda e: bucket("val" + e.id) < 10, "clinical")
    put("mmlu_medical", mmlu, lambda e: bucket(e.id) < 40, lambda e: bucket("val" + e.id) < 10, "clinical")
    put("pairs", pairs, lambda e: e.id.split("/")[-1] in test_pmids, lambda e: bucket("val" + e.id) < 10, "clinical")
    put("medquad", medquad, lambda e: bucket(e.meta.get("focus", e.id)) < 5,
        lambda e: bucket("val" + e.id) < 3, "knowledge")  # fmt: skip
    split["train"]["medquad"] = split["train"]["medquad"][:max_medquad]
    split["test"]["medquad"] = split["test"]["medquad"][:100]
    split["validation"]["medquad"] = split["validation"]["medquad"][:100]
    general = [ex for ex in load_data(["bundled:train"]) if ex.source == "icft-general"]
    split["train"]["general"] = staged(general, "general")
    split["validation"]["general"] = staged([ex for ex in load_data(["bundled:validation"])
                                             if ex.source == "icft-general"], "general")  # fmt: skip
    del split["test"]["pairs"]
    return split


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default="minilm-decoder")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--methods", default="base,lora-mixed,icft")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "pubmedqa" / "train.jsonl").exists():
        raise SystemExit(f"error: {data} does not hold the shared medical data (pubmedqa/train.jsonl missing)")

    split = build(data, max_medquad=1500, max_length_words=120)
    work = Path(tempfile.mkdtemp(prefix="icft-real-"))
    files = {}
    for part in ("train", "validation"):
        files[part] = str(work / f"{part}.jsonl")
        write_jsonl(files[part], [ex.to_dict() for group in split[part].values() for ex in group])
    for part in ("train", "validation", "test"):
        print(part + ": " + ", ".join(f"{k} {len(v)}" for k, v in split[part].items()))

    base = load_config(None, [
        f"model.name={args.model}", f"model.max_length={args.max_length}", f"data.train=[{files['train']}]",
        f"data.validation=[{files['validation']}]", f"train.max_steps={args.steps}", "train.batch_size=8",
        f"train.save_every={args.steps}", "train.eval_max_examples=60", "curriculum.stage_steps=[1, 2, 2]",
    ])  # fmt: skip
    results = {}
    for method in args.methods.split(","):
        config = method_config(base, method, args.seed)
        start = time.perf_counter()
        if method == "base":
            model, tokenizer = load_model(config.model.name)
        else:
            train(config, work / method)
            model, tokenizer = load_run(work / method)
        row = {"train_s": time.perf_counter() - start}
        for name, examples in split["test"].items():
            result = evaluate_examples(model, tokenizer, examples, max_length=args.max_length, progress=False)
            m = {**result.metrics, **model_label_recalls(examples, result.errors)}
            row.update({f"{name}/{key}": m[key] for key in METRICS if key in m})
        results[method] = row
        print(method, json.dumps(row), flush=True)
    for name, examples in split["test"].items():  # no model: the same items, answered by rule
        for baseline, values in trivial_baselines(examples).items():
            results.setdefault(f"{baseline} (trivial)", {}).update({f"{name}/{k}": values[k] for k in METRICS
                                                                    if k in values})  # fmt: skip

    keys = list(dict.fromkeys(k for row in results.values() for k in row if k != "train_s"))
    print(f"\nReal data, {args.model}, {args.steps} steps, seed {args.seed}; test: "
          + ", ".join(f"{k} {len(v)}" for k, v in split["test"].items()))  # fmt: skip
    print("| metric | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for key in keys + ["train_s"]:
        print(f"| {key} | " + " | ".join(_cell(results[m].get(key)) for m in results) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
