"""Learning curves of retention per stage: does a method learn stage 1's facts, and does it then forget them?

    python benchmarks/forgetting_curves.py --config configs/benchmark-cpu.yaml --method lora-sequential \
        --every 50 --out runs/curves

Trains one method (a config diff, as `icft compare` defines them), measures every stage's retention probes
(validation-retention) every `--every` steps, prints the table and writes `curves.png` and `curves.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from icft.config import load_config  # noqa: E402
from icft.recipes.compare import method_config  # noqa: E402
from icft.recipes.train import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--method", default="lora-sequential")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--out", default="runs/curves")
    args = parser.parse_args()
    config = load_config(args.config, args.set + [f"train.eval_every={args.every}"])
    cfg = method_config(config, args.method, args.seed)
    run = Path(args.out) / args.method
    train(cfg, run)
    report = json.loads((run / "stage_eval.json").read_text())
    curve, stages = report["curve"], report["stages"]
    print("| step | " + " | ".join(stages) + " |")
    print("|---|" + "---|" * len(stages))
    for point in curve:
        print(f"| {point['step']} | " + " | ".join(f"{a:.3f}" if a is not None else "-" for a in point["accuracy"])
              + " |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"curves-{args.method}.json").write_text(json.dumps(report, indent=1))
    plot(curve, stages, [int(e) for e in cfg_stage_ends(report, cfg)], Path(args.out) / f"curves-{args.method}.png",
         args.method)


def cfg_stage_ends(report: dict, cfg) -> list[int]:
    shares = cfg.curriculum.stage_steps or [1] * len(report["stages"])
    total, ends, acc = cfg.train.max_steps, [], 0.0
    for s in shares:
        acc += s
        ends.append(round(total * acc / sum(shares)))
    return ends


def plot(curve: list[dict], stages: list[str], ends: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [p["step"] for p in curve]
    for j, name in enumerate(stages):
        ax.plot(steps, [p["accuracy"][j] for p in curve], marker="o", label=f"{name} retention")
    for end in ends[:-1]:
        ax.axvline(end, color="grey", linestyle=":")
    ax.set(xlabel="optimizer step", ylabel="accuracy (held-out probes on taught facts)", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
