"""The training recipe end to end on a tiny random Llama: outputs, resume, multi-process, failures."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _paced_icft import command as paced_icft
from safetensors.torch import load_file

from icft.cli import main

pytestmark = pytest.mark.slow



def overrides(model_dir: Path, data: tuple[Path, Path], steps: int = 9, save_every: int = 3) -> list[str]:
    train, val = data
    pairs = {
        "model.name": str(model_dir), "model.max_length": 48, "data.train": f"[{train}]",
        "data.validation": f"[{val}]", "train.max_steps": steps, "train.batch_size": 4, "train.log_every": 1,
        "train.save_every": save_every, "train.eval_max_examples": 8, "memory.ltm_capacity": 12,
        "memory.stm_capacity": 8, "train.lr": 0.01,
    }  # fmt: skip
    return [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]


def test_train_writes_run_folder_with_all_loss_parts(tiny_llama_dir, staged_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *overrides(tiny_llama_dir, staged_data), "--output-dir", str(run)]) == 0
    # the one speed and memory estimate, after the first ESTIMATE_AFTER steps (of 9)
    assert len([line for line in capsys.readouterr().out.splitlines() if " s/step, about " in line]) == 1

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 10))
    keys = {"step", "stage", "lr", "loss_total", "loss_task", "loss_consistency", "loss_finetune", "tokens_per_s"}
    assert keys <= set(records[0])
    assert [r["stage"] for r in records][::4] == ["general", "knowledge", "clinical"]
    # Replay and consistency start once the first stage is consolidated into long-term memory.
    assert records[0]["loss_consistency"] == 0.0
    assert any(r["loss_consistency"] > 0 for r in records) and any(r["loss_finetune"] > 0 for r in records)
    for r in records:
        assert math.isclose(r["loss_total"], r["loss_task"] + r["loss_consistency"] + r["loss_finetune"], rel_tol=1e-4)

    stage_eval = json.loads((run / "stage_eval.json").read_text())
    assert stage_eval["stages"] == ["general", "knowledge", "clinical"]
    assert len(stage_eval["accuracy_matrix"]) == 3 and all(len(row) == 3 for row in stage_eval["accuracy_matrix"])
    assert (run / "config.yaml").exists() and (run / "memory" / "memory.jsonl").exists()
    assert len((run / "memory" / "memory.jsonl").read_text().splitlines()) <= 12
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000006", "step-000009"]

    # The adapter loads with peft and holds the trained weights, not the initial ones.
    from peft import PeftModel

    from icft.models import load_model

    base, _ = load_model(str(tiny_llama_dir))
    model = PeftModel.from_pretrained(base, run / "adapter")
    trained = torch.load(run / "checkpoints" / "step-000009" / "trainable.pt")
    params = dict(model.named_parameters())
    lora_b = [n for n in trained if "lora_B" in n]
    assert lora_b and all(params[n].abs().sum() > 0 for n in lora_b)


def test_switched_off_terms_are_zero(tiny_llama_dir, staged_data, tmp_path):
    run = tmp_path / "run"
    args = overrides(tiny_llama_dir, staged_data, steps=6) + ["--set", "loss.consistency=0", "--set", "loss.finetune=0"]
    assert main(["train", *args, "--output-dir", str(run)]) == 0
    for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        assert r["loss_total"] == pytest.approx(r["loss_task"])


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _icft(*args: str) -> list[str]:
    return [sys.executable, "-m", "icft", "train", *args]


def test_kill_and_resume_ends_with_the_same_adapter(tiny_llama_dir, staged_data, tmp_path):
    args = overrides(tiny_llama_dir, staged_data, steps=60, save_every=5)
    env = dict(os.environ)  # ICFT_HOME: the test's own (conftest)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_icft(*args, "--output-dir", str(straight)), check=True, env=env, capture_output=True)

    # paced (at least 20 ms a forward): the 50 steps after the step-10 checkpoint take over a second on any
    # machine, so the kill lands mid-run; the numbers are the unpaced run's
    proc = subprocess.Popen(paced_icft(0.02, "train", *args, "--output-dir", str(killed)), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-000010").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "adapter").exists(), "the run finished before it was killed"

    resumed = subprocess.run(_icft("--resume", str(killed)), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    a, b = _adapter(straight), _adapter(killed)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))


def test_two_processes_data_parallel(tiny_llama_dir, staged_data, tmp_path):
    """Two CPU processes over gloo (DDP). `accelerate launch --cpu --num_processes 2` would start ONE process
    (accelerate 1.x uses its simple launcher with --cpu), so we start two with torchrun and let accelerate
    pick the distributed set-up up from the environment, as it does under `accelerate launch` on GPUs."""
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "icft", "train", *overrides(tiny_llama_dir, staged_data, steps=6),
           "--output-dir", str(run)]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true"}  # ICFT_HOME: the test's own (conftest)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((run / "checkpoints" / "step-000006").glob("rank*.pt")) != []
    assert (run / "checkpoints" / "step-000006" / "rank1.pt").exists(), "only one process ran"
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    # Both processes end with the same adapter: gradients were averaged, the replicas did not drift apart.
    final = run / "checkpoints" / "step-000006"
    ranks = [torch.load(final / f"rank{i}.pt", weights_only=False)["fingerprint"] for i in (0, 1)]
    assert len(ranks[0]) > 0 and ranks[0] == pytest.approx(ranks[1], rel=1e-6, abs=1e-7)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tiny_llama_dir, staged_data, tmp_path, monkeypatch, capsys):
    from icft.recipes import train as recipe

    real = recipe.losses.weighted_total
    calls = {"n": 0}

    def poisoned(parts, weights):
        calls["n"] += 1
        total = real(parts, weights)
        return total * float("nan") if calls["n"] == 5 else total

    monkeypatch.setattr(recipe.losses, "weighted_total", poisoned)
    run = tmp_path / "run"
    assert main(["train", *overrides(tiny_llama_dir, staged_data, steps=9), "--output-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at step 4" in err and "step-000003" in err and "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003"]
    assert torch.load(run / "checkpoints" / "step-000003" / "trainable.pt")
    assert not (run / "adapter").exists()


def test_plateau_ends_a_stage_early_and_gives_its_steps_to_the_next(tiny_llama_dir, staged_data, tmp_path):
    # lr 0: the validation loss never improves, so each stage (but the last) ends at its second check.
    run = tmp_path / "run"
    args = overrides(tiny_llama_dir, staged_data, steps=12) + [
        "--set", "train.lr=0", "--set", "curriculum.plateau_patience=1", "--set", "curriculum.plateau_every=1"]
    assert main(["train", *args, "--output-dir", str(run)]) == 0
    stages = [json.loads(x)["stage"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert stages == ["general"] * 2 + ["knowledge"] * 2 + ["clinical"] * 8
    assert len(json.loads((run / "stage_eval.json").read_text())["accuracy_matrix"]) == 3


def test_training_a_finished_run_again_is_refused_in_one_line(tiny_llama_dir, staged_data, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *overrides(tiny_llama_dir, staged_data, steps=3), "--output-dir", str(run)]
    assert main(args) == 0
    adapter = _adapter(run)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: already trained: {run} (use --overwrite to train again)"
    assert all(torch.equal(adapter[k], v) for k, v in _adapter(run).items())  # nothing was touched
    assert main([*args, "--overwrite"]) == 0  # trains it again


def test_eta_is_a_moving_average_and_the_estimate_is_said_once(monkeypatch, capsys):
    from icft import progress

    clock = {"now": 100.0}
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock["now"])
    monkeypatch.setattr(progress.sys.stdout, "isatty", lambda: False)
    display = progress.ProgressDisplay(total=20, initial=0, quiet=False)
    for seconds in (1.0, 1.0, 1.0, 1.0, 1.0, 11.0):
        clock["now"] += seconds
        display.step()
    # one 11 s step among 1 s ones: the average moves by SMOOTHING of the difference, not all the way
    assert display.step_s == pytest.approx(1.0 + progress.SMOOTHING * 10.0)
    display.status(6, "text")
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"step 6/20 text eta {display.step_s * 14:.0f}s"
    estimates = [line for line in out if line.startswith("after 5 steps: 1.00 s/step, about 15s left for 15 steps")]
    assert len(estimates) == 1 and "peak memory so far" in estimates[0]


def test_stages_without_validation_examples_are_named_with_the_reason():
    from icft.config import load_config
    from icft.curriculum import Stage
    from icft.data.schema import Example
    from icft.recipes.train import unscored_stages

    stages = [Stage(name, []) for name in ("general", "knowledge", "clinical")]
    val = [Example("v", "qa", "s", question="Q?", answer="A", stage="general")]
    named = load_config(None, [])
    line = unscored_stages(named, stages, [val, [], []], val)
    assert line.startswith("stage(s) knowledge, clinical: not scored after each stage, no validation example has")
    assert unscored_stages(named, stages, [val, val, val], val) is None
    assert unscored_stages(load_config(None, ["train.eval_max_examples=0"]), stages, [val, [], []], val) is None
    auto = load_config(None, ["curriculum.stages=auto", "curriculum.num_stages=3"])
    line = unscored_stages(auto, stages, [[], [], []], val)
    assert "1 validation examples cannot make 3 difficulty stages (curriculum.num_stages)" in line
