"""Peak memory and tokens/s of the memory-saving options, on the embedded default (one process each).

    python benchmarks/memory_options.py --steps 30 --json memory_options.json

Each option trains the same steps of full ICFT (memory on) in a fresh process, so that its peak resident
memory (ru_maxrss) is its own; tokens/s is the run's own figure from summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OPTIONS = {
    "default (fp32)": [],
    "gradient checkpointing": ["train.gradient_checkpointing=true"],
    "bf16 autocast": ["train.mixed_precision=bf16"],
    "bf16 + checkpointing": ["train.mixed_precision=bf16", "train.gradient_checkpointing=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ICFT_QUIET": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in OPTIONS.items():
            run = Path(tmp) / name.replace(" ", "-")
            base = [f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", "train.eval_max_examples=0",
                    f"model.max_length={args.max_length}", f"train.save_every={args.steps}"]  # fmt: skip
            cmd = [sys.executable, "-m", "icft", "train", "--config", "configs/demo.yaml", "--output-dir", str(run)]
            for s in base + sets:
                cmd += ["--set", s]
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            summary = json.loads((run / "summary.json").read_text())
            rows[name] = {"peak_rss_mb": summary["peak_rss_mb"], "tokens_per_s": summary["tokens_per_s"]}
            print(f"{name}: peak {summary['peak_rss_mb']:.0f} MB, {summary['tokens_per_s']:.0f} tokens/s", flush=True)
    print("| option | peak memory (MB) | tokens/s |\n|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['peak_rss_mb']:.0f} | {r['tokens_per_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
