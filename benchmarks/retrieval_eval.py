"""Does retrieving from the long-term memory at answer time help? `icft eval` with and without `--retrieve K`.

    python benchmarks/retrieval_eval.py --runs runs/compare-demo/icft/seed0 runs/compare-demo/icft/seed1 \
        --data bundled:test-retention bundled:test-unseen --k 3 --max-examples 100

For each run and file: accuracy without retrieval, with the K nearest LTM exemplars in the prompt, and the
paired difference; the trivial baselines on the same items beside them. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from icft.data.sources import load_data
from icft.evaluation.baselines import trivial_baselines


def _eval(run: str, data: list[str], k: int, max_examples: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "icft", "eval", "--run", run, "--data", *data, "--json", str(out),
           "--max-examples", str(max_examples)] + (["--retrieve", str(k)] if k else [])  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--json")
    args = parser.parse_args()
    rows: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, run in enumerate(args.runs):
            for k in (0, args.k):
                result = _eval(run, args.data, k, args.max_examples, Path(tmp) / f"{i}-{k}.json")
                for name, metrics in result.items():
                    for metric in ("accuracy", "preference_accuracy"):
                        if metrics.get(metric) is not None:
                            rows.setdefault(f"{name} {metric}", {}).setdefault(str(k), []).append(metrics[metric])
    files = {spec: load_data([spec], quiet=True)[: args.max_examples] for spec in args.data}
    print(f"| file, metric | no retrieval | retrieve {args.k} | difference | random | majority | position |")
    print("|---|---|---|---|---|---|---|")
    for key, by_k in rows.items():
        base, retr = by_k["0"], by_k[str(args.k)]
        diffs = [b - a for a, b in zip(base, retr)]
        spec = next((s for s in args.data if s.split(":")[-1].split("/")[-1].removesuffix(".jsonl") in key), None)
        trivial = trivial_baselines(files[spec]) if spec else {}
        cells = [_mean_sd(base), _mean_sd(retr), _mean_sd(diffs, signed=True)]
        cells += [f"{trivial.get(b, {}).get(key.split()[-1], float('nan')):.3f}" for b in
                  ("random", "majority", "position-prior")]  # fmt: skip
        print(f"| {key} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _mean_sd(values: list[float], signed: bool = False) -> str:
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:+.3f} ± {sd:.3f}" if signed else f"{mean:.3f} ± {sd:.3f}"


if __name__ == "__main__":
    main()
