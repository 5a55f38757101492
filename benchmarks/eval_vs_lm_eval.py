"""Our multiple-choice scorer against EleutherAI's lm-evaluation-harness, on the same model and questions.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_vs_lm_eval.py [--model NAME_OR_PATH | --run RUN_DIR]
        [--pubmedqa FILE] [--mmlu FILE] [--limit N] [--batch-size 32] [--json FILE]

Needs `pip install lm-eval` (a benchmark-only dependency, not in pyproject). Both sides compute the same
function, so accuracies must agree (to within a point; in practice exactly):

- the questions go to lm-eval as a custom task over local JSONL files, written to a temporary folder: the
  context is our `qa_prompt`, the choices are the options, `target_delimiter: " "` makes each continuation
  " <option>" exactly as our `candidates` does, and lm-eval's acc_norm divides by len(option), as
  `ChoiceScores.pred_norm` divides by len(" <option>".strip());
- a BOS token is prepended on both sides exactly when the tokenizer has one (HFLM `add_bos_token`);
- lm-eval keeps the last max_length + 1 tokens of context + continuation and feeds all but the last, we
  keep the last max_length and feed all: so HFLM gets max_length - 1 to condition on the same tokens.

Besides accuracies and wall times, the per-choice log-likelihoods of both are compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {
    "pubmedqa": SHARED_DATA / "pubmedqa" / "train.jsonl",
    "mmlu_medical": SHARED_DATA / "mmlu_medical" / "dev.jsonl",
}
MAX_LENGTH = 512

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: text
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def load_model_and_tokenizer(model_name: str, run_dir: str | None):
    """The model to score; a run's LoRA adapter is merged so both harnesses see one plain model."""
    from icft.models import load_model
    from icft.runs import run_config

    if run_dir:
        config = run_config(run_dir)  # icft's YAML reader: no aliases, one-line errors
        model, tokenizer = load_model(config["model"]["name"])
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(run_dir) / "adapter")).merge_and_unload()
    else:
        model, tokenizer = load_model(model_name)
    return model.eval(), tokenizer


def score_ours(model, tokenizer, examples, batch_size: int) -> tuple[dict, list[list[float]]]:
    from icft.data.prompt_format import PromptFormat
    from icft.evaluation.scoring import choice_accuracy, score_choices

    start = time.perf_counter()
    scores = score_choices(model, PromptFormat(tokenizer, "plain", MAX_LENGTH), examples, batch_size)
    wall = time.perf_counter() - start
    summary = {"acc": choice_accuracy(scores), "acc_norm": choice_accuracy(scores, normalised=True), "wall_s": wall}
    return summary, [s.logprobs for s in scores]


def write_task(folder: Path, task: str, examples) -> None:
    from icft.data.formatting import qa_prompt

    data = folder / f"{task}.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps({"text": qa_prompt(ex), "choices": ex.options, "gold": ex.answer}) + "\n")
    (folder / f"{task}.yaml").write_text(TASK_YAML.format(task=task, data=json.dumps(str(data))))


def score_lm_eval(model, tokenizer, tasks: dict[str, list], batch_size: int) -> dict[str, tuple[dict, list]]:
    """acc, acc_norm and wall time per task, and each document's per-choice log-likelihoods."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
              max_length=MAX_LENGTH - 1, add_bos_token=tokenizer.bos_token_id is not None)  # fmt: skip
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, examples in tasks.items():
            task = f"icft_{name}"
            write_task(Path(tmp), task, examples)
            manager = TaskManager(include_path=tmp)
            start = time.perf_counter()  # one task at a time, so that each gets its own wall time
            results = simple_evaluate(model=lm, tasks=[task], task_manager=manager, num_fewshot=0,
                                      bootstrap_iters=0, log_samples=True)  # fmt: skip
            wall = time.perf_counter() - start
            metrics = results["results"][task]
            samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
            lls = [[float(r[0][0]) for r in s["resps"]] for s in samples]
            out[name] = ({"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"], "wall_s": wall}, lls)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-decoder", help="hub id, local folder or minilm-decoder")
    parser.add_argument("--run", help="a training run folder (config.yaml + adapter/); overrides --model")
    parser.add_argument("--pubmedqa", default=str(TASKS["pubmedqa"]))
    parser.add_argument("--mmlu", default=str(TASKS["mmlu_medical"]))
    parser.add_argument("--limit", type=int, help="first N questions of each file")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", help="write the table here as JSON")
    args = parser.parse_args(argv)

    import torch

    from icft.data.loaders import load_examples

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(args.model, args.run)
    if torch.cuda.is_available():
        model = model.to("cuda")
    tasks = {name: load_examples(path).examples[: args.limit] for name, path in
             (("pubmedqa", args.pubmedqa), ("mmlu_medical", args.mmlu))}  # fmt: skip

    ours = {name: score_ours(model, tokenizer, examples, args.batch_size) for name, examples in tasks.items()}
    theirs = score_lm_eval(model, tokenizer, tasks, args.batch_size)

    rows = []
    for name, examples in tasks.items():
        (a, lls_a), (b, lls_b) = ours[name], theirs[name]
        diff = max(abs(x - y) for ra, rb in zip(lls_a, lls_b) for x, y in zip(ra, rb))
        rows.append({"task": name, "n": len(examples), "icft_acc": a["acc"], "lm_eval_acc": b["acc"],
                     "icft_acc_norm": a["acc_norm"], "lm_eval_acc_norm": b["acc_norm"], "max_abs_loglik_diff": diff,
                     "icft_wall_s": a["wall_s"], "lm_eval_wall_s": b["wall_s"]})  # fmt: skip

    device = str(next(model.parameters()).device)
    name = args.run or args.model
    print(f"\nmodel: {name}  device: {device}  batch size: {args.batch_size}  max length: {MAX_LENGTH}\n")
    print_table(rows)
    if args.json:
        from icft.io import write_json

        write_json(args.json, {"model": name, "device": device, "rows": rows})
    agree = all(abs(r["icft_acc"] - r["lm_eval_acc"]) <= 0.01 for r in rows) and all(
        abs(r["icft_acc_norm"] - r["lm_eval_acc_norm"]) <= 0.01 for r in rows
    )
    print("\naccuracies agree within 1 point" if agree else "\nACCURACIES DISAGREE by more than 1 point")
    return 0 if agree else 1


def print_table(rows: list[dict]) -> None:
    from icft.tables import text

    header = ["task", "n", "icft acc", "lm-eval acc", "icft acc_norm", "lm-eval acc_norm", "max |dLL|",
              "icft s", "lm-eval s"]  # fmt: skip
    keys = ["task", "n", "icft_acc", "lm_eval_acc", "icft_acc_norm", "lm_eval_acc_norm", "max_abs_loglik_diff",
            "icft_wall_s", "lm_eval_wall_s"]  # fmt: skip
    formats = {"max_abs_loglik_diff": "{:.1e}", "icft_wall_s": "{:.1f}", "lm_eval_wall_s": "{:.1f}"}
    cells = [[formats.get(k, "{:.4f}").format(r[k]) if isinstance(r[k], float) else str(r[k]) for k in keys]
             for r in rows]  # fmt: skip
    print("\n".join(text(header, cells)))


if __name__ == "__main__":
    sys.exit(main())
