"""Training throughput: a plain HF Trainer + peft LoRA loop against `icft train`.

Same model, data, batch size, sequence length and optimizer steps for all three:
  (1) hf_trainer_lora: transformers.Trainer + peft LoRA, supervised (prompt-masked) fine-tuning
  (2) icft_plain:      icft train with curriculum and memory off (all stages mixed, no pacing)
  (3) icft_full:       icft train with the full method (pacing, STM/LTM replay share 0.25, consistency)
Tokens/s counts the non-padding tokens that went through the model, over the wall time of training
(model loading excluded; for icft, memory consolidation and checkpointing included, stage evaluation off).

    python benchmarks/train_throughput.py --steps 100 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from icft.config import load_config  # noqa: E402
from icft.data.formatting import prompt_and_target  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.data.tokenize import collate, encode_pair  # noqa: E402
from icft.models import EMBEDDED_DEFAULT, extra_trainable_modules, load_model, lora_target_modules  # noqa: E402
from icft.recipes.train import train  # noqa: E402


def hf_trainer_lora(name: str, steps: int, batch_size: int, max_length: int, lr: float, seed: int) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model, tokenizer = load_model(name)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, task_type="CAUSAL_LM",
                                             target_modules=lora_target_modules(model),
                                             modules_to_save=extra_trainable_modules(model) or None))  # fmt: skip
    sequences = [encode_pair(tokenizer, *prompt_and_target(ex), max_length) for ex in load_data(["bundled:train"])]
    dataset = [{"input_ids": s.input_ids, "labels": s.labels} for s in sequences]
    seen = {"tokens": 0}

    def collator(features):
        batch = collate([type(sequences[0])(f["input_ids"], f["labels"]) for f in features], tokenizer.pad_token_id)
        seen["tokens"] += int(batch["attention_mask"].sum())
        return batch

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=batch_size,
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
    run_dir = Path(tempfile.mkdtemp(prefix="icft-throughput-"))
    train(load_config(None, settings), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["tokens_per_s"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=EMBEDDED_DEFAULT)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write {hf_trainer_lora_tps, icft_plain_tps, icft_full_tps} here")
    args = parser.parse_args()
    common = (args.model, args.steps, args.batch_size, args.max_length, args.lr, args.seed)

    result = {
        "hf_trainer_lora_tps": hf_trainer_lora(*common),
        "icft_plain_tps": icft_tps(*common, full=False),
        "icft_full_tps": icft_tps(*common, full=True),
    }
    plain_ratio = result["icft_plain_tps"] / result["hf_trainer_lora_tps"]
    full_ratio = result["icft_full_tps"] / result["icft_plain_tps"]
    print(f"\n{args.model}, {args.steps} steps, batch {args.batch_size}, max length {args.max_length}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print("| loop | tokens/s | ratio |\n|---|---|---|")
    print(f"| (1) HF Trainer + peft LoRA | {result['hf_trainer_lora_tps']:.0f} | 1.00 |")
    print(f"| (2) icft train, curriculum and memory off | {result['icft_plain_tps']:.0f} | {plain_ratio:.2f} x (1) |")
    print(f"| (3) icft train, full ICFT (replay 0.25) | {result['icft_full_tps']:.0f} | {full_ratio:.2f} x (2) |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
