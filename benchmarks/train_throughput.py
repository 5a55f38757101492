"""Training throughput: HF Trainer + peft LoRA against `icft train`.

Same model, data, batch size, sequence length and optimizer steps for every loop:
  hf        transformers.Trainer + peft LoRA, supervised (prompt-masked) fine-tuning, padded random batches
  hf-best   the same at HF's best documented setting for this job: its padding-free collator
            (DataCollatorWithFlattening: each batch one row, position ids restarting per example, which
            transformers' SDPA attention keeps apart), or with --hf-best group_by_length its length-grouped
            sampler (train_sampling_strategy="group_by_length")
  plain     icft train with curriculum and memory off (all stages mixed, no pacing)
  full      icft train with the full method (pacing, STM/LTM replay share 0.25, consistency)
Both icft loops pack each micro-batch into one row (train.packing, the default); --no-packing pads them.
Tokens/s counts the non-padding tokens that went through the model, over the wall time of training
(model loading excluded; for icft, memory consolidation and checkpointing included, stage evaluation off).
All use the prompt template the model's tokenizer calls for (chat for SmolLM2). --data names the training
files (default the bundled curriculum; the real benchmark's is runs/real-smollm2/data/train.jsonl, written
by benchmarks/real_smollm2.py).

Each loop runs in a process of its own, so its peak resident memory (and peak GPU memory) is its own. With
`--repeats N` the three loops run N times in turn (1 2 3 1 2 3 ...): on a machine shared with other jobs
the load drifts, and loops run side by side in time see about the same load. The table gives each loop's
median tokens/s with its range, and each ratio's median and range over the repeats (a ratio is taken
within one repeat).

    python benchmarks/train_throughput.py --steps 100 --json throughput.json
    python benchmarks/train_throughput.py --model smollm2-135m-instruct --steps 30 --batch-size 8 --repeats 3
    python benchmarks/train_throughput.py --model smollm2-135m-instruct --steps 30 --batch-size 8 --repeats 3 \
        --max-length 256 --data runs/real-smollm2/data/train.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from icft import tables  # noqa: E402
from icft.config import load_config  # noqa: E402
from icft.data.formatting import prompt_and_target, resolve_template  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.data.tokenize import collate, encode_pair  # noqa: E402
from icft.io import write_json  # noqa: E402
from icft.models import SMOLLM2, extra_trainable_modules, load_model, lora_target_modules  # noqa: E402
from icft.recipes.train import train  # noqa: E402


def hf_trainer_lora(run: Loop, best: str | None = None) -> float:
    """tokens/s of HF Trainer; `best`: "flatten" (padding-free collator) or "group_by_length" (sampler)."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    name, steps, batch_size, max_length, lr, seed = (run.model, run.steps, run.batch_size, run.max_length, run.lr,
                                                     run.seed)  # fmt: skip

    model, tokenizer = load_model(name)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=lora_target_modules(model),
                                             modules_to_save=extra_trainable_modules(model) or None))  # fmt: skip
    template = resolve_template(tokenizer, "auto")  # what icft train uses by default
    sequences = [encode_pair(tokenizer, *prompt_and_target(ex, tokenizer, template), max_length, template=template)
                 for ex in load_data(run.data)]  # fmt: skip
    dataset = [{"input_ids": s.input_ids, "labels": s.labels, "length": len(s.input_ids)} for s in sequences]
    seen = {"tokens": 0}
    flatten = DataCollatorWithFlattening()

    def collator(features):
        if best == "flatten":
            batch = flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        else:
            rows = [type(sequences[0])(f["input_ids"], f["labels"]) for f in features]
            batch = collate(rows, tokenizer.pad_token_id)
        seen["tokens"] += sum(len(f["input_ids"]) for f in features)
        return batch

    with tempfile.TemporaryDirectory(prefix="hf-throughput-") as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=int(0.05 * steps),
                                 save_strategy="no", logging_strategy="no", report_to=[], seed=seed,
                                 dataloader_num_workers=0, remove_unused_columns=False,
                                 train_sampling_strategy="group_by_length" if best == "group_by_length" else "random",
                                 use_cpu=not torch.cuda.is_available())  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        return seen["tokens"] / (time.perf_counter() - start)


def icft_tps(run: Loop, full: bool) -> float:
    settings = [f"model.name={run.model}", f"model.max_length={run.max_length}", f"train.max_steps={run.steps}",
                f"train.batch_size={run.batch_size}", f"train.lr={run.lr}", f"train.seed={run.seed}",
                f"train.save_every={run.steps}", "train.eval_max_examples=0", "train.log_every=10",
                f"train.packing={str(run.packing).lower()}", f"data.train=[{', '.join(run.data)}]",
                "data.validation=[]", "data.validation_split=0.0"]  # fmt: skip
    if full:
        settings += ["memory.enabled=true", "memory.ltm_replay=0.25"]
    else:
        settings += ["curriculum.order=mixed", "curriculum.pacing=none", "memory.enabled=false"]
    with tempfile.TemporaryDirectory(prefix="icft-throughput-") as tmp:
        train(load_config(None, settings), Path(tmp) / "run")
        return json.loads((Path(tmp) / "run" / "summary.json").read_text())["tokens_per_s"]


LOOPS = {
    "hf": "(1) HF Trainer + peft LoRA, padded",
    "hf-best": "(2) HF Trainer + peft LoRA, best setting",
    "plain": "(3) icft train, curriculum and memory off",
    "full": "(4) icft train, full ICFT (replay 0.25)",
}


@dataclass(frozen=True)
class Loop:
    """What every loop trains: the same model, data, steps and batch."""

    model: str
    data: list[str]
    steps: int
    batch_size: int
    max_length: int
    lr: float
    seed: int
    packing: bool = True
    hf_best: str = "flatten"


def run_loop(loop: str, run: Loop) -> float:
    if loop.startswith("hf"):
        return hf_trainer_lora(run, run.hf_best if loop == "hf-best" else None)
    return icft_tps(run, full=loop == "full")


def peak_memory() -> dict[str, float]:
    """This process's peak resident memory (Linux reports KiB) and peak GPU memory, in MiB."""
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def in_child(loop: str, argv: list[str]) -> dict:
    """One loop in a fresh process (its own peak memory); its result comes back as a JSON file."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        subprocess.run([sys.executable, __file__, *argv, "--loop", loop, "--result", str(result)], check=True)
        return json.loads(result.read_text())


def spread(values: list[float], digits: int = 0) -> str:
    text = f"{statistics.median(values):.{digits}f}"
    return text + (f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="run the loops this many times, in turn")
    parser.add_argument("--data", nargs="+", default=["bundled:train"], help="training files (default: bundled)")
    parser.add_argument("--no-packing", action="store_true", help="icft pads its batches instead of packing")
    parser.add_argument("--hf-best", choices=("flatten", "group_by_length"), default="flatten")
    parser.add_argument("--loops", default=",".join(LOOPS), help=f"which loops, comma-separated ({', '.join(LOOPS)})")
    parser.add_argument("--json", help="write each loop's runs and the medians here")
    parser.add_argument("--loop", choices=LOOPS, help=argparse.SUPPRESS)  # internal: one loop, in a child process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "batch_size", "max_length", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    run = Loop(args.model, args.data, args.steps, args.batch_size, args.max_length, args.lr, args.seed,
               not args.no_packing, args.hf_best)  # fmt: skip
    if args.loop:
        Path(args.result).write_text(json.dumps({"tokens_per_s": run_loop(args.loop, run), **peak_memory()}))
        return 0
    loops = [loop for loop in LOOPS if loop in args.loops.split(",")]
    runs: dict[str, list[dict]] = {loop: [] for loop in loops}
    for _ in range(args.repeats):
        for loop in loops:
            runs[loop].append(in_child(loop, sys.argv[1:]))
    print(f"\n{args.model} on {', '.join(args.data)}, {args.steps} steps, batch {args.batch_size}, max length "
          f"{args.max_length}, icft {'padded' if args.no_packing else 'packed'}, HF best: {args.hf_best}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeat(s): median (min-max)")  # fmt: skip
    print("\n".join(table(runs)))
    if args.json:
        write_json(args.json, {"setting": dataclasses.asdict(run), "runs": runs, "ratios": ratios(runs)})
    return 0


def ratios(runs: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Each loop's tokens/s over each reference's, repeat by repeat (a ratio is taken within one repeat)."""
    tps = {loop: [r["tokens_per_s"] for r in rows] for loop, rows in runs.items()}
    pairs = [("plain", "hf"), ("plain", "hf-best"), ("full", "plain"), ("hf-best", "hf")]
    return {f"{a}/{b}": [x / y for x, y in zip(tps[a], tps[b])] for a, b in pairs if a in tps and b in tps}


def table(runs: dict[str, list[dict]]) -> list[str]:
    gpu = torch.cuda.is_available()
    header = ["loop", "tokens/s", "peak RSS MiB", *(["peak GPU MiB"] if gpu else [])]
    rows = []
    for loop, records in runs.items():
        row = [LOOPS[loop], spread([r["tokens_per_s"] for r in records]), spread([r["peak_rss_mib"] for r in records])]
        rows.append(row + ([spread([r["peak_gpu_mib"] for r in records])] if gpu else []))
    lines = tables.markdown(header, rows)
    lines += ["", *tables.markdown(["ratio", "median (min-max)"],
                                   [[name, spread(values, 2)] for name, values in ratios(runs).items()])]  # fmt: skip
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
