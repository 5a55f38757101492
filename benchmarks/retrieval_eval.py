"""Does retrieving from the long-term memory at answer time help? `icft eval` with and without `--retrieve K`.

    python benchmarks/retrieval_eval.py --runs runs/compare-demo/runs/icft-s0-* runs/compare-demo/runs/icft-s1-* \
        --data bundled:test-retention bundled:test-unseen --k 3

For each run and file: accuracy without retrieval, with the K nearest LTM exemplars in the prompt, and the
difference paired by run (mean and 95% t interval over the runs); the trivial baselines on the same items
beside them. Prints a markdown table.
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
from icft.evaluation.statistics import paired_runs


def _eval(run: str, data: list[str], k: int, max_examples: int, out: Path) -> dict:
    cmd = [sys.executable, "-m", "icft", "eval", "--run", run, "--data", *data, "--json", str(out)]
    cmd += (["--max-examples", str(max_examples)] if max_examples else []) + (["--retrieve", str(k)] if k else [])
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--k", type=int, default=3)
    # The bundled files are ordered by stage, so the first N items of a file are mostly its first stage:
    # the default (0) scores every item.
    parser.add_argument("--max-examples", type=int, default=0, help="first N items of each file (0: all)")
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
    files = {spec: load_data([spec], quiet=True)[: args.max_examples or None] for spec in args.data}
    print(f"| file, metric | no retrieval | retrieve {args.k} | difference [95% CI] | random | majority | position |")
    print("|---|---|---|---|---|---|---|")
    for key, by_k in rows.items():
        base, retr = by_k["0"], by_k[str(args.k)]
        diff = paired_runs(dict(enumerate(retr)), dict(enumerate(base)))  # paired by run, t interval
        spec = next((s for s in args.data if s.split(":")[-1].split("/")[-1].removesuffix(".jsonl") in key), None)
        trivial = trivial_baselines(files[spec]) if spec else {}
        cells = [_mean_sd(base), _mean_sd(retr), f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]" if diff
                 else f"{retr[0] - base[0]:+.3f}"]  # fmt: skip
        cells += [f"{trivial.get(b, {}).get(key.split()[-1], float('nan')):.3f}" for b in
                  ("random", "majority", "position-prior")]  # fmt: skip
        print(f"| {key} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _mean_sd(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


if __name__ == "__main__":
    main()
