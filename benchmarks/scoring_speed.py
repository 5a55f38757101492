"""Scoring speed: multiple-choice and preference items through `score_choices`, the evaluation's scorer.

Speed is pair tokens per second: the tokens of every (prompt, candidate) pair, as if each ran alone,
over the wall time of scoring them (model loading excluded). Shared prompts, single-token candidates and
cached prompts make the model run fewer tokens than that, which is what the figure rewards. `--repeats`
times the same call several times (median and range). Each repeat also scores the same pairs with one
forward pass per candidate (`score_pairs(..., share_prompts=False)`, how icft scored before prompts were
shared), so the table gives before and after on the same load, and the largest difference between the two
sets of scores. `--json` keeps the scores, so two versions of the code can be checked for equal results:

    python benchmarks/scoring_speed.py --data ../shared/data/mmlu_medical/dev.jsonl --max-examples 40 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from icft.data.formatting import candidates, resolve_template  # noqa: E402
from icft.data.prompt_format import PromptFormat  # noqa: E402
from icft.data.sources import load_data  # noqa: E402
from icft.data.tokenize import encode_pair  # noqa: E402
from icft.evaluation.scoring import is_scorable, score_choices  # noqa: E402
from icft.io import write_json  # noqa: E402
from icft.likelihood import ScoreSettings, score_pairs  # noqa: E402
from icft.models import SMOLLM2, load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--data", default="bundled:test-unseen", help="a data file, or bundled:<name>")
    parser.add_argument("--max-examples", type=int, default=40, help="the first N scorable items")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", help="write the timings and every candidate's score here")
    args = parser.parse_args()
    if args.repeats < 1 or args.max_examples < 1:
        print("error: --repeats and --max-examples must be at least 1", file=sys.stderr)
        return 2
    if not args.data.startswith("bundled:") and not Path(args.data).exists():
        print(f"skipped: {args.data} not found")
        return 0
    examples = [ex for ex in load_data([args.data], quiet=True) if is_scorable(ex)][: args.max_examples]
    model, tokenizer = load_model(args.model)
    template = resolve_template(tokenizer, "auto")
    fmt = PromptFormat(tokenizer, template, args.max_length)
    items = [candidates(ex, tokenizer, template) for ex in examples]
    pairs = [(prompt, c) for prompt, cands, _ in items for c in cands]
    pair_tokens = sum(len(encode_pair(tokenizer, p, c, args.max_length, add_eos=False, template=template).input_ids)
                      for p, c in pairs)  # fmt: skip
    seconds, unshared_seconds, scores, unshared = [], [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        scores = score_choices(model, fmt, examples, args.batch_size)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        unshared = score_pairs(model, tokenizer, pairs, ScoreSettings.of(fmt, args.batch_size), share_prompts=False)
        unshared_seconds.append(time.perf_counter() - start)
    rates = [pair_tokens / s for s in seconds]
    before = [pair_tokens / s for s in unshared_seconds]
    gap = max(abs(a - b) for a, b in zip([v for s in scores for v in s.logprobs], unshared))
    print(f"{args.model} ({template}), {args.data}: {len(examples)} items, {pair_tokens} pair tokens, batch "
          f"{args.batch_size}, {torch.get_num_threads()} threads")  # fmt: skip
    for label, r, s in (("shared prompts", rates, seconds), ("one pass per candidate", before, unshared_seconds)):
        print(f"{label}: pair tokens/s median {statistics.median(r):.0f} (min {min(r):.0f}, max {max(r):.0f}) "
              f"over {args.repeats} run(s); seconds {', '.join(f'{x:.1f}' for x in s)}")  # fmt: skip
    speedups = [a / b for a, b in zip(rates, before)]
    print(f"speed-up {statistics.median(speedups):.2f}x (per repeat {', '.join(f'{x:.2f}' for x in speedups)}); "
          f"largest score difference {gap:.2e}")  # fmt: skip
    if args.json:
        write_json(args.json, {"pair_tokens": pair_tokens, "seconds": seconds, "tokens_per_s": rates,
                               "unshared_seconds": unshared_seconds, "largest_score_difference": gap,
                               "scores": {ex.id: s.logprobs for ex, s in zip(examples, scores)}})  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
