"""Run folders that never eat a user's files, one trainer per folder, nothing stale (issue 29), on the tiny Llama:
the marker and --overwrite, the config hash icft eval checks, the lock, leftovers of a kill, and metrics.jsonl
across a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _paced_icft import command as paced_icft

from icft.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def settings(model_dir: Path, data: tuple[Path, Path], steps: int = 3, save_every: int = 3, **more) -> list[str]:
    train, val = data
    pairs = {
        "model.name": str(model_dir), "model.max_length": 48, "data.train": f"[{train}]",
        "data.validation": f"[{val}]", "train.max_steps": steps, "train.batch_size": 4, "train.log_every": 1,
        "train.save_every": save_every, "train.eval_max_examples": 4, "memory.ltm_capacity": 12,
        "memory.stm_capacity": 8, "train.lr": 0.01, **more,
    }  # fmt: skip
    return [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]


def interrupt_after_checkpoint(monkeypatch, step: int) -> None:
    """Stop the run (as Ctrl-C would) once checkpoint `step` is written."""
    from icft.recipes import train as recipe

    real = recipe.save_checkpoint

    def save_then_stop(run_dir, at, *args, **kwargs):
        real(run_dir, at, *args, **kwargs)
        if at == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(recipe, "save_checkpoint", save_then_stop)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_a_users_folder_is_left_as_it_was(tiny_llama_dir, staged_data, tmp_path, capsys):
    """With a model that loads, icft train used to start in the folder and delete its checkpoints/model.bin."""
    user = tmp_path / "out" / "userproj"
    (user / "checkpoints").mkdir(parents=True)
    (user / "checkpoints" / "model.bin").write_bytes(b"the user's weights")
    assert main(["train", *settings(tiny_llama_dir, staged_data), "--output-dir", str(user)]) == 2
    assert f"{user}: not empty (checkpoints) and not an icft run folder" in one_line_error(capsys)
    assert [p.name for p in user.rglob("*")] == ["checkpoints", "model.bin"]
    assert (user / "checkpoints" / "model.bin").read_bytes() == b"the user's weights"


def test_runs_of_another_config_and_a_mixed_folder(tiny_llama_dir, staged_data, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    _, val = staged_data
    assert main(["train", *settings(tiny_llama_dir, staged_data), "--output-dir", str(run)]) == 0
    capsys.readouterr()
    marker = json.loads((run / ".icft-run.json").read_text())
    stamp = (run / "adapter" / ".icft-config-hash").read_text().strip()
    assert stamp == marker["config_hash"] == (run / "memory" / ".icft-config-hash").read_text().strip()
    # Folders get the umask's permissions, as the files in them do (they were 0700).
    for folder in ("adapter", "memory", "checkpoints"):
        assert (run / folder).stat().st_mode & 0o777 == 0o755, folder
    (run / "notes.txt").write_text("the user's notes\n")

    # A new run of another config is refused by name; the finished run stays as it was.
    other = settings(tiny_llama_dir, staged_data, **{"train.lr": 0.02})
    assert main(["train", *other, "--output-dir", str(run)]) == 2
    assert one_line_error(capsys) == (f"error: {run} holds a finished run of another config (train.lr: 0.01 -> 0.02): "
                                      "give another --output-dir, or add --overwrite to replace it")  # fmt: skip
    assert (run / "adapter" / ".icft-config-hash").read_text().strip() == stamp

    # The folder an older icft left: a new run's config.yaml beside the finished run's adapter/ and memory/.
    # icft eval used to evaluate that mix and exit 0.
    import yaml

    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load(saved), "name": "another-run"}))
    assert main(["eval", "--run", str(run), "--data", str(val)]) == 2
    assert one_line_error(capsys) == (
        f"error: {run / 'adapter'} was trained under another config than {run / 'config.yaml'}: the folder mixes "
        f"two runs; finish the newer one (icft train --resume {run}) or train again")  # fmt: skip
    (run / "config.yaml").write_text(saved)

    # --overwrite replaces it, removing icft's files only: the old adapter goes at once, the user's notes stay.
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, 3)
        assert main(["train", *other, "--overwrite", "--output-dir", str(run)]) == 130
    out = capsys.readouterr().out
    removed = "config.yaml, prompt_format.json, checkpoints, tensorboard, metrics.jsonl, adapter, memory"
    assert f"removed the earlier run's {removed}" in out
    assert not (run / "adapter").exists() and not (run / "memory").exists()
    assert (run / "notes.txt").read_text() == "the user's notes\n"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003"]
    assert main(["eval", "--run", str(run), "--data", str(val)]) == 2
    assert f"{run / 'adapter'}: adapter not found (did the run finish?" in one_line_error(capsys)


def test_one_trainer_per_folder_and_a_kill_leaves_nothing_behind(tiny_llama_dir, staged_data, tmp_path, capsys):
    """A second trainer is refused while the first lives; once it is killed (-9) the OS frees its lock, the
    run resumes, and what the kill left half-written is removed (and nothing of the user's)."""
    run = tmp_path / "run"
    args = settings(tiny_llama_dir, staged_data, steps=20, save_every=5)
    env = dict(os.environ)  # ICFT_HOME: the test's own (conftest)
    # paced (at least 50 ms a forward): the 15 steps after the step-5 checkpoint outlast the 50 ms poll below on
    # any machine, so it is stopped mid-run
    first = subprocess.Popen(paced_icft(0.05, "train", *args, "--output-dir", str(run)), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 180
        while not (run / "checkpoints" / "step-000005").exists() and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGSTOP)  # alive, holding the lock, and no further
        assert not (run / "adapter").exists(), "the run finished before it was stopped"
        assert main(["train", *args, "--output-dir", str(run)]) == 2
        assert one_line_error(capsys) == f"error: {run} is in use by process {first.pid}"
        assert main(["train", "--resume", str(run)]) == 2
        assert one_line_error(capsys) == f"error: {run} is in use by process {first.pid}"
    finally:
        first.kill()
        first.wait()
    # What a kill leaves: a checkpoint and a final adapter half-written (this version's and older names).
    left = [run / "checkpoints" / ".tmp-step-000010", run / ".adapter.icft-tmp-k2j3h4zz", run / ".adapter.x7f2q9w1",
            run / ".memory.icft-old", run / ".summary.json.icft-tmp-abcd1234"]  # fmt: skip
    for path in left:
        path.mkdir() if "summary" not in path.name else path.write_text("{")
    mine = [run / ".adapter.bak", run / "notes.txt"]
    for path in mine:
        path.write_text("the user's\n")

    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert "removed what an interrupted run left half-written" in out and "resumed from" in out
    assert not any(path.exists() for path in left)
    assert all(path.read_text() == "the user's\n" for path in mine)
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 21))
    assert len(list((run / "tensorboard").iterdir())) >= 1


def test_metrics_after_a_resume_equal_an_uninterrupted_runs(tiny_llama_dir, staged_data, tmp_path, monkeypatch):
    """Each metrics.jsonl line averages the steps since the line before; the ones after a resume used to
    average only the steps since the resume."""
    args = settings(tiny_llama_dir, staged_data, steps=8, save_every=3, **{"train.log_every": 4})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", *args, "--output-dir", str(straight)]) == 0
    with monkeypatch.context() as m:
        interrupt_after_checkpoint(m, 6)  # logged at 4; steps 5 and 6 are in the window the checkpoint keeps
        assert main(["train", *args, "--output-dir", str(resumed)]) == 130
    assert main(["train", "--resume", str(resumed)]) == 0

    def records(run: Path) -> list[dict]:
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]  # a timing

    a, b = records(straight), records(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert y[key] == (pytest.approx(x[key], rel=1e-5, abs=1e-7) if isinstance(x[key], float) else x[key]), key
