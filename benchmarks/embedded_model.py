"""Which embedded default? Held-out perplexity after the same short training.

(a) minilm-decoder: all-MiniLM-L6-v2 warm-started as a causal decoder (BertLMHeadModel, is_decoder=True)
(b) a random-init Llama of the same size (hidden 384, 6 layers, 12 heads, MLP 1536) with the same tokenizer

Both are fully fine-tuned with the same recipe (`icft train`, all data mixed, no memory) for the same
steps, batch and data; the learning rate of each is picked on the validation split from --lrs, and
perplexity is reported on the test split (conditions never trained on): exp of the mean NLL of the
answer tokens given the prompt. The LoRA row shows what `icft train` trains by default on (a).

    python benchmarks/embedded_model.py --steps 150 --json embedded.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from icft.config import load_config  # noqa: E402
from icft.data.formatting import prompt_and_target  # noqa: E402
from icft.data.kinds import choice_type  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.data.tokenize import encode_pair  # noqa: E402
from icft.likelihood import ScoreSettings, score_pairs  # noqa: E402
from icft.models import MINILM_DECODER, load_model  # noqa: E402
from icft.recipes.train import train  # noqa: E402
from icft.runs import load_run  # noqa: E402
from icft.tables import cell, markdown  # noqa: E402


def perplexity(model, tokenizer, examples, max_length: int) -> float:
    pairs = [prompt_and_target(ex) for ex in examples]
    logprobs = score_pairs(model, tokenizer, pairs, ScoreSettings(max_length))
    tokens = [encode_pair(tokenizer, p, t, max_length, add_eos=False).n_target for p, t in pairs]
    return math.exp(-sum(logprobs) / sum(tokens))


def random_llama(folder: Path) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer = load_model(MINILM_DECODER)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                         num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--lrs", default="3e-4,1e-3")
    parser.add_argument("--max-eval", type=int, default=400, help="examples of each split used for perplexity")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    # perplexity of one answer per item: a preference pair has two
    val = [ex for ex in load_data(["bundled:validation"]) if choice_type(ex) != "preference"][: args.max_eval]
    test = [ex for ex in load_data(["bundled:test"]) if choice_type(ex) != "preference"][: args.max_eval]
    work = Path(tempfile.mkdtemp(prefix="icft-embedded-"))
    candidates = {
        "minilm-decoder (warm start), full FT": (MINILM_DECODER, "full"),
        "random-init Llama, same size, full FT": (random_llama(work / "random-llama"), "full"),
        "minilm-decoder (warm start), LoRA r=8": (MINILM_DECODER, "lora"),
    }
    rows = []
    for label, (name, method) in candidates.items():
        model, tokenizer = load_model(name)
        before = perplexity(model, tokenizer, test, args.max_length)
        best = None
        for lr in [float(x) for x in args.lrs.split(",")]:
            config = load_config(None, [
                f"model.name={name}", f"peft.method={method}", "curriculum.order=mixed", "memory.enabled=false",
                f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.lr={lr}",
                f"model.max_length={args.max_length}",
                f"train.save_every={args.steps}", "train.eval_max_examples=0",
            ])  # fmt: skip
            run_dir = work / f"{len(rows)}-{lr}"
            start = time.perf_counter()
            train(config, run_dir)
            seconds = time.perf_counter() - start
            model, tokenizer = load_run(run_dir)
            val_ppl = perplexity(model, tokenizer, val, args.max_length)
            print(f"{label} lr={lr}: validation perplexity {val_ppl:.1f}", file=sys.stderr)
            if best is None or val_ppl < best["val_ppl"]:
                best = {"lr": lr, "val_ppl": val_ppl, "test_ppl": perplexity(model, tokenizer, test, args.max_length),
                        "train_s": seconds}  # fmt: skip
        rows.append({"model": label, "test_ppl_before": before, **best})

    print(f"\nHeld-out perplexity on bundled test answers after {args.steps} steps x batch {args.batch_size}")
    header = ["model", "test ppl before", "lr (picked on val)", "val ppl", "test ppl", "train s"]
    cells = [[r["model"], cell(r["test_ppl_before"], 1), f"{r['lr']:g}", cell(r["val_ppl"], 1), cell(r["test_ppl"], 1),
              cell(r["train_s"], 0)] for r in rows]  # fmt: skip
    print("\n".join(markdown(header, cells)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
