"""Every input format on small fixture files, the errors bad input gives, and the real shared data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import write_jsonl

from icft.data.loaders import detect_record_format, load_examples, load_many, read_jsonl_records
from icft.data.schema import DataError

SHARED = Path(__file__).parents[2] / "shared" / "data"



def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """Keep the cache `datasets.load_dataset` writes inside the test's folder."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


# ----------------------------------------------------------------------------------------------------------
# The project's own schema

ICFT = [
    {"id": "t1", "kind": "text", "source": "notes", "text": "Aspirin inhibits COX."},
    {"id": "q1", "kind": "qa", "source": "quiz", "question": "Q?", "options": ["a", "b"], "answer": 1,
     "difficulty": 0.4, "stage": "basic"},
    {"id": "p1", "kind": "preference", "source": "prefs", "prompt": "P?", "chosen": "good",
     "rejected": "bad"},
    {"id": "d1", "kind": "dialogue", "source": "chat",
     "turns": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
]  # fmt: skip


def test_icft_jsonl(tmp_path):
    result = load_examples(write_jsonl(tmp_path / "data.jsonl", ICFT))
    assert result.format == "icft"
    assert [e.kind for e in result.examples] == ["text", "qa", "preference", "dialogue"]
    assert result.examples[1].difficulty == 0.4 and result.examples[1].stage == "basic"
    assert result.skipped == []


def test_icft_json_list_and_blank_lines(tmp_path):
    assert len(load_examples(write_json(tmp_path / "data.json", ICFT)).examples) == 4
    path = tmp_path / "blanks.jsonl"
    path.write_text("\n" + json.dumps(ICFT[0]) + "\n\n" + json.dumps(ICFT[1]) + "\n\n")
    assert [e.id for e in load_examples(path).examples] == ["t1", "q1"]


def error_of(path: Path, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        load_examples(path, **kwargs)
    return caught.value


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ICFT[0]) + '\n{"id": "x", "kind": \n')
    error = error_of(path)
    assert (error.path, error.line, error.field) == (str(path), 2, None)
    assert str(error).startswith(f"{path}:2: invalid JSON at column")


def test_missing_field(tmp_path):
    record = {"id": "q", "kind": "qa", "source": "s", "answer": "yes"}
    error = error_of(write_jsonl(tmp_path / "bad.jsonl", [ICFT[0], record]))
    assert (error.line, error.field) == (2, "question")
    assert f"{tmp_path / 'bad.jsonl'}:2: field 'question':" in str(error)


def test_missing_kind_is_reported_not_unrecognised(tmp_path):
    error = error_of(write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "source": "s", "text": "t"}]))
    assert (error.line, error.field) == (1, "kind")


def test_unknown_kind(tmp_path):
    error = error_of(write_jsonl(tmp_path / "bad.jsonl", [{"id": "x", "kind": "essay", "source": "s"}]))
    assert (error.line, error.field) == (1, "kind")
    assert "unknown kind 'essay'" in str(error)


def test_answer_index_outside_options(tmp_path):
    record = {"id": "q", "kind": "qa", "source": "s", "question": "Q?", "options": ["a", "b"], "answer": 2}
    error = error_of(write_jsonl(tmp_path / "bad.jsonl", [ICFT[0], ICFT[1], record]))
    assert (error.line, error.field) == (3, "answer")
    assert "outside the 2 options" in str(error)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
@pytest.mark.parametrize("name", ["empty.jsonl", "empty.json", "empty.csv"])
def test_empty_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    error = error_of(path)
    assert (error.line, error.field, error.reason) == (None, None, "file is empty")
    assert str(error) == f"{path}: file is empty"


def test_missing_path(tmp_path):
    assert "no such file" in str(error_of(tmp_path / "nope.jsonl"))


def test_unrecognised_record_format(tmp_path):
    error = error_of(write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}]))
    assert error.line == 1 and "unrecognised record format (fields: bar, foo)" in str(error)


def test_non_strict_skips_bad_lines_with_reasons(tmp_path):
    path = tmp_path / "mixed.jsonl"
    bad_kind = {"id": "x", "kind": "essay", "source": "s"}
    path.write_text("\n".join([json.dumps(ICFT[0]), "{oops", json.dumps(bad_kind), json.dumps(ICFT[1])]))
    result = load_examples(path, strict=False)
    assert [e.id for e in result.examples] == ["t1", "q1"]
    assert [line for line, _ in result.skipped] == [2, 3]
    assert "invalid JSON" in result.skipped[0][1] and "field 'kind'" in result.skipped[1][1]


def test_read_jsonl_records(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n')
    assert read_jsonl_records(path) == [(1, {"a": 1}), (3, [2])]
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=r":2: invalid JSON"):
        read_jsonl_records(path)


def test_unknown_format_name(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        load_examples(write_jsonl(tmp_path / "d.jsonl", ICFT), format="nope")


# ----------------------------------------------------------------------------------------------------------
# The JSONL forms of shared/data


def test_pubmedqa_jsonl(tmp_path):
    record = {"id": "123", "question": "Does X help?", "context": "A.\nB.", "long_answer": "It does.",
              "label": "maybe"}  # fmt: skip
    result = load_examples(write_jsonl(tmp_path / "train.jsonl", [record]))
    (ex,) = result.examples
    assert result.format == "pubmedqa"
    assert (ex.id, ex.kind, ex.source, ex.context) == ("123", "qa", "pubmedqa", "A.\nB.")
    assert ex.options == ["yes", "no", "maybe"] and ex.answer == 2
    assert ex.meta == {"long_answer": "It does."}


def test_medquad_jsonl_counts_empty_answers(tmp_path):
    records = [
        {"id": "3_GHR_QA/1", "source": "3_GHR_QA", "focus": "Anemia", "qtype": "symptoms",
         "question": "What are the symptoms of anemia?", "answer": "Tiredness."},
        {"id": "3_GHR_QA/2", "source": "3_GHR_QA", "focus": "Anemia", "qtype": "causes",
         "question": "What causes anemia?", "answer": ""},
    ]  # fmt: skip
    result = load_examples(write_jsonl(tmp_path / "qa.jsonl", records))
    (ex,) = result.examples
    assert result.format == "medquad"
    assert (ex.source, ex.answer, ex.options) == ("medquad/3_GHR_QA", "Tiredness.", None)
    assert ex.meta == {"focus": "Anemia", "qtype": "symptoms"}
    assert result.skipped[0][0] == 2 and "empty answer" in result.skipped[0][1]


def test_mmlu_jsonl(tmp_path):
    record = {"id": "mmlu/anatomy/dev/0", "question": "Q?", "options": ["a", "b", "c", "d"], "answer": 3,
              "subject": "anatomy"}  # fmt: skip
    (ex,) = load_examples(write_jsonl(tmp_path / "dev.jsonl", [record])).examples
    assert (ex.source, ex.answer, ex.meta) == ("mmlu/anatomy", 3, {"subject": "anatomy"})


def test_chatdoctor_jsonl(tmp_path):
    record = {"id": "genmedgpt5k/0", "patient": "I cough.", "doctor": "Rest."}
    result = load_examples(write_jsonl(tmp_path / "dialogue.jsonl", [record]))
    (ex,) = result.examples
    assert (result.format, ex.kind, ex.source) == ("chatdoctor", "dialogue", "chatdoctor")
    assert ex.turns == [{"role": "user", "content": "I cough."}, {"role": "assistant", "content": "Rest."}]


def test_preference_pairs_jsonl(tmp_path):
    record = {"id": "medical_llm_rl/1", "prompt": "Q?", "chosen": "yes, because", "rejected": "[X] no"}
    result = load_examples(write_jsonl(tmp_path / "pairs.jsonl", [record]))
    (ex,) = result.examples
    assert (result.format, ex.kind, ex.source, ex.chosen) == ("pairs", "preference", "medical_llm_rl",
                                                              "yes, because")  # fmt: skip


def test_public_format_missing_field_strict_and_not(tmp_path):
    records = [
        {"id": "1", "patient": "I cough.", "doctor": "Rest."},
        {"id": "2", "patient": "", "doctor": "."},
    ]
    path = write_jsonl(tmp_path / "dialogue.jsonl", records)
    error = error_of(path)
    assert (error.line, error.field) == (2, "patient")
    result = load_examples(path, strict=False)
    assert len(result.examples) == 1 and result.skipped[0][0] == 2 and "'patient'" in result.skipped[0][1]


# ----------------------------------------------------------------------------------------------------------
# Original forms of public datasets

ORI_PQAL = {
    "21645374": {"QUESTION": "Do mitochondria play a role?", "CONTEXTS": ["First.", "Second."],
                 "LABELS": ["BACKGROUND", "RESULTS"], "LONG_ANSWER": "They do.", "final_decision": "yes"},
    "16418930": {"QUESTION": "Is it safe?", "CONTEXTS": ["Only."], "LONG_ANSWER": "No.",
                 "final_decision": "no"},
}  # fmt: skip


def test_pubmedqa_ori_pqal(tmp_path):
    result = load_examples(write_json(tmp_path / "ori_pqal.json", ORI_PQAL))
    assert result.format == "pubmedqa_ori"
    first, second = result.examples
    assert (first.id, first.source, first.answer) == ("21645374", "pubmedqa", 0)
    assert first.context == "First.\nSecond."
    assert first.meta == {"long_answer": "They do."} and second.answer == 1


def test_pubmedqa_ori_bad_label_names_pmid_and_field(tmp_path):
    data = {"1": {"QUESTION": "Q?", "CONTEXTS": [], "final_decision": "perhaps"}}
    error = error_of(write_json(tmp_path / "ori_pqal.json", data))
    assert (error.path, error.field) == (f"{tmp_path / 'ori_pqal.json'}[1]", "label")


MEDQUAD_XML = """<?xml version="1.0" encoding="UTF-8"?>
<Document id="0000001" source="GHR" url="https://ghr.nlm.nih.gov/condition/x">
<Focus>Alpha   thalassemia</Focus>
<QAPairs>
<QAPair pid="1">
<Question qid="0000001-1" qtype="information">What is (are) alpha thalassemia ?</Question>
<Answer>Alpha thalassemia is a blood disorder.
    It reduces   haemoglobin.</Answer>
</QAPair>
<QAPair pid="2">
<Question qid="0000001-2" qtype="frequency">How many people are affected by alpha thalassemia ?</Question>
<Answer></Answer>
</QAPair>
<QAPair pid="3">
<Question qid="0000001-3" qtype="inheritance">Is alpha thalassemia inherited ?</Question>
<Answer>Yes.</Answer>
</QAPair>
</QAPairs>
</Document>
"""


def test_medquad_xml_file_counts_the_empty_answer(tmp_path):
    path = tmp_path / "0000001.xml"
    path.write_text(MEDQUAD_XML)
    result = load_examples(path)
    assert result.format == "medquad_xml"
    first, third = result.examples
    assert (first.id, first.source, first.kind) == ("GHR/0000001-1", "medquad/GHR", "qa")
    assert first.answer == "Alpha thalassemia is a blood disorder.\nIt reduces haemoglobin."
    assert first.meta == {"focus": "Alpha thalassemia", "qtype": "information"}
    assert third.id == "GHR/0000001-3"
    assert len(result.skipped) == 1
    number, reason = result.skipped[0]
    assert number == 2 and "QAPair 2" in reason and "empty answer" in reason


def test_medquad_xml_folder(tmp_path):
    folder = tmp_path / "MedQuAD" / "3_GHR_QA"
    folder.mkdir(parents=True)
    (folder / "a.xml").write_text(MEDQUAD_XML)
    (folder / "b.xml").write_text(MEDQUAD_XML.replace("0000001", "0000002"))
    result = load_examples(tmp_path / "MedQuAD")
    assert len(result.examples) == 4 and len(result.skipped) == 2


def test_medquad_xml_parse_error_names_line(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text(MEDQUAD_XML.replace("</Focus>", "</Fcus>"))
    error = error_of(path)
    assert error.line == 3 and "invalid XML" in str(error)


def test_medqa_jsonl(tmp_path):
    records = [
        {"question": "A 23-year-old ...?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"},
         "answer_idx": "C", "answer": "c", "meta_info": "step1"},
        {"question": "Q?", "options": {"A": "a", "B": "b"}, "answer_idx": "E", "answer": "e"},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "train.jsonl", records)
    error = error_of(path)
    assert (error.line, error.field) == (2, "answer_idx")
    result = load_examples(path, strict=False)
    (ex,) = result.examples
    assert result.format == "medqa"
    # No id in the source: the file and line, which no other file shares.
    assert (ex.id, ex.source, ex.options, ex.answer) == (f"{path}:1", "medqa", ["a", "b", "c", "d"], 2)
    assert ex.meta == {"meta_info": "step1"}


def medmcqa(cop: int, **extra) -> dict:
    return {"id": f"m{cop}", "question": "Which nerve?", "opa": "a", "opb": "b", "opc": "c", "opd": "d",
            "cop": cop, **extra}  # fmt: skip


def test_medmcqa_zero_based(tmp_path):
    records = [medmcqa(0, exp="Because.", subject_name="Anatomy"), medmcqa(3)]
    result = load_examples(write_jsonl(tmp_path / "dev.jsonl", records))
    assert result.format == "medmcqa"
    assert [e.answer for e in result.examples] == [0, 3]
    assert result.examples[0].meta == {"explanation": "Because.", "subject": "Anatomy"}
    assert result.examples[0].options == ["a", "b", "c", "d"]


def test_medmcqa_one_based_release_in_a_json_lines_json_file(tmp_path):
    # The original MedMCQA release names its JSON-lines files .json and numbers cop 1..4.
    path = tmp_path / "train.json"
    path.write_text("\n".join(json.dumps(medmcqa(cop)) for cop in (1, 4, 2)))
    assert [e.answer for e in load_examples(path).examples] == [0, 3, 1]


def test_medmcqa_cop_outside(tmp_path):
    error = error_of(write_jsonl(tmp_path / "dev.jsonl", [medmcqa(0), medmcqa(7)]))
    assert (error.line, error.field) == (2, "cop")


def test_mmlu_csv(tmp_path):
    path = tmp_path / "college_medicine_dev.csv"
    path.write_text('Which is a vitamin?,Iron,"Vitamin\nC",Zinc,Salt,B\nSecond question?,w,x,y,z,D\n')
    result = load_examples(path)
    assert result.format == "mmlu_csv"
    first, second = result.examples
    assert (first.id, first.source) == ("mmlu/college_medicine/dev/0", "mmlu/college_medicine")
    assert first.answer == 1
    assert first.options[1] == "Vitamin\nC" and second.answer == 3


def test_mmlu_csv_bad_letter_names_line(tmp_path):
    path = tmp_path / "anatomy_test.csv"
    path.write_text('Q1?,a,b,c,d,A\n"Multi\nline?",a,b,c,d,A\nQ3?,a,b,c,d,Z\n')
    error = error_of(path)
    assert (error.line, error.field) == (4, "answer")


def test_alpaca_json(tmp_path):
    data = [
        {"instruction": "If you are a doctor, answer.", "input": "I have a rash.", "output": "Use cream."},
        {"instruction": "Define anemia.", "input": "", "output": "Low haemoglobin."},
    ]
    result = load_examples(write_json(tmp_path / "chatdoctor5k.json", data))
    first, second = result.examples
    assert result.format == "alpaca"
    assert (first.kind, first.source, first.id) == ("qa", "chatdoctor5k", f"{tmp_path / 'chatdoctor5k.json'}[0]")
    assert first.question == "If you are a doctor, answer.\nI have a rash." and first.answer == "Use cream."
    assert second.question == "Define anemia."


def test_alpaca_missing_output_names_record(tmp_path):
    data = [{"instruction": "x", "output": "y"}, {"instruction": "z", "output": ""}]
    path = write_json(tmp_path / "a.json", data)
    error = error_of(path)
    assert (error.path, error.field) == (f"{path}[1]", "output")
    assert str(error).startswith(f"{path}[1]: field 'output':")


def test_sharegpt_json(tmp_path):
    speakers = ["system", "human", "gpt", "human", "gpt"]
    texts = ["Be kind.", "Hi", "Hello", "Pain?", "Where?"]
    data = [{"id": "c1", "conversations": [{"from": s, "value": v} for s, v in zip(speakers, texts)]}]
    result = load_examples(write_json(tmp_path / "chats.json", data))
    (ex,) = result.examples
    assert (result.format, ex.kind, ex.id, ex.source) == ("sharegpt", "dialogue", "c1", "chats")
    assert [t["role"] for t in ex.turns] == ["user", "assistant", "user", "assistant"]
    assert ex.meta == {"system": "Be kind."}


def test_sharegpt_unknown_speaker(tmp_path):
    data = [{"conversations": [{"from": "bot", "value": "x"}, {"from": "gpt", "value": "y"}]}]
    error = error_of(write_json(tmp_path / "chats.json", data))
    assert error.field == "conversations" and "unknown speaker 'bot'" in str(error)


def test_detect_record_format():
    assert detect_record_format({"question": "q", "opa": "a", "opb": "b", "cop": 1}) == "medmcqa"
    assert detect_record_format({"question": "q", "choices": ["a"], "answer": 0, "subject": "x"}) == "mmlu"
    assert detect_record_format({"kind": "qa"}) == "icft"
    assert detect_record_format({"foo": 1}) is None and detect_record_format([1]) is None


# ----------------------------------------------------------------------------------------------------------
# Through datasets.load_dataset / load_from_disk


def test_parquet_file_through_datasets(tmp_path):
    import datasets

    rows = [
        {"question": "Q1?", "options": {"A": "a", "B": "b"}, "answer_idx": "B", "answer": "b"},
        {"question": "Q2?", "options": {"A": "a", "B": "b", "C": "c"}, "answer_idx": "C", "answer": "c"},
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "medqa.parquet"))
    result = load_examples(tmp_path / "medqa.parquet")
    assert result.format == "datasets/medqa"
    # datasets gives the first row a "C": None option; it must not become an option
    assert [e.options for e in result.examples] == [["a", "b"], ["a", "b", "c"]]
    assert [e.answer for e in result.examples] == [1, 2]


def test_saved_dataset_folder(tmp_path):
    import datasets

    rows = [{"question": "Q?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 2}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "mmlu"))
    result = load_examples(tmp_path / "mmlu")
    (ex,) = result.examples
    assert result.format == "datasets/mmlu"
    assert (ex.source, ex.answer) == ("mmlu/anatomy", 2) and ex.id.startswith(str(tmp_path / "mmlu"))


def test_hf_spec_on_a_local_folder(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"prompt": "Q?", "chosen": "good", "rejected": "bad"}])
    result = load_examples(f"hf:{folder}")
    assert result.format == "datasets/pairs"
    assert [e.kind for e in result.examples] == ["preference"]


def test_hf_format_on_a_json_file_and_csv_with_header(tmp_path):
    # the Hugging Face pubmed_qa columns
    row = {
        "pubid": 7,
        "question": "Q?",
        "long_answer": "L.",
        "final_decision": "no",
        "context": {"contexts": ["c"]},
    }
    path = write_jsonl(tmp_path / "pubmedqa.jsonl", [row])
    (ex,) = load_examples(path, format="hf").examples
    assert (ex.id, ex.answer, ex.context) == ("7", 1, "c")
    csv_path = tmp_path / "medmcqa.csv"
    csv_path.write_text("question,opa,opb,opc,opd,cop\nWhich?,a,b,c,d,2\n")
    result = load_examples(csv_path)
    assert result.format == "datasets/medmcqa" and result.examples[0].answer == 2


def test_hf_name_offline_is_a_data_error(monkeypatch):
    import datasets
    import huggingface_hub

    # Offline even when HF_HUB_OFFLINE was not exported: a network try would take many seconds.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="datasets could not load it"):
        load_examples("hf:no-such-org/no-such-dataset@train")


def test_load_many(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ICFT[:2])
    b = write_json(tmp_path / "b.json", ICFT[2:])
    assert [e.id for e in load_many([a, b])] == ["t1", "q1", "p1", "d1"]


# ----------------------------------------------------------------------------------------------------------
# The real shared data

SHARED_FILES = [
    ("pubmedqa/train.jsonl", "pubmedqa", "qa"),
    ("medquad/qa.jsonl", "medquad", "qa"),
    ("mmlu_medical/dev.jsonl", "mmlu", "qa"),
    ("chatdoctor_genmedgpt5k/dialogue.jsonl", "chatdoctor", "dialogue"),
    ("medical_llm_rl/pairs.jsonl", "pairs", "preference"),
]


@pytest.mark.parametrize("name, format, kind", SHARED_FILES)
def test_shared_data(name, format, kind):
    if not SHARED.is_dir():
        pytest.skip("../shared/data not present")
    result = load_examples(SHARED / name)
    assert result.format == format and result.skipped == []
    assert result.examples and {e.kind for e in result.examples} == {kind}
    assert len({e.id for e in result.examples}) == len(result.examples)
