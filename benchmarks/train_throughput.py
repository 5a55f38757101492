"""Training throughput: a plain HF Trainer + peft LoRA loop against `icft train`.

Same model, data, batch size, sequence length and optimizer steps for all three:
  (1) hf_trainer_lora: transformers.Trainer + peft LoRA, supervised (prompt-masked) fine-tuning
  (2) icft_plain:      icft train with curriculum and memory off (all stages mixed, no pacing)
  (3) icft_full:       icft train with the full method (pacing, STM/LTM replay share 0.25, consistency)
Tokens/s counts the non-padding tokens that went through the model, over the wall time of training
(model loading excluded; for icft, memory consolidation and checkpointing included, stage evaluation off).
All three use the prompt template the model's tokenizer calls for (chat for SmolLM2).

Each loop runs in a process of its own, so its peak resident memory (and peak GPU memory) is its own. With
`--repeats N` the three loops run N times in turn (1 2 3 1 2 3 ...): on a machine shared with other jobs
the load drifts, and loops run side by side in time see about the same load. The table gives each loop's
median tokens/s with its range, and each ratio's median and range over the repeats (a ratio is taken
within one repeat).

    python benchmarks/train_throughput.py --steps 100 --json throughput.json
    python benchmarks/train_throughput.py --model smollm2-135m-instruct --steps 4 --batch-size 8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from icft.config import load_config  # noqa: E402
from icft.data.formatting import prompt_and_target, resolve_template  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.data.tokenize import collate, encode_pair  # noqa: E402
from icft.io import write_json  # noqa: E402
from icft.models import SMOLLM2, extra_trainable_modules, load_model, lora_target_modules  # noqa: E402
from icft.recipes.train import train  # noqa: E402


def hf_trainer_lora(name: str, steps: int, batch_size: int, max_length: int, lr: float, seed: int) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model, tokenizer = load_model(name)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=lora_target_modules(model),
                                             modules_to_save=extra_trainable_modules(model) or None))  # fmt: skip
    template = resolve_template(tokenizer, "auto")  # what icft train uses by default
    sequences = [encode_pair(tokenizer, *prompt_and_target(ex, tokenizer, template), max_length, template=template)
                 for ex in load_data(["bundled:train"])]  # fmt: skip
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in sequences]
    seen = {"tokens": 0}

    def collator(features):
        batch = collate([type(sequences[0])(f["input_ids"], f["labels"]) for f in features], tokenizer.pad_token_id)
        seen["tokens"] += int(batch["attention_mask"].sum())
        return batch

    with tempfile.TemporaryDirectory(prefix="hf-throughput-") as out:
        args = TrainingArguments(output_dir=out, max_steps=steps, per_device_train_batch_size=batch_size,
                                 learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=int(0.05 * steps),
                                 save_strategy="no", logging_strategy="no", report_to=[], seed=seed,
                                 dataloader_num_workers=0, remove_unused_columns=False,
                                 use_cpu=not torch.cuda.is_available())  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        start = time.perf_counter()
        trainer.train()
        return seen["tokens"] / (time.perf_counter() - start)


def icft_tps(name: str, steps: int, batch_size: int, max_length: int, lr: float, seed: int, full: bool) -> float:
    settings = [f"model.name={name}", f"model.max_length={max_length}", f"train.max_steps={steps}",
                f"train.batch_size={batch_size}", f"train.lr={lr}", f"train.seed={seed}", f"train.save_every={steps}",
                "train.eval_max_examples=0", "train.log_every=10"]  # fmt: skip
    if full:
        settings += ["memory.enabled=true", "memory.ltm_replay=0.25"]
    else:
        settings += ["curriculum.order=mixed", "curriculum.pacing=none", "memory.enabled=false"]
    with tempfile.TemporaryDirectory(prefix="icft-throughput-") as tmp:
        train(load_config(None, settings), Path(tmp) / "run")
        return json.loads((Path(tmp) / "run" / "summary.json").read_text())["tokens_per_s"]


LOOPS = {
    "hf": "(1) HF Trainer + peft LoRA",
    "plain": "(2) icft train, curriculum and memory off",
    "full": "(3) icft train, full ICFT (replay 0.25)",
}


def run_loop(loop: str, common: tuple) -> float:
    if loop == "hf":
        return hf_trainer_lora(*common)
    return icft_tps(*common, full=loop == "full")


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
    parser.add_argument("--repeats", type=int, default=1, help="run the three loops this many times, in turn")
    parser.add_argument("--json", help="write each loop's runs and the medians here")
    parser.add_argument("--loop", choices=LOOPS, help=argparse.SUPPRESS)  # internal: one loop, in a child process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for name in ("steps", "batch_size", "max_length", "repeats"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    common = (args.model, args.steps, args.batch_size, args.max_length, args.lr, args.seed)
    if args.loop:
        Path(args.result).write_text(json.dumps({"tokens_per_s": run_loop(args.loop, common), **peak_memory()}))
        return 0

    argv = sys.argv[1:]
    runs: dict[str, list[dict]] = {loop: [] for loop in LOOPS}
    for _ in range(args.repeats):
        for loop in LOOPS:
            runs[loop].append(in_child(loop, argv))
    tps = {loop: [r["tokens_per_s"] for r in runs[loop]] for loop in LOOPS}
    plain_ratio = [p / h for p, h in zip(tps["plain"], tps["hf"])]
    full_ratio = [f / p for f, p in zip(tps["full"], tps["plain"])]
    print(f"\n{args.model}, {args.steps} steps, batch {args.batch_size}, max length {args.max_length}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeat(s): median (min-max)")  # fmt: skip
    gpu = torch.cuda.is_available()
    print("| loop | tokens/s | ratio | peak RSS MiB |" + (" peak GPU MiB |" if gpu else ""))
    print("|---|---|---|---|" + ("---|" if gpu else ""))
    ratios = {"hf": "1.00", "plain": spread(plain_ratio, 2) + " x (1)", "full": spread(full_ratio, 2) + " x (2)"}
    for loop, label in LOOPS.items():
        memory = [r["peak_rss_mib"] for r in runs[loop]]
        row = f"| {label} | {spread(tps[loop])} | {ratios[loop]} | {spread(memory)} |"
        print(row + (f" {spread([r['peak_gpu_mib'] for r in runs[loop]])} |" if gpu else ""))
    if args.json:
        result = {f"{loop}_runs": runs[loop] for loop in LOOPS}
        result.update({
            "hf_trainer_lora_tps": statistics.median(tps["hf"]), "icft_plain_tps": statistics.median(tps["plain"]),
            "icft_full_tps": statistics.median(tps["full"]), "plain_over_hf": plain_ratio,
            "full_over_plain": full_ratio,
        })  # fmt: skip
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
