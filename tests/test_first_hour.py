"""The first hour with your own data (issue 38): nothing silent, nothing misleading.

`icft eval` says when a model is not above the best trivial baseline and what each baseline is, compares a run
with its base model (paired intervals), shows generated answers, writes into the run and says where; its memory
is bounded (inputs cut to a stated length, a token budget per batch, log-probabilities in chunks); records
without `kind` and csv files are read as qa; `data validate` lists every bad record; `init` fits its numbers to
the data and says what they are; one message for "not a run folder"; the model card carries the latest eval.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from _tables import read_markdown, read_text

from icft.data.loaders import load_examples
from icft.data.schema import DataError, Example
from icft.data_commands import validate
from icft.evaluation.commands import EvalRequest, eval_command, floor_lines
from icft.evaluation.evaluate import EvalResult, print_table


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def qa_record(i: int, **extra) -> dict:
    return {"id": f"q{i}", "kind": "qa", "source": "s", "question": f"What is item {i}?",
            "answer": f"Item {i} is a thing.", **extra}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# 1. eval tells the truth at a glance


def test_a_model_below_the_best_trivial_baseline_is_said_in_a_line():
    results = {"model": {"f.jsonl": EvalResult(metrics={"rougeL": 0.1732, "answer_nll": 2.0}, n_examples=60)}}
    floors = {"f.jsonl": {"majority": {"rougeL": 0.23}}}
    lines = floor_lines(results, floors)
    assert lines == ["the model is NOT above the best trivial baseline on ROUGE-L (f.jsonl) 0.173 ≤ 0.230 (majority)"]
    results["model"]["f.jsonl"].metrics["rougeL"] = 0.3
    assert floor_lines(results, floors) == []
    # a path with a folder in it (two files of one name) keeps its name in the line
    results = {"model": {"a/f.jsonl": EvalResult(metrics={"accuracy": 0.2}, n_examples=4)}}
    assert "(a/f.jsonl)" in floor_lines(results, {"a/f.jsonl": {"random": {"accuracy": 0.25}}})[0]


def test_the_table_says_what_each_baseline_is():
    items = [Example.from_dict(qa_record(i)) for i in range(3)]
    out = io.StringIO()
    print_table({"f.jsonl": EvalResult(metrics={"rougeL": 0.2}, n_examples=3)}, file=out, examples={"f.jsonl": items})
    text = out.getvalue()
    rows = {row["file"]: row for row in read_text(text)}
    assert float(rows["f.jsonl"]["rougeL"]) == pytest.approx(0.2) and "f.jsonl [majority]" in rows
    assert "[majority]  the best constant answer, chosen on these items" in text


@pytest.fixture
def tiny_run(tiny_llama_dir, tmp_path) -> Path:
    from peft import LoraConfig, get_peft_model

    from icft.models import load_model

    run = tmp_path / "run"
    base, _ = load_model(str(tiny_llama_dir))
    torch.manual_seed(1)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(base, lora).save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(f"model:\n  name: {tiny_llama_dir}\n  max_length: 96\n")
    return run


def test_eval_of_a_run_with_base_and_show(tiny_run, tmp_path, capsys):
    records = [qa_record(i) for i in range(4)]
    records += [{"id": f"c{i}", "kind": "qa", "source": "s", "question": f"Pick {i}", "options": ["a", "b"],
                 "answer": i % 2} for i in range(4)]  # fmt: skip
    records.append(qa_record(9, answer="word " * 400))  # longer than the run's 96 tokens: cut, and said so
    data = write_lines(tmp_path / "mine.jsonl", [json.dumps(r) for r in records])

    request = EvalRequest([str(data)], run_dir=str(tiny_run), batch_size=4, base=True, show=2)
    assert eval_command(request) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert out.startswith("file ") and read_text(out)[0]["n"] == "9"  # the table comes first, on a clean line
    assert "\r" not in out and "eval: loading run" not in err and "eval: mine.jsonl: 9 items" in err
    paired = {row["metric"]: row for row in read_text(out[out.index("the run against its untrained base model"):])}
    assert {"accuracy", "answer_nll (lower=better)"} <= set(paired)
    assert all(row["file"] == "mine.jsonl" for row in paired.values())
    assert "inputs are cut to 96 tokens (the run's model.max_length" in out and "1 of 9 items are longer" in out
    assert "2 generated answers beside their references" in out and out.count("    reference: ") == 2
    assert out.count("    base:      ") == 2
    # written into the run folder, and said where
    written = tiny_run / "eval-mine.json"
    assert f"wrote {written}" in out
    record = json.loads(written.read_text())["mine.jsonl"]
    assert record["settings"] == {"max_length": 96, "n_cut": 1} and "base" in record and "accuracy" in record["paired"]
    # the printed change and its interval are the ones written
    change = record["paired"]["accuracy"]
    expected = f"{change['change']:+.3f} [{change['low']:+.3f}, {change['high']:+.3f}]"
    assert paired["accuracy"]["change [95% interval]"] == expected
    items = [json.loads(x) for x in (tiny_run / "eval-mine.items.jsonl").read_text().splitlines()]
    assert len(items) == 9 and "answer" in items[0] and "reference" in items[0] and "base" in items[0]


def test_eval_options_are_checked_before_any_model_loads(tmp_path, capsys):
    data = str(write_lines(tmp_path / "d.jsonl", [json.dumps(qa_record(0))]))
    assert eval_command(EvalRequest([data], model="smollm2-135m-instruct", base=True)) == 2
    assert "--base compares a run with its untrained base model" in capsys.readouterr().err
    assert eval_command(EvalRequest([data], model="smollm2-135m-instruct", max_length=4)) == 2
    assert "--max-length must be >= 16" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------
# 2. evaluation memory is bounded


def test_token_logprobs_in_chunks_equal_a_full_log_softmax(monkeypatch):
    import icft.likelihood as L

    monkeypatch.setattr(L, "LOGP_CHUNK", 3)
    logits = torch.randn(10, 50)
    targets = torch.randint(0, 50, (10,))
    full = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    assert torch.allclose(L.token_logprobs(logits, targets), full, atol=1e-5)


def test_scoring_batches_stay_within_the_token_budget(tiny_llama_dir, monkeypatch):
    import icft.likelihood as L
    from icft.models import load_model

    model, tokenizer = load_model(str(tiny_llama_dir))
    pairs = [(f"Question {i}: what is it?", " ".join(["long answer"] * (20 + 7 * i))) for i in range(6)]
    pairs += [("Shared prompt:", f" option {i} " * 30) for i in range(4)]  # one prompt, scored on its cache

    seen: list[int] = []  # tokens of each batch: rows x the longest sequence
    for name in ("_score_full", "_score_shared"):
        original = getattr(L, name)

        def spy(model, sequences, chunk, *args, _original=original, _shared=name == "_score_shared"):
            rows = [i for members in chunk for i in (members if _shared else members[:1])]
            seen.append(len(rows) * max(len(sequences[i].input_ids) for i in rows))
            return _original(model, sequences, chunk, *args)

        monkeypatch.setattr(L, name, spy)
    settings = L.ScoreSettings(max_length=200, batch_size=32)
    wide = L.answer_nll(model, tokenizer, pairs, settings)
    n_wide, seen[:] = len(seen), []
    monkeypatch.setattr(L, "LOGIT_BUDGET_BYTES", 1)  # the 256-token floor
    assert L.token_budget(model) == 256
    narrow = L.answer_nll(model, tokenizer, pairs, settings)
    assert max(seen) <= 256 and len(seen) > n_wide
    assert narrow == pytest.approx(wide, abs=1e-4)


def test_budget_batches():
    from icft.likelihood import budget_batches

    batches = budget_batches([100, 90, 50, 50, 10, 10, 10], batch_size=3, budget=200)
    assert batches == [[0, 1], [2, 3, 4], [5, 6]]
    assert budget_batches([500, 10], batch_size=8, budget=100) == [[0], [1]]  # a row longer than the budget alone


# ----------------------------------------------------------------------------------------------------------
# 3. formats meet users halfway, validation lists every bad record


def test_question_answer_rows_without_kind_are_qa(tmp_path):
    path = write_lines(tmp_path / "mine.jsonl", [
        json.dumps({"question": "What is gout?", "answer": "Arthritis.", "category": "joints"}),
        json.dumps({"prompt": "What is asthma?", "response": "A lung disease."}),
    ])  # fmt: skip
    result = load_examples(path)
    assert result.format == "qa_fields" and [e.kind for e in result.examples] == ["qa", "qa"]
    assert result.examples[0].meta == {"category": "joints"} and result.examples[1].answer == "A lung disease."
    assert "read as qa" in result.notes[0]


def test_a_question_answer_csv_is_read_with_its_header_and_lines(tmp_path, capsys):
    path = tmp_path / "mine.csv"
    path.write_text(
        'question,answer\nWhat is gout?,Arthritis.\n"Multi\nline?",Yes.\nEmpty answer?,\n', encoding="utf-8"
    )
    result = load_examples(path, strict=False)
    assert [e.question for e in result.examples] == ["What is gout?", "Multi\nline?"]
    assert result.examples[0].id == f"{path}:2"  # the header is line 1
    assert "csv header: question, answer" in result.notes
    (error,) = result.invalid
    assert (error.line, error.field) == (5, "answer")
    with pytest.raises(DataError, match=r"mine.csv:5: field 'answer'"):
        load_examples(path)


def test_validate_lists_every_bad_record_and_a_missing_file_first(tmp_path, capsys):
    bad = write_lines(tmp_path / "bad.jsonl", [
        json.dumps(qa_record(0)),
        json.dumps(qa_record(1, answer="")),
        "not json",
        json.dumps(qa_record(3, options=["a", "b"], answer=5)),
    ])  # fmt: skip
    assert validate([str(tmp_path / "missing.jsonl"), str(bad)]) == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors[0] == f"error: {tmp_path / 'missing.jsonl'}: no such file or directory"
    assert [e.split(":")[2] for e in errors[1:]] == ["2", "3", "4"]  # file:line: each bad record, counted from 1
    assert "field 'answer'" in errors[1] and "invalid JSON" in errors[2] and "outside the 2 options" in errors[3]
    assert "total: 1 files, 1 examples, 0 skipped, 4 errors" in captured.out

    many = write_lines(tmp_path / "many.jsonl", [json.dumps(qa_record(i, answer="")) for i in range(25)])
    assert validate([str(many)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 21 and err[-1].endswith("... and 5 more bad records")


def test_text_that_is_not_unicode_is_refused_with_file_line_and_field(tmp_path, capsys):
    path = write_lines(tmp_path / "s.jsonl", [json.dumps(qa_record(0)), '{"kind": "qa", "question": "x\\ud800",'
                                              ' "answer": "y"}'])  # fmt: skip
    with pytest.raises(DataError, match=r"s.jsonl:2: field 'question': not valid Unicode: a lone surrogate"):
        load_examples(path)
    assert validate([str(path)]) == 2
    assert "s.jsonl:2: field 'question'" in capsys.readouterr().err


def test_json_nested_too_deeply_is_one_line(tmp_path, capsys):
    path = write_lines(tmp_path / "deep.jsonl", ["[" * 100_000])
    with pytest.raises(DataError, match="nested too deeply"):
        load_examples(path)
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        load_examples(deep_json)
    assert validate([str(path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert eval_command(EvalRequest([str(path)], model="smollm2-135m-instruct")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deep.jsonl:1: JSON nested too deeply" in err


# ----------------------------------------------------------------------------------------------------------
# 4. init fits its numbers to the data and says what they are


def test_init_fits_small_data_and_computes_its_comments(tiny_llama_dir, tmp_path, capsys):
    from icft.config import load_config
    from icft.init_config import fit_plan, init_command

    data = write_lines(tmp_path / "mine.jsonl", [json.dumps(qa_record(i)) for i in range(60)])
    test = write_lines(tmp_path / "mine_test.jsonl", [json.dumps(qa_record(100 + i)) for i in range(10)])
    output = tmp_path / "my.yaml"
    assert init_command([str(data)], str(tiny_llama_dir), str(output), [str(test)]) == 0
    text = output.read_text()
    plan = fit_plan(60, 3)
    assert plan.stm <= plan.n_train // 4 and plan.ltm <= plan.n_train // 2 and plan.epochs <= 3.0 + 1e-9
    assert f"stm_capacity: {plan.stm}        # {plan.stm / 60:.0%} of the 60 examples" in text
    assert f"ltm_capacity: {plan.ltm}        # {plan.ltm / 60:.0%} of the 60 examples" in text
    assert f"{plan.epochs:.2f} epochs of the 57 training examples" in text
    assert "overfitting" in text and "overfitting" in capsys.readouterr().out
    config = load_config(output)
    assert [s.path for s in config.compare.test] == [str(test)] and config.memory.stm_capacity == plan.stm
    assert config.train.batch_size == plan.batch and config.train.max_steps == plan.steps

    big = fit_plan(15188, 3)  # the docs' example: about one epoch at batch 16, the old bounds
    assert (big.batch, big.stm, big.ltm) == (16, 512, 1518) and math.isclose(big.epochs, 1.0, abs_tol=0.01)


def test_init_without_test_files_leaves_compare_test_empty_and_says_so(tiny_llama_dir, tmp_path, capsys):
    from icft.config import load_config
    from icft.init_config import init_command

    data = write_lines(tmp_path / "mine.jsonl", [json.dumps(qa_record(i)) for i in range(40)])
    assert init_command([str(data)], str(tiny_llama_dir), str(tmp_path / "my.yaml")) == 0
    assert load_config(tmp_path / "my.yaml").compare.test == []
    assert "compare.test is empty" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# 5. one message for a folder that is not a run


def test_one_message_for_not_a_run_folder(tmp_path, capsys):
    from icft.cli import main
    from icft.errors import not_a_run
    from icft.inference.export import export as export_command

    missing, empty = tmp_path / "no-run", tmp_path / "empty"
    empty.mkdir()
    data = str(write_lines(tmp_path / "d.jsonl", [json.dumps(qa_record(0))]))
    for folder, why in ((missing, "no such folder"), (empty, "no config.yaml in it")):
        expected = str(not_a_run(folder))
        assert expected == f"{folder}: not a run folder ({why}); give the folder icft train wrote, e.g. runs/<name>"
        assert eval_command(EvalRequest([data], run_dir=str(folder))) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"
        assert main(["train", "--resume", str(folder)]) == 2
        assert capsys.readouterr().err.strip() == f"error: {expected}"
        with pytest.raises(Exception) as exported:
            export_command(str(folder), str(tmp_path / "out"))
        assert str(exported.value) == expected


# ----------------------------------------------------------------------------------------------------------
# 6. the model card carries the latest eval and the base's hub id; compare says where its report is


def test_model_card_reads_the_latest_eval_and_names_the_hub_id(tmp_path):
    import os

    from icft.inference.export import _eval_lines, _hub_id

    old, new = tmp_path / "eval-old.json", tmp_path / "eval-new.json"
    old.write_text(json.dumps({"a.jsonl": {"rougeL": 0.1}}))
    new.write_text(json.dumps({"b.jsonl": {"rougeL": 0.2, "baselines": {"majority": {"rougeL": 0.25}}}}))
    os.utime(old, (1, 1))
    lines = _eval_lines(tmp_path)
    assert "eval-new.json" in lines[0] and not any("eval-old" in x for x in lines)
    rows = {row["file"]: row for row in read_markdown("\n".join(lines))}
    assert list(rows) == ["b.jsonl", "b.jsonl [majority]"]
    assert float(rows["b.jsonl"]["rougeL"]) == 0.2 and float(rows["b.jsonl [majority]"]["rougeL"]) == 0.25
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in _hub_id("smollm2-135m-instruct") and "Q4_1" in _hub_id(
        "smollm2-135m-instruct"
    )
    assert _hub_id("my/model") == "`my/model`"


def test_compare_ends_with_the_report_path(tmp_path, monkeypatch, capsys):
    import icft.recipes.compare as C
    from icft.config import RunConfig

    results = {"methods": {}, "baselines": {}}
    for name in ("check_inputs", "run_grid", "save_config"):
        monkeypatch.setattr(C, name, lambda *a, **k: None)
    monkeypatch.setattr(C, "seed_points", lambda *a, **k: [])
    monkeypatch.setattr(C, "chosen_tries", lambda *a, **k: ({}, None))
    monkeypatch.setattr(C, "prepare_own_voice", lambda *a, **k: None)
    monkeypatch.setattr(C, "report", lambda *a, **k: results)
    for name in ("results_table",):
        monkeypatch.setattr(C, name, lambda *a, **k: "")
    for name in ("below_baselines", "difference_table", "in_plain_words"):
        monkeypatch.setattr(C, name, lambda *a, **k: [])
    C.compare(RunConfig(), tmp_path / "cmp")
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'cmp' / 'report.md'}")
