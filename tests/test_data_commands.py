"""`icft data validate` and `icft data stats`, called as functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from icft.data_commands import percentile, stats, validate

SHARED = Path(__file__).parents[2] / "shared" / "data"

QA = {"id": "q1", "kind": "qa", "source": "quiz", "question": "Q?", "options": ["a", "b"], "answer": 0}
TEXT = {"id": "t1", "kind": "text", "source": "notes", "text": "one two three"}



@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_validate_a_folder_recursively(tmp_path, capsys):
    data = tmp_path / "data"
    write_jsonl(data / "icft.jsonl", [QA, TEXT])
    write_jsonl(data / "nested" / "dialogue.jsonl", [{"id": "c1", "patient": "Hi", "doctor": "Hello"}])
    (data / "nested" / "mmlu_dev.csv").write_text("Q?,a,b,c,d,C\n")
    (data / "README.md").write_text("# not data\n")
    (data / "notes.txt").write_text("not data either\n")
    assert validate([str(data)]) == 0
    out = capsys.readouterr().out
    assert f"{data / 'icft.jsonl'}: format icft, 2 examples, 0 skipped" in out
    assert "kinds:   qa 1, text 1" in out and "sources: quiz 1, notes 1" in out
    assert f"{data / 'nested' / 'dialogue.jsonl'}: format chatdoctor, 1 examples" in out
    assert "format mmlu_csv" in out and "README" not in out and "notes.txt" not in out
    assert out.splitlines()[-1] == "total: 3 files, 4 examples, 0 skipped, 0 errors"


def test_validate_reports_medquad_skips(tmp_path, capsys):
    folder = tmp_path / "MedQuAD" / "1_CancerGov_QA"
    folder.mkdir(parents=True)
    (folder / "0000001.xml").write_text(
        '<Document id="0000001" source="CancerGov"><Focus>Leukemia</Focus><QAPairs>'
        '<QAPair pid="1"><Question qid="0000001-1" qtype="information">What is leukemia ?</Question>'
        "<Answer>A cancer.</Answer></QAPair>"
        '<QAPair pid="2"><Question qid="0000001-2" qtype="treatment">How to treat leukemia ?</Question>'
        "<Answer> </Answer></QAPair></QAPairs></Document>"
    )
    assert validate([str(tmp_path / "MedQuAD")]) == 0
    out = capsys.readouterr().out
    assert f"{folder}: format medquad_xml, 1 examples, 1 skipped" in out
    assert "skipped: " in out and "QAPair 2" in out and "empty answer" in out


BAD_LINES = {
    "malformed JSON": ('{"id": "x", "kind": ', 2, None, "invalid JSON"),
    "missing field": (json.dumps({"id": "x", "kind": "qa", "source": "s", "answer": "a"}), 2, "question", ""),
    "unknown kind": (json.dumps({"id": "x", "kind": "essay", "source": "s"}), 2, "kind", "unknown kind"),
    "answer outside options": (json.dumps({**QA, "answer": 5}), 2, "answer", "outside the 2 options"),
}


@pytest.mark.parametrize("line, line_number, field, message", BAD_LINES.values(), ids=BAD_LINES.keys())
def test_validate_bad_line_exits_2_without_traceback(tmp_path, capsys, line, line_number, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(TEXT) + "\n" + line + "\n")
    assert validate([str(path)]) == 2
    captured = capsys.readouterr()
    location = f"error: {path}:{line_number}:" + (f" field '{field}':" if field else "")
    assert location in captured.err and message in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert "1 errors" in captured.out


def test_validate_empty_file_and_missing_path(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert validate([str(tmp_path / "empty.jsonl"), str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'empty.jsonl'}: file is empty" in err
    assert f"error: {tmp_path / 'missing.jsonl'}: no such file or directory" in err
    assert "Traceback" not in err


def test_validate_goes_on_after_a_bad_file(tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [QA])
    (tmp_path / "bad.json").write_text("[1, 2")
    assert validate([str(tmp_path / "bad.json"), str(good)]) == 2
    captured = capsys.readouterr()
    assert f"{good}: format icft, 1 examples" in captured.out
    assert f"error: {tmp_path / 'bad.json'}:1: invalid JSON" in captured.err


def test_validate_empty_folder(tmp_path, capsys):
    (tmp_path / "README.md").write_text("nothing here\n")
    assert validate([str(tmp_path)]) == 2
    assert "no data files" in capsys.readouterr().err


def test_validate_shared_data(capsys):
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    assert validate([str(SHARED)]) == 0
    out = capsys.readouterr().out
    for fmt in ("pubmedqa", "medquad", "mmlu", "chatdoctor", "pairs"):
        assert f": format {fmt}, " in out
    n_files = len(list(SHARED.rglob("*.jsonl")))  # every data file there, whatever the shared folder holds
    assert out.splitlines()[-1].startswith(f"total: {n_files} files, ")
    assert out.splitlines()[-1].endswith(" 0 skipped, 0 errors")


def test_stats_percentiles_and_difficulty_histogram(tmp_path, capsys):
    records = [{**TEXT, "id": f"t{i}", "text": " ".join(["w"] * (i + 1)), "difficulty": i / 10, "stage": "s1"}
               for i in range(10)] + [QA]  # fmt: skip
    path = write_jsonl(tmp_path / "data.jsonl", records)
    assert stats([str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "11 examples in 1 files"
    assert any(line.split() == ["text", "10", "90.9%"] for line in lines)
    assert any(line.split() == ["s1", "10", "90.9%"] for line in lines)
    assert any(line.split() == ["-", "1", "9.1%"] for line in lines)
    header = next(line for line in lines if "p50" in line)
    assert header.split() == ["p50", "p90", "p99", "max"]
    words = next(line for line in lines if line.startswith("words")).split()
    # 1..10 words, and 9 in the QA's prompt + target: sorted 1..8, 9, 9, 10
    assert words == ["words", "6", "9", "10", "10"]
    assert "difficulty (10 of 11 examples have one)" in out
    bins = [line for line in lines if line.startswith("[")]
    assert len(bins) == 10 and bins[0].startswith("[0.0, 0.1)") and bins[-1].startswith("[0.9, 1.0]")
    assert all(line.split()[2] == "1" for line in bins)


def test_stats_without_difficulty_has_no_histogram(tmp_path, capsys):
    assert stats([str(write_jsonl(tmp_path / "d.jsonl", [QA, TEXT]))]) == 0
    out = capsys.readouterr().out
    assert "p50" in out and "difficulty" not in out


def test_stats_bad_data_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "x", "kind": "essay", "source": "s"}\n')
    assert stats([str(path)]) == 2
    captured = capsys.readouterr()
    assert f"error: {path}:1: field 'kind':" in captured.err and "Traceback" not in captured.err


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 50) == 7


def test_stats_score_adds_a_difficulty_histogram(tmp_path, capsys):
    records = [{**TEXT, "id": f"t{i}", "text": " ".join(["word"] * (i + 1))} for i in range(10)]
    assert stats([str(write_jsonl(tmp_path / "d.jsonl", records))], score=True) == 0
    out = capsys.readouterr().out
    assert "difficulty (10 of 10 examples have one)" in out
    bins = [line for line in out.splitlines() if line.startswith("[")]
    assert len(bins) == 10 and sum(int(line.split()[2]) for line in bins) == 10
