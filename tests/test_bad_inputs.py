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
