"""Where one training step's time goes, on the embedded default (SmolLM2-135M-Instruct, LoRA on attention).

One micro-batch of the bundled training data in the chat template, forward + backward, timed three ways:
  full logits   the model's logits at every position, cross-entropy on the labelled ones (what a plain
                `model(**batch, labels=...)` does)
  target logits icft's `likelihood.target_logits`: the output projection (49,152 x 576) only at the
                positions that predict an answer token
  padded        target logits, but every row padded to max_length instead of the batch's longest
and then a torch.profiler table of the target-logits step (top operators by CPU time).

    python benchmarks/profile_step.py --batch-size 8 --max-length 128 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402

from icft.data.prompt_format import PromptFormat  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.data.tokenize import collate  # noqa: E402
from icft.likelihood import target_logits  # noqa: E402
from icft.models import SMOLLM2, load_model, lora_target_modules  # noqa: E402


def step_seconds(model, batch: dict, how: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if how == "full logits":
            loss = model(**batch).loss  # transformers shifts the labels and averages over the labelled ones
        else:
            logits, targets, _ = target_logits(model, batch)
            loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=lora_target_modules(model),
                                             task_type="CAUSAL_LM"))  # fmt: skip
    model.train()
    fmt = PromptFormat.resolve(tokenizer, "auto", args.max_length)
    sequences = [fmt.encode(ex) for ex in load_data(["bundled:train"], quiet=True)[: args.batch_size]]
    batch = collate(sequences, tokenizer.pad_token_id)
    n_tokens, n_targets = int(batch["attention_mask"].sum()), int((batch["labels"] != -100).sum())
    width = batch["input_ids"].shape[1]
    padded = collate(sequences, tokenizer.pad_token_id)
    extra = args.max_length - width
    if extra > 0:
        padded = {k: torch.nn.functional.pad(v, (0, extra), value={"input_ids": tokenizer.pad_token_id,
                                                                    "attention_mask": 0, "labels": -100}[k])
                  for k, v in padded.items()}  # fmt: skip
    print(f"{args.model} ({fmt.template}), batch {args.batch_size} x {width} tokens (longest row; "
          f"{n_tokens} real tokens, {n_targets} answer tokens), {torch.get_num_threads()} threads")
    step_seconds(model, batch, "target logits", 1)  # warm-up
    rows = {}
    for how, data in (("full logits", batch), ("target logits", batch), ("padded", padded)):
        seconds = step_seconds(model, data, how, args.repeats)
        rows[how] = statistics.median(seconds)
        print(f"  {how:<14} {rows[how]:.3f} s per step (median of {args.repeats}), {n_tokens / rows[how]:.0f} tokens/s")
    print(f"  target logits vs full: {rows['full logits'] / rows['target logits']:.2f}x; "
          f"padded to {args.max_length} costs {rows['padded'] / rows['target logits']:.2f}x")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step_seconds(model, batch, "target logits", 1)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
