#!/usr/bin/env bash
# One-GPU check, under 10 minutes: `icft compare` at a larger budget in bf16, then tokens/s, peak GPU memory and
# model FLOPs utilisation (MFU) against 6 x params x tokens (Kaplan et al. 2020: forward + backward ~ 6 FLOPs per
# parameter per token; with LoRA the frozen weights skip their weight-gradient matmuls, so ~4 x N x T is spent
# and an MFU on 6 x N x T reads as the usual, comparable figure).
#
#   bash benchmarks/gpu_check.sh                   # the embedded default, 300 steps x 3 methods x 1 seed
#   MODEL=/models/Llama-3.2-1B STEPS=200 bash benchmarks/gpu_check.sh
#   PEAK_TFLOPS=989 ...                            # the GPU's dense bf16 peak (H100 SXM: 989; H200 too; A100: 312)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
MODEL=${MODEL:-minilm-decoder}
STEPS=${STEPS:-300}
BATCH=${BATCH:-16}
MAX_LENGTH=${MAX_LENGTH:-256}
OUT=${OUT:-runs/gpu-check}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch $("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo missing))." >&2
    echo "gpu_check: install a CUDA torch build (make demo TORCH=\"torch==2.9.1\") and run on a GPU machine." >&2
    exit 3
fi
PEAK_TFLOPS=${PEAK_TFLOPS:-$("$PY" - <<'PYEOF'
import torch
name = torch.cuda.get_device_name(0)
# dense bf16 tensor-core peaks, TFLOP/s
for key, tflops in (("H200", 989), ("H100", 989), ("A100", 312), ("L40S", 362), ("A10", 125), ("L4", 121)):
    if key in name:
        print(tflops)
        break
else:
    print(0)
PYEOF
)}
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'

rm -rf "$OUT"
start=$(date +%s)
# icft against its two closest baselines, one seed: enough to see the recipe run at scale in 10 minutes.
timeout 540 "$PY" -m icft compare --config configs/compare-demo.yaml --output-dir "$OUT" \
    --set model.name="$MODEL" --set model.max_length="$MAX_LENGTH" --set train.max_steps="$STEPS" \
    --set train.batch_size="$BATCH" --set train.mixed_precision=bf16 --set train.save_every="$STEPS" \
    --set train.log_every=10 --set "compare.methods=[lora-mixed,lora-curriculum,icft]" \
    --set "compare.seeds=[0]" --set compare.jobs=1 --set compare.max_test_examples=64
echo "compare wall time: $(( $(date +%s) - start )) s"

"$PY" - "$OUT" "$MODEL" "$PEAK_TFLOPS" <<'PYEOF'
"""Throughput, peak memory and MFU of each run, from its metrics.jsonl and summary.json."""
import json, sys
from pathlib import Path

out, model_name, peak = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
from icft.models import count_parameters, load_model

model, _ = load_model(model_name)
n_params = count_parameters(model)[1]
print(f"model {model_name}: {n_params / 1e6:.1f}M parameters; GPU bf16 peak {peak:.0f} TFLOP/s")
print(f"{'run':<40} {'tokens/s':>10} {'peak GPU MiB':>13} {'MFU (6NT)':>10}")
for metrics in sorted(out.rglob("metrics.jsonl")):
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    tps = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    if not tps:
        continue
    tps_mean = sum(tps[len(tps) // 5 :]) / len(tps[len(tps) // 5 :])  # skip the warm-up fifth
    summary = metrics.parent / "summary.json"
    info = json.loads(summary.read_text()) if summary.exists() else {}
    mem = info.get("peak_gpu_mb") or float("nan")
    mfu = 6 * n_params * tps_mean / (peak * 1e12) if peak else float("nan")
    print(f"{str(metrics.parent.relative_to(out)):<40} {tps_mean:>10.0f} {mem:>13.0f} {mfu:>10.2%}")
PYEOF
