"""Every bad input ends in one line `error: ...` naming what to fix, exit code 2, no traceback, and no
run folder left behind. One row per class of mistake; all are caught before any model loads, except a
model that cannot be loaded, which is the model loader's own error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icft.cli import main


def _records(tmp_path: Path, stage: str | None = "general", n: int = 6) -> Path:
    path = tmp_path / "data.jsonl"
    rows = []
    for i in range(n):
        row = {"id": f"q{i}", "kind": "qa", "question": f"Question {i}?", "options": ["a", "b"], "answer": i % 2}
        if stage:
            row["stage"] = stage
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CASES = [
    # (name, extra --set values, text the error must contain)
    ("unknown scorer", ["curriculum.scorers={bogus: 1}"], "curriculum.scorers"),
    ("plateau check every 0 steps", ["curriculum.plateau_every=0", "curriculum.plateau_patience=2"],
     "curriculum.plateau_every"),
    ("all loss weights 0", ["loss.task=0", "loss.consistency=0", "loss.finetune=0"], "nothing to train on"),
    ("warmup ratio 3", ["train.warmup_ratio=3"], "train.warmup_ratio"),
    ("dropout 1.5", ["peft.dropout=1.5"], "peft.dropout"),
    ("negative retrieve_in_training", ["memory.retrieve_in_training=-1"], "memory.retrieve_in_training"),
    ("negative eval examples", ["train.eval_max_examples=-1"], "train.eval_max_examples"),
    ("negative train examples", ["data.max_train_examples=-5"], "data.max_train_examples"),
    ("unknown bundled file", ["data.train=[bundled:bogus]"], "bundled:bogus"),
    ("unknown config key", ["train.max_stepz=3"], "train.max_stepz"),
    ("wrong type", ["train.max_steps=many"], "train.max_steps"),
    ("unknown choice", ["memory.selection=random"], "memory.selection"),
    ("replay share over 1", ["memory.ltm_replay=1.5"], "memory.ltm_replay"),
    ("bad target modules", ["peft.target_modules=everything"], "peft.target_modules"),
    ("KL to base without LoRA", ["loss.kl_base=1", "peft.method=full"], "loss.kl_base"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "settings", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_and_exit_2(name, settings, expected, tmp_path, capsys):
    args = [x for s in settings for x in ("--set", s)]
    assert main(["train", *args, "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_data_errors_before_the_model_loads(tmp_path, capsys):
    """Stage mistakes are reported with the stages found, and the fix."""
    staged = _records(tmp_path, stage="general")
    # The config names stages that no record carries.
    assert main(["train", "--set", f"data.train=[{staged}]", "--set", "data.validation=[]",
                 "--set", "model.name=/no/such/model", "--output-dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "knowledge, clinical" in err and "stages found: general" in err and "Traceback" not in err

    # max_train_examples keeps only the first stage's records.
    two = tmp_path / "two.jsonl"
    rows = [json.loads(x) for x in staged.read_text().splitlines()]
    rows += [{**r, "id": r["id"] + "k", "stage": "knowledge"} for r in rows]
    two.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["train", "--set", f"data.train=[{two}]", "--set", "curriculum.stages=[general, knowledge]",
                 "--set", "data.max_train_examples=3", "--set", "model.name=/no/such/model",
                 "--output-dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "knowledge have no training examples" in err and "data.max_train_examples" in err

    # Some records have a stage, others do not.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(staged.read_text() + json.dumps({"id": "x", "kind": "text", "text": "No stage."}) + "\n")
    assert main(["train", "--set", f"data.train=[{mixed}]", "--set", "curriculum.stages=[general]",
                 "--set", "model.name=/no/such/model", "--output-dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{mixed}:7" in err and "curriculum.stages: auto" in err
    assert not (tmp_path / "run").exists()


def test_bad_model_path_is_one_line(tmp_path, capsys):
    staged = _records(tmp_path)
    assert main(["train", "--set", f"data.train=[{staged}]", "--set", "curriculum.stages=[general]",
                 "--set", "model.name=/no/such/model", "--output-dir", str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "/no/such/model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_duplicate_ids_name_both_places(tmp_path, capsys):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(json.dumps({"id": "same", "kind": "text", "text": "One."}) + "\n")
    b.write_text(json.dumps({"id": "x", "kind": "text", "text": "Two."}) + "\n"
                 + json.dumps({"id": "same", "kind": "text", "text": "Three."}) + "\n")  # fmt: skip
    assert main(["train", "--set", f"data.train=[{a}, {b}]", "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{b}:2" in err and f"{a}:1" in err and "'same'" in err


def test_fallback_ids_are_unique_across_files(tmp_path):
    from icft.data.sources import load_data

    a, b = tmp_path / "a" / "x.jsonl", tmp_path / "b" / "x.jsonl"  # the same stem in two folders
    for path in (a, b):
        path.parent.mkdir()
        path.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    examples = load_data([str(a), str(b)])
    assert len({ex.id for ex in examples}) == 2 and all(ex.id.endswith(":1") for ex in examples)


@pytest.mark.parametrize(("settings", "expected"), [
    (["compare.jobs=0"], "compare.jobs"),
    (["compare.seeds=[]"], "compare.seeds"),
    (["compare.methods=[icft, telepathy]"], "telepathy"),
    (["data.train=[no/such/train.jsonl]"], "no/such/train.jsonl"),
    (["compare.test=[bundled:test-unseen, no/such/test.jsonl]"], "no/such/test.jsonl"),
])  # fmt: skip
def test_bad_compare_settings(settings, expected, tmp_path, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "compare-demo.yaml"
    args = [x for s in settings for x in ("--set", s)]
    assert main(["compare", "--config", str(config), *args, "--output-dir", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "cmp").exists()


def test_a_data_error_survives_the_trip_from_a_compare_worker():
    import pickle

    from icft.data.schema import DataError

    error = pickle.loads(pickle.dumps(DataError("mine.jsonl", 7, "answer", "index 4 is outside the 4 options")))
    assert isinstance(error, DataError)
    assert str(error) == "mine.jsonl:7: field 'answer': index 4 is outside the 4 options"


def test_data_validate_needs_no_torch(tmp_path):
    """`icft data validate` stays light: no torch or transformers import, and a plain record needs no
    `source` or `id` (they default to the file's stem and the file and line)."""
    import subprocess
    import sys

    plain = tmp_path / "mine.jsonl"
    plain.write_text(json.dumps({"kind": "qa", "question": "Which?", "options": ["x", "y"], "answer": 1}) + "\n")
    code = ("import sys; from icft.cli import main; rc = main(['data', 'validate', sys.argv[1]]); "
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; print('HEAVY', heavy); "
            "sys.exit(rc)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, str(plain)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    from icft.data.sources import load_data

    (ex,) = load_data([str(plain)])
    assert ex.source == "mine" and ex.id == f"{plain}:1"


# ----------------------------------------------------------------------------------------------------------
# Issue 29: the last bad inputs. Each is one line naming the file or option, exit 2, no traceback, and is
# found before any model loads: every command here names a model that does not exist (/no/such/model), so
# a check that came after the model load would print the model's error instead.

BINARY = b"\x00\x01\x02PK\x03\x04" + bytes(range(256))
NOT_UTF8 = b"name: demo\ntrain:\n  max_steps: 3 # caf\xe9\n"


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _bad_input_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(command line, text its one-line error must hold): the exact commands of issue 29."""
    data = _records(tmp_path)
    binary, not_utf8, empty = tmp_path / "binary.yaml", tmp_path / "latin1.yaml", tmp_path / "empty.yaml"
    binary.write_bytes(BINARY)
    not_utf8.write_bytes(NOT_UTF8)
    empty.write_text("# nothing but a comment\n")
    a_file, a_dir = tmp_path / "a-file", tmp_path / "a-dir"
    a_file.write_text("mine\n")
    a_dir.mkdir()
    corrupt_run = tmp_path / "corrupt-run"
    corrupt_run.mkdir()
    (corrupt_run / "config.yaml").write_bytes(NOT_UTF8)
    bad_data = tmp_path / "latin1.jsonl"
    bad_data.write_bytes(b'{"id": "a", "kind": "text", "text": "ok"}\n{"id": "b", "kind": "text", "text": "caf\xe9"}\n')
    no_model = ["--model", "/no/such/model"]
    out = ["--output-dir", str(tmp_path / "run")]
    return [
        (["train", "--config", str(binary), *out], f"{binary}: a binary file, not a YAML config"),
        (["train", "--config", str(not_utf8), *out], f"{not_utf8}:3: not UTF-8 text (byte 0xe9)"),
        (["train", "--config", str(empty), *out], f"{empty}: the config is empty"),
        (["compare", "--config", str(binary), "--output-dir", str(tmp_path / "cmp")], f"{binary}: a binary file"),
        (["compare", "--config", str(not_utf8), "--output-dir", str(tmp_path / "cmp")], f"{not_utf8}:3: not UTF-8"),
        (["export", "--run", str(corrupt_run), "--output", str(tmp_path / "export")],
         f"{corrupt_run / 'config.yaml'}:3: not UTF-8 text"),
        (["eval", "--run", str(corrupt_run), "--data", str(data)], f"{corrupt_run / 'config.yaml'}:3: not UTF-8"),
        (["eval", *no_model, "--data", str(data), "--json", str(a_dir)], f"--json {a_dir}: is a folder"),
        (["eval", *no_model, "--data", str(data), "--json", "/proc/x/y"], "--json /proc/x/y: cannot write in /proc"),
        (["generate", *no_model, "--data", str(data), "--json", str(a_dir)], f"--json {a_dir}: is a folder"),
        (["generate", *no_model, "--prompt", "Hi", "--json", "/proc/x/y"], "--json /proc/x/y: cannot write in"),
        (["train", "--set", f"data.train=[{data}]", "--set", "model.name=/no/such/model", "--output-dir", str(a_file)],
         f"--output-dir {a_file}: exists and is not a folder"),
        (["compare", "--config", str(COMPARE_DEMO), "--output-dir", str(a_file)],
         f"--output-dir {a_file}: exists and is not a folder"),
        (["eval", *no_model, "--data", str(data), "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["generate", *no_model, "--prompt", "Hi", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["eval", *no_model, "--data", str(data), "--max-examples", "-1"], "--max-examples must be >= 1, got -1"),
        (["data", "validate", str(bad_data)], f"{bad_data}:2: not UTF-8 text (byte 0xe9 at column 41)"),
        (["train", "--resume", str(corrupt_run), "--overwrite"], "--overwrite"),
        (["compare", "--config", str(COMPARE_DEMO), "--output-dir", str(a_dir.parent)], "not an icft compare folder"),
    ]  # fmt: skip


COMPARE_DEMO = Path(__file__).resolve().parents[1] / "configs" / "compare-demo.yaml"
BAD_INPUT_IDS = ["train binary config", "train non-UTF-8 config", "train empty config", "compare binary config",
                 "compare non-UTF-8 config", "export corrupt run config", "eval corrupt run config",
                 "eval --json a folder", "eval --json /proc/x/y", "generate --json a folder",
                 "generate --json /proc/x/y", "train --output-dir a file", "compare --output-dir a file",
                 "eval --batch-size 0", "generate --batch-size 0", "eval --max-examples -1",
                 "data file not UTF-8: the line", "--resume with --overwrite",
                 "compare into a user's folder"]  # fmt: skip


@pytest.mark.parametrize("case", range(len(BAD_INPUT_IDS)), ids=BAD_INPUT_IDS)
def test_bad_input_is_one_line_before_any_model_loads(case, tmp_path, capsys, monkeypatch):
    import icft.models

    def no_model_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was reported")

    monkeypatch.setattr(icft.models, "load_model", no_model_load)
    monkeypatch.setattr("icft.recipes.train.load_model", no_model_load)  # its own name for it
    argv, expected = _bad_input_cases(tmp_path)[case]
    assert main(argv) == 2
    assert expected in _one_line_error(capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cmp").exists()


def test_export_output_is_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import icft.models

    monkeypatch.setattr(icft.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("model:\n  name: /no/such/model\n")
    assert main(["export", "--run", str(run), "--output", "/proc/x/y", "--merge"]) == 2
    assert "--output /proc/x/y: cannot write in /proc" in _one_line_error(capsys)


def test_eval_max_examples_zero_is_refused(tmp_path, capsys):
    assert main(["eval", "--model", "/no/such/model", "--data", str(_records(tmp_path)), "--max-examples", "0"]) == 2
    assert "--max-examples must be >= 1, got 0" in _one_line_error(capsys)


def test_train_never_writes_into_a_users_folder(tmp_path, capsys):
    """`icft train --output-dir out/userproj` on a user's own folder deleted its checkpoints/model.bin."""
    user = tmp_path / "out" / "userproj"
    (user / "checkpoints").mkdir(parents=True)
    (user / "checkpoints" / "model.bin").write_bytes(b"the user's weights")
    (user / "notes.txt").write_text("mine\n")
    before = sorted(p.relative_to(user) for p in user.rglob("*"))
    staged = _records(tmp_path)
    for extra in ([], ["--overwrite"]):
        assert main(["train", "--set", f"data.train=[{staged}]", "--set", "curriculum.stages=[general]",
                     "--set", "model.name=/no/such/model", "--output-dir", str(user), *extra]) == 2  # fmt: skip
        err = _one_line_error(capsys)
        assert f"{user}: not empty (checkpoints, notes.txt) and not an icft run folder" in err
    assert sorted(p.relative_to(user) for p in user.rglob("*")) == before
    assert (user / "checkpoints" / "model.bin").read_bytes() == b"the user's weights"


def test_a_run_folder_in_use_is_refused_by_process(tmp_path, capsys):
    """A second trainer on a folder another process trains in: one line naming that process."""
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from icft.runs import RunFolder; "
        "RunFolder(Path(sys.argv[1])).claim({'name': 'x'}, print); print('locked', flush=True); time.sleep(600)"),
        str(run)], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        staged = _records(tmp_path)
        assert main(["train", "--set", f"data.train=[{staged}]", "--set", "model.name=/no/such/model",
                     "--output-dir", str(run)]) == 2  # fmt: skip
        assert _one_line_error(capsys).strip() == f"error: {run} is in use by process {holder.pid}"
    finally:
        holder.kill()  # SIGKILL: the OS frees the lock of a dead process
        holder.wait()
    assert main(["train", "--set", f"data.train=[{staged}]", "--set", "curriculum.stages=[general]",
                 "--set", "model.name=/no/such/model", "--output-dir", str(run)]) == 2  # fmt: skip
    assert "/no/such/model" in _one_line_error(capsys)  # past the lock: the next error is the model's


def test_atomic_folders_get_the_umask_permissions(tmp_path):
    """adapter/, memory/ and export folders were made 0700 (mkdtemp) while the files in them were not."""
    import os

    from icft.io import atomic_path

    old = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "adapter", is_dir=True) as tmp:
            (tmp / "weights").write_text("w")
        with atomic_path(tmp_path / "summary.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "adapter").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o640


def test_resume_with_another_step_budget_is_refused_before_the_model_loads(tmp_path, capsys):
    """A run's stage ends and learning-rate schedule were laid out for its max_steps: resuming it with more
    steps once crashed inside the curriculum (StopIteration) after the model had loaded."""
    from icft.config import load_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, ["model.name=/nonexistent/model", "train.max_steps=6"]), run / "config.yaml")
    assert main(["train", "--resume", str(run), "--set", "train.max_steps=12"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --set train.max_steps=12") and "planned for 6 steps" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
