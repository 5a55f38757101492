"""FSDP2 on two CPU processes: a run checkpointed and resumed ends with the adapter of an uninterrupted run.

accelerate refuses FSDP on a CPU (it falls back to one process, or to DDP; see configs/accelerate/README.md),
so two processes are started with torchrun and shard with torch's `fully_shard`; the accelerate path
(`configs/accelerate/fsdp.yaml`) is left for the GPU check (benchmarks/gpu_check.sh).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow
WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"


def _run(mode: str, model_dir: Path, out: Path, port: int) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(WORKER), mode, str(model_dir), str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


def test_fsdp_checkpoint_resume_matches_an_uninterrupted_run(tiny_llama_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    _run("straight", tiny_llama_dir, straight, 29531)
    _run("first", tiny_llama_dir, resumed, 29532)
    assert (resumed / "checkpoint.pt").exists() and not (resumed / "adapter.pt").exists()
    _run("resume", tiny_llama_dir, resumed, 29533)
    a, b = torch.load(straight / "adapter.pt"), torch.load(resumed / "adapter.pt")
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    assert any(a[k].abs().sum() > 0 for k in a if "lora_B" in k)  # it trained: lora_B starts at zero
