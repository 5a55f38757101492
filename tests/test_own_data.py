"""Bring your own data: files without `stage` or `source`, no validation file, open questions only; `icft init`;
and the guide's path (docs/own-data.md) on ../shared/data at a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from icft.cli import main

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"



def _strict_json(path: Path):
    def no_nan(value):
        raise AssertionError(f"{path} holds {value}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def _open_questions(path: Path, n: int = 60) -> Path:
    rows = [{"kind": "qa", "question": f"What should a patient with symptom {i} do?",
             "answer": f"See a doctor about symptom {i} within {i % 7 + 1} days.", "meta": {"topic": f"t{i % 12}"}}
            for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_unstaged_open_questions_without_validation_train_and_report_answer_nll(tiny_llama_dir, tmp_path, capsys):
    data = _open_questions(tmp_path / "mine.jsonl")
    run = tmp_path / "run"
    args = ["--set", f"model.name={tiny_llama_dir}", "--set", f"data.train=[{data}]", "--set", "data.validation=[]",
            "--set", "data.validation_split=0.25", "--set", "train.max_steps=6", "--set", "train.batch_size=4",
            "--set", "model.max_length=48", "--set", "train.eval_max_examples=8"]  # fmt: skip
    assert main(["train", *args, "--output-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "no validation files: holding out" in out and "curriculum.stages: auto" in out
    report = _strict_json(run / "stage_eval.json")
    assert report["metric"] == ["answer_nll"] * 3
    assert len(report["nll_matrix"]) == 3 and all(v is not None for row in report["nll_matrix"] for v in row)
    assert report["forgetting_nll"] is not None and report["forgetting"] is None
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["curriculum"]["stages"] == "auto" and saved["data"]["validation_split"] == 0.25


def test_validation_split_keeps_topics_on_one_side(tmp_path):
    from icft.data.sources import load_data, split_validation

    examples = load_data([str(_open_questions(tmp_path / "q.jsonl", 240))])
    train, validation = split_validation(examples, 0.25)
    assert 0 < len(validation) < len(examples) and len(train) + len(validation) == len(examples)
    topics = lambda xs: {ex.meta["topic"] for ex in xs}  # noqa: E731
    assert not topics(train) & topics(validation)
    assert split_validation(examples, 0.25) == (train, validation)  # the same split every time


@pytest.mark.slow
def test_init_writes_a_config_train_runs_unchanged(tiny_llama_dir, tmp_path, capsys):
    data = _open_questions(tmp_path / "mine.jsonl", 40)
    config = tmp_path / "my.yaml"
    assert main(["init", "--data", str(data), "--model", str(tiny_llama_dir), "--output", str(config)]) == 0
    assert "next: icft train --config" in capsys.readouterr().out
    text = config.read_text()
    assert "stages: auto" in text and "validation: []" in text and text.startswith("# Written by `icft init`")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "run")]) == 0
    assert _strict_json(tmp_path / "run" / "stage_eval.json")["metric"] == ["answer_nll"] * 3


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
def test_the_guide_path_on_shared_data(tiny_llama_dir, tmp_path, capsys):
    """docs/own-data.md at a tiny budget: validate, init, train (MedQuAD then PubMedQA), eval."""
    medquad, pubmedqa = SHARED / "medquad" / "qa.jsonl", SHARED / "pubmedqa" / "train.jsonl"
    assert main(["data", "validate", str(medquad), str(pubmedqa)]) == 0
    config = tmp_path / "medical.yaml"
    assert main(["init", "--data", str(medquad), str(pubmedqa), "--model", str(tiny_llama_dir),
                 "--output", str(config)]) == 0  # fmt: skip
    run = tmp_path / "run"
    small = ["--set", "train.max_steps=6", "--set", "train.batch_size=4", "--set", "model.max_length=96",
             "--set", "train.eval_max_examples=8", "--set", "train.save_every=6"]  # fmt: skip
    assert main(["train", "--config", str(config), *small, "--output-dir", str(run)]) == 0
    report = _strict_json(run / "stage_eval.json")
    assert len(report["accuracy_matrix"]) == 3 and set(report["metric"]) <= {"accuracy", "answer_nll"}
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(pubmedqa), "--max-examples", "16"]) == 0
    assert "accuracy" in capsys.readouterr().out
