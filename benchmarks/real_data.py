"""ICFT on real public medical data: base, lora-sequential, lora-mixed and icft, several seeds, each stage's
held-out score after every stage, forgetting, and the test scores beside the trivial baselines.

Built for the earlier MiniLM default, on the bundled general stage. For the default model (SmolLM2-135M-Instruct
through its chat template) and issue 27's question, medical skill gained against general skill kept (MMLU
general, the model's own voice) with WiSE-FT curves and a plot, see benchmarks/real_smollm2.py.

Stages, from the files in ../shared/data (read in place, never copied):
  general:   the bundled general-domain examples (the shared folder has no general text)
  knowledge: MedQuAD question -> answer (open QA)
  clinical:  PubMedQA yes/no/maybe questions, MMLU medical multiple choice, PubMedQA preference pairs
Held out by group (`icft.data.sources.heldout_split`: a hash of the id; MedQuAD: of the focus, so test
  documents are on topics never trained on; MMLU: of the question, which two subsets share once):
  PubMedQA 20%, MMLU-medical 40%, MedQuAD 5% of foci; preference pairs on held-out PubMedQA questions are
  dropped from training too. Validation (for the stage matrix) is a further slice of training data; the
  general stage is validated on the bundled retention probes of taught general facts. `disjointness` checks
  that no test item shares an id, a question or a MedQuAD focus with training (also a test).
Stage scores: accuracy where a stage's items have options (general, clinical), answer NLL per token where
they are open (MedQuAD; lower is better); forgetting in each (accuracy drop, NLL rise).
Beside the methods, the table shows what needs no model on the same test items: a uniform random guess, the
majority label (PubMedQA: one constant answer, with its macro-F1 and per-label recall) and the best option
position (MMLU), so a score can be read against its floor. Finished runs are kept in --work-dir and reused.

    python benchmarks/real_data.py --data ../shared/data --steps 150 --seeds 0,1,2 \
        --out benchmarks/results/real-data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icft.config import load_config  # noqa: E402
from icft.data.loaders import load_examples  # noqa: E402
from icft.data.prompt_format import PromptFormat  # noqa: E402
from icft.data.sources import heldout_split, load_data  # noqa: E402
from icft.evaluation import registry  # noqa: E402
from icft.evaluation.baselines import trivial_baselines  # noqa: E402
from icft.evaluation.evaluate import evaluate_examples  # noqa: E402
from icft.evaluation.report import mean_std  # noqa: E402
from icft.evaluation.statistics import paired_runs  # noqa: E402
from icft.io import write_json, write_jsonl, write_text  # noqa: E402
from icft.models import load_model  # noqa: E402
from icft.recipes.compare import method_config  # noqa: E402
from icft.recipes.train import train  # noqa: E402
from icft.runs import load_run  # noqa: E402
from icft.tables import cell, markdown  # noqa: E402

METRICS = registry.names(level="test")  # the test metrics kept in each run's row, in table order


def build(data: Path, max_medquad: int, max_length_words: int) -> dict[str, dict[str, list]]:
    """{"train"|"validation"|"test": {name: examples}} with each example's stage set."""

    def staged(examples, stage):
        return [dataclasses.replace(ex, stage=stage) for ex in examples]

    pubmedqa = load_examples(data / "pubmedqa" / "train.jsonl").examples
    mmlu = load_examples(data / "mmlu_medical" / "dev.jsonl").examples
    pairs = load_examples(data / "medical_llm_rl" / "pairs.jsonl").examples
    medquad = [ex for ex in load_examples(data / "medquad" / "qa.jsonl").examples
               if len(ex.answer.split()) <= max_length_words]  # fmt: skip
    split = {"train": {}, "validation": {}, "test": {}}

    def put(name, examples, test_group, test_share, validation_share, stage):
        """Test: the groups `test_group` holds out; validation: a share of the rest, by id."""
        rest, split["test"][name] = heldout_split(staged(examples, stage), test_group, test_share)
        split["train"][name], split["validation"][name] = heldout_split(rest, lambda e: "val" + e.id, validation_share)

    put("pubmedqa", pubmedqa, lambda e: e.id, 0.2, 0.1, "clinical")
    # by the question's text: one MMLU question appears in two subsets under two ids
    put("mmlu_medical", mmlu, lambda e: e.question, 0.4, 0.1, "clinical")
    # a pair is held out with its PubMedQA question (its id ends in the question's id)
    put("pairs", pairs, lambda e: e.id.split("/")[-1], 0.2, 0.1, "clinical")
    put("medquad", medquad, lambda e: e.meta.get("focus", e.id), 0.05, 0.03, "knowledge")
    split["train"]["medquad"] = split["train"]["medquad"][:max_medquad]
    split["test"]["medquad"] = split["test"]["medquad"][:100]
    split["validation"]["medquad"] = split["validation"]["medquad"][:100]
    general = [ex for ex in load_data(["bundled:train"]) if ex.source == "icft-general"]
    split["train"]["general"] = staged(general, "general")
    split["validation"]["general"] = staged([ex for ex in load_data(["bundled:validation-retention"])
                                             if ex.source == "icft-general"], "general")  # fmt: skip
    del split["test"]["pairs"]
    return split


def disjointness(split: dict[str, dict[str, list]]) -> dict[str, int]:
    """Overlaps between test and training: ids, question texts, MedQuAD foci. All must be 0."""
    train = [ex for group in split["train"].values() for ex in group]
    test = [ex for group in split["test"].values() for ex in group]
    train_foci = {ex.meta.get("focus") for ex in split["train"]["medquad"]}
    return {
        "ids": len({ex.id for ex in train} & {ex.id for ex in test}),
        "questions": len({ex.question for ex in train if ex.question} & {ex.question for ex in test if ex.question}),
        "medquad_foci": len(train_foci & {ex.meta.get("focus") for ex in split["test"]["medquad"]} - {None}),
    }


def run_one(base, method: str, seed: int, split: dict, work: Path, max_length: int) -> dict:
    """One method/seed: train (nothing for base), then score each test set. Cached as <work>/<run>/row.json."""
    run = work / f"{method}-seed{seed}"
    if (run / "row.json").exists():
        return json.loads((run / "row.json").read_text())
    config = method_config(base, method, seed)
    start = time.perf_counter()
    row: dict = {}
    if method == "base":
        model, tokenizer = load_model(config.model.name)
    else:
        train(config, run)
        model, tokenizer = load_run(run)
        stage_eval = json.loads((run / "stage_eval.json").read_text())
        row["stage_eval"] = {k: stage_eval[k] for k in ("stages", "metric", "accuracy_matrix", "nll_matrix")}
        row.update({k: stage_eval[k] for k in ("forgetting", "forgetting_nll")})
    row["train_s"] = time.perf_counter() - start
    fmt = PromptFormat.resolve(tokenizer, config.data.template, max_length)  # the format it was trained in
    for name, examples in split["test"].items():
        m = evaluate_examples(model, fmt, examples).metrics
        row.update({f"{name}/{key}": m[key] for key in METRICS if key in m})
    run.mkdir(parents=True, exist_ok=True)
    write_json(run / "row.json", row)
    return row


def stage_table(rows: list[dict]) -> list[str]:
    """Mean over seeds of each stage's score after every stage, in the stage's own metric."""
    first = rows[0]["stage_eval"]
    stages, metrics = first["stages"], first["metric"]
    header = ["after stage", *(f"{s} ({'acc' if m == 'accuracy' else 'NLL'})" for s, m in zip(stages, metrics))]
    table = []
    for i, stage in enumerate(stages):
        cells = []
        for j, metric in enumerate(metrics):
            matrix = "accuracy_matrix" if metric == "accuracy" else "nll_matrix"
            values = [r["stage_eval"][matrix][i][j] for r in rows if r["stage_eval"][matrix][i][j] is not None]
            cells.append(cell(statistics.mean(values)) if values else "–")
        table.append([f"{i + 1} ({stage})", *cells])
    return markdown(header, table)


def run_numbers(row: dict) -> dict[str, float]:
    """One run's numbers that are compared across methods: its test metrics, forgetting, and each stage's
    answer NLL after the last stage (lower is better)."""
    numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "train_s"}
    if "stage_eval" in row:
        stages, final = row["stage_eval"]["stages"], row["stage_eval"]["nll_matrix"][-1]
        numbers.update({f"final NLL, {stage}": v for stage, v in zip(stages, final) if v is not None})
    return numbers


def paired_table(rows: dict[str, list[dict]], seeds: list[int], reference: str = "icft") -> list[str]:
    """`reference` minus each other trained method, paired by seed: mean [95% t interval] per number."""
    others = [m for m in rows if m not in ("base", reference)]
    if reference not in rows or not others or len(seeds) < 2:
        return []
    ours = [run_numbers(r) for r in rows[reference]]
    keys = [k for k in ours[0] if not k.endswith(("accuracy_norm", "recall_maybe"))]
    table = []
    for key in keys:
        cells = []
        for method in others:
            theirs = [run_numbers(r).get(key) for r in rows[method]]
            d = paired_runs(dict(zip(seeds, [o.get(key) for o in ours])), dict(zip(seeds, theirs)))
            low, high = (None, None) if d is None else (cell(d.low, sign=True), cell(d.high, sign=True))
            text = "–" if d is None else f"{cell(d.mean, sign=True)} [{low}, {high}]"
            cells.append(f"**{text}**" if d is not None and d.significant else text)
        table.append([key, *cells])
    return [f"{reference} minus each method, paired by seed: mean [95% t interval over {len(seeds)} seeds]; "
            "**bold** when it excludes 0 (for forgetting and NLL, lower is better)", "",
            *markdown(["metric", *others], table)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--model", default="minilm-decoder")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--methods", default="base,lora-sequential,lora-mixed,icft")
    parser.add_argument("--work-dir", default="runs/real-data", help="run folders; finished runs are reused")
    parser.add_argument("--out", help="write results.json and report.md here")
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "pubmedqa" / "train.jsonl").exists():
        raise SystemExit(f"error: {data} does not hold the shared medical data (pubmedqa/train.jsonl missing)")

    split = build(data, max_medquad=1500, max_length_words=120)
    overlaps = disjointness(split)
    if any(overlaps.values()):
        raise SystemExit(f"error: test items overlap training: {overlaps}")
    work = Path(args.work_dir) / f"{args.model.replace('/', '--')}-{args.steps}steps"
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for part in ("train", "validation"):
        files[part] = str(work / f"{part}.jsonl")
        write_jsonl(files[part], [ex.to_dict() for group in split[part].values() for ex in group])
    for part in ("train", "validation", "test"):
        print(part + ": " + ", ".join(f"{k} {len(v)}" for k, v in split[part].items()))
    print(f"test/train overlaps (ids, questions, MedQuAD foci): {overlaps}")

    base = load_config(None, [
        f"model.name={args.model}", f"model.max_length={args.max_length}", f"data.train=[{files['train']}]",
        f"data.validation=[{files['validation']}]", f"train.max_steps={args.steps}", "train.batch_size=8",
        f"train.save_every={args.steps}", "train.eval_max_examples=60", "curriculum.stage_steps=[1, 2, 2]",
    ])  # fmt: skip
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    rows = {m: [run_one(base, m, s, split, work, args.max_length) for s in (seeds[:1] if m == "base" else seeds)]
            for m in methods}  # fmt: skip
    results = {m: mean_std([{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in rs])
               for m, rs in rows.items()}  # fmt: skip
    for name, examples in split["test"].items():  # no model: the same items, answered by rule
        for baseline, values in trivial_baselines(examples).items():
            column = results.setdefault(f"{baseline} (trivial)", {})
            column.update({f"{name}/{k}": {"mean": values[k], "std": 0.0, "n": 1} for k in METRICS if k in values})

    keys = list(dict.fromkeys(k for column in results.values() for k in column if k != "train_s"))
    lines = [f"Real data, {args.model}, {args.steps} steps of batch 8, seeds {args.seeds} (mean ± std; base once); "
             "test: " + ", ".join(f"{k} {len(v)}" for k, v in split["test"].items()), "",
             *markdown(["metric", *results], [[key, *(_cell(results[m].get(key)) for m in results)]
                                              for key in keys + ["train_s"]])]  # fmt: skip
    for method, rs in rows.items():
        if method != "base":
            lines += ["", f"{method}: each stage's held-out score after each stage (mean over seeds)", "",
                      *stage_table(rs)]  # fmt: skip
    lines += ["", *paired_table(rows, seeds)]
    print("\n" + "\n".join(lines))
    if args.out:
        write_json(Path(args.out) / "results.json", {"results": results, "runs": rows, "overlaps": overlaps})
        write_text(Path(args.out) / "report.md", "\n".join(lines) + "\n")
    return 0


def _cell(value: dict | None) -> str:
    if value is None:
        return "–"
    return cell(value["mean"]) + (f" ± {cell(value['std'])}" if value["n"] > 1 else "")


if __name__ == "__main__":
    raise SystemExit(main())
