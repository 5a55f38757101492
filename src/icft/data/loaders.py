"""Read training and evaluation data, in the project's own schema or in a public dataset's form.

`load_examples(path)` detects the format from the file extension and the fields of the first record, maps
every record to an `Example` and reports what it had to skip. Formats (the name `LoadResult.format` gives):

- ``icft``: the project's schema (`schema.py`), JSONL or a JSON list; every record is validated.
- the JSONL forms of `shared/data` (`shared/data/README.md`): ``pubmedqa``, ``medquad``, ``mmlu``,
  ``chatdoctor`` and ``pairs`` (medical_llm_rl preference pairs).
- ``pubmedqa_ori``: PubMedQA's original ``ori_pqal.json`` (a dict PMID -> {QUESTION, CONTEXTS, ...}).
- ``medquad_xml``: MedQuAD's XML files, one file or a folder of them (searched recursively).
- ``medqa`` ({"question", "options": {"A": ..}, "answer_idx"}) and ``medmcqa`` ({"opa".."opd", "cop"}).
  MedMCQA's ``cop`` is read as 0..3, as in its Hugging Face release; a file with a cop of 4 and none of 0
  can only be the original 1..4 release and is read that way.
- ``mmlu_csv``: MMLU's csv files (no header: question, A, B, C, D, answer letter).
- ``alpaca`` (instruction/input/output -> open QA) and ``sharegpt`` (conversations -> dialogue).
- anything `datasets` reads: ``"hf:NAME[:CONFIG][@SPLIT]"`` (split defaults to train), a parquet or
  arrow file, a folder saved with `save_to_disk` or a folder of data files; its columns must match one of
  the record formats above. Its format is reported as ``datasets/<record format>``; ``format="hf"`` sends
  any file through `datasets`.

Errors. ``strict=True`` (the default) raises `DataError` naming the file, the line (or the record, as
``file.json[3]``) and the field at the first record it cannot use. ``strict=False`` skips such records and
lists them in `LoadResult.skipped`. Either way, MedQuAD pairs with an empty answer (the authors removed
them for copyright reasons) are skipped and counted, never dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from .schema import KNOWN_FIELDS, OPTION_LETTERS, YES_NO_MAYBE, DataError, Example

DATASET_SUFFIXES = (".parquet", ".arrow")


@dataclass
class LoadResult:
    examples: list[Example]
    skipped: list[tuple[int | None, str]] = field(default_factory=list)  # (line or record number, reason)
    format: str = "icft"
    # strict=False: the records that were skipped as bad (a subset of `skipped`), each a DataError with its
    # file, line and field; records the dataset itself marks unusable (empty MedQuAD answers) are not in it
    invalid: list[DataError] = field(default_factory=list)
    # what the reader decided for the user and says once per file (e.g. records without `kind` read as qa)
    notes: list[str] = field(default_factory=list)


class _Unmappable(Exception):
    """A record a mapper cannot turn into an example; becomes a DataError once its location is known."""

    def __init__(self, field_name: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field_name, message


class _Skip(_Unmappable):
    """A record the dataset itself marks as unusable: always skipped and counted, even in strict mode."""


class _Invalid(NamedTuple):
    """A record that could not even be read (bad JSON, wrong number of csv columns)."""

    message: str


class _Raw(NamedTuple):
    """One record as read, with where it came from (`path`, `line`) in the form DataError reports."""

    number: int | None
    path: str
    line: int | None
    data: Any


# ----------------------------------------------------------------------------------------------------------
# Public API


def load_examples(path: str | Path, format: str | None = None, strict: bool = True) -> LoadResult:
    """Read a file, a folder or an ``hf:`` dataset; a `format` (see the module docstring) skips detection."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"unknown format {format!r} (known: {', '.join(FORMATS)})")
    if isinstance(path, str) and path.startswith("hf:"):
        return _load_dataset(path, format, strict)
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "no such file or directory")
    if format == "medquad_xml" or (format is None and _is_xml(path)):
        return _load_medquad_xml(path, strict)
    if format == "hf" or path.is_dir() or path.suffix in DATASET_SUFFIXES:
        return _load_dataset(path, None if format == "hf" else format, strict)
    if path.suffix == ".csv":
        return _load_csv(path, format, strict)
    return _load_json(path, format, strict)


def load_many(paths: Iterable[str | Path], strict: bool = True) -> list[Example]:
    """The examples of several files, in order."""
    return [ex for p in paths for ex in load_examples(p, strict=strict).examples]


def read_jsonl_records(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line; raises DataError at the first invalid line."""
    raws = _jsonl_raws(Path(path), _read_text(Path(path)))
    for raw in raws:
        if isinstance(raw.data, _Invalid):
            raise DataError(raw.path, raw.line, None, raw.data.message)
    return [(raw.line, raw.data) for raw in raws]


def detect_record_format(record: Any) -> str | None:
    """Which record format a parsed record (or a dataset row) is in, from its field names."""
    if not isinstance(record, dict):
        return None
    keys = set(record)
    # A record using only schema fields is the project's own, even when `kind` is missing (then
    # validation reports the missing field instead of "unrecognised format").
    if "kind" in keys:
        return "icft"
    if "source" in keys and keys <= KNOWN_FIELDS:
        # only schema fields but no `kind`: question and answer make a qa record; otherwise validation names
        # the missing field
        return "qa_fields" if {"question", "answer"} <= keys else "icft"
    checks = [
        ("sharegpt", {"conversations"}),
        ("alpaca", {"instruction", "output"}),
        ("medmcqa", {"question", "opa", "opb", "cop"}),
        ("medqa", {"question", "options", "answer_idx"}),
        ("pubmedqa", {"question", "long_answer"}),
        ("medquad", {"question", "answer", "focus", "qtype"}),
        ("mmlu", {"question", "options", "answer"}),
        ("mmlu", {"question", "choices", "answer"}),
        ("chatdoctor", {"patient", "doctor"}),
        ("pairs", {"prompt", "chosen", "rejected"}),
        # plain question/answer rows without `kind` (JSONL or csv): open (or, with options, choice) qa
        ("qa_fields", {"question", "answer"}),
        ("qa_fields", {"prompt", "response"}),
    ]
    return next((name for name, needed in checks if needed <= keys), None)


# Formats read from rows that lack `kind`: said once per file (LoadResult.notes).
INFERRED = {
    "qa_fields": "records have no 'kind': read as qa from their question/answer (or prompt/response) fields",
    "alpaca": "records have no 'kind': read as qa from their instruction (+ input) / output fields",
}


# ----------------------------------------------------------------------------------------------------------
# Record mappers: a record of one format -> a record of the project's schema (validated by Example.from_dict).
# Each takes (record, number, name): number is the record's line or index, name the file stem or dataset name.


def _text(record: dict, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _Unmappable(key, "missing or empty (expected a non-empty string)")
    return value


def _object(record: Any) -> dict:
    if not isinstance(record, dict):
        raise _Unmappable(None, f"expected a JSON object, got {type(record).__name__}")
    return record


def _id(record: dict, fallback: Any = None) -> str | None:
    """The record's own id, else the dataset's (fallback); None lets `_convert_one` use "<path>:<line>"."""
    for value in (record.get("id"), fallback):
        if value not in (None, ""):
            return str(value)
    return None


def _icft(record: Any, number: int | None, name: str) -> Any:
    return record  # Example.from_dict does all the checking


def _pubmedqa(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    label_key = "label" if "label" in record else "final_decision"
    label = _text(record, label_key).strip().lower()
    if label not in YES_NO_MAYBE:
        raise _Unmappable(label_key, f"'{label}' is not one of yes/no/maybe")
    context = record.get("context")
    if isinstance(context, dict):  # the Hugging Face pubmed_qa form: {"contexts": [...], "labels": ...}
        context = context.get("contexts")
    if isinstance(context, list):
        context = "\n".join(context)
    meta = {"long_answer": record["long_answer"]} if record.get("long_answer") else {}
    return {
        "id": _id(record, record.get("pubid")),
        "kind": "qa", "source": "pubmedqa", "question": _text(record, "question"), "context": context or None,
        "options": YES_NO_MAYBE, "answer": YES_NO_MAYBE.index(label), "meta": meta,
    }  # fmt: skip


def _pubmedqa_ori(record: Any, number: int | None, name: str) -> dict:
    pmid, item = record
    item = _object(item)
    for key in ("QUESTION", "final_decision"):
        _text(item, key)
    contexts = item.get("CONTEXTS") or []
    if not isinstance(contexts, list):
        raise _Unmappable("CONTEXTS", "must be a list of strings")
    return _pubmedqa(
        {"id": pmid, "question": item["QUESTION"], "context": contexts,
         "long_answer": item.get("LONG_ANSWER"), "label": item["final_decision"]},
        number, name,
    )  # fmt: skip


def _medquad(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    question = _text(record, "question")
    answer = record.get("answer")
    if not isinstance(answer, str) or not answer.strip():
        raise _Skip("answer", "empty answer (MedQuAD removed some answers for copyright reasons)")
    source = f"medquad/{record['source']}" if record.get("source") else "medquad"
    meta = {key: record[key] for key in ("focus", "qtype") if record.get(key)}
    return {"id": _id(record), "kind": "qa", "source": source,
            "question": question, "answer": answer, "meta": meta}  # fmt: skip


def _answer_index(value: Any, key: str, n_options: int) -> int:
    """An answer given as an index or as a letter (A, B, ...)."""
    if isinstance(value, str) and len(value.strip()) == 1 and value.strip().upper() in OPTION_LETTERS:
        value = OPTION_LETTERS.index(value.strip().upper())
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Unmappable(key, f"expected an option index or letter, got {value!r}")
    if not 0 <= value < n_options:
        raise _Unmappable(key, f"index {value} is outside the {n_options} options (0..{n_options - 1})")
    return value


def _mmlu(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    options_key = "options" if "options" in record else "choices"
    options = record.get(options_key)
    if not isinstance(options, list):
        raise _Unmappable(options_key, "must be a list of options")
    subject = record.get("subject")
    source = f"mmlu/{subject}" if subject else "mmlu"
    return {"id": _id(record), "kind": "qa", "source": source,
            "question": _text(record, "question"), "options": options,
            "answer": _answer_index(record.get("answer"), "answer", len(options)),
            "meta": {"subject": subject} if subject else {}}  # fmt: skip


def _medqa(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    options = record.get("options")
    if isinstance(options, dict):
        # Keys are letters; datasets fills the letters a row lacks (4- vs 5-option files) with None.
        letters = sorted(k for k, v in options.items() if v is not None)
        options = [options[k] for k in letters]
        answer_idx = record.get("answer_idx")
        if answer_idx not in letters:
            raise _Unmappable("answer_idx", f"{answer_idx!r} is not one of the option letters {letters}")
        answer = letters.index(answer_idx)
    elif isinstance(options, list):
        answer = _answer_index(record.get("answer_idx"), "answer_idx", len(options))
    else:
        raise _Unmappable("options", "must be an object of lettered options")
    meta = {"meta_info": record["meta_info"]} if record.get("meta_info") else {}
    return {"id": _id(record), "kind": "qa", "source": "medqa",
            "question": _text(record, "question"), "options": options, "answer": answer,
            "meta": meta}  # fmt: skip


def _medmcqa(record: Any, number: int | None, name: str, one_based: bool = False) -> dict:
    record = _object(record)
    cop = record.get("cop")
    if isinstance(cop, bool) or not isinstance(cop, int):
        raise _Unmappable("cop", f"expected the correct option's index, got {cop!r}")
    answer = cop - 1 if one_based else cop
    if not 0 <= answer < 4:
        raise _Unmappable("cop", f"{cop} is outside {'1..4' if one_based else '0..3'}")
    meta = {new: record[old] for old, new in
            (("exp", "explanation"), ("subject_name", "subject"), ("topic_name", "topic"))
            if record.get(old)}  # fmt: skip
    return {"id": _id(record), "kind": "qa", "source": "medmcqa",
            "question": _text(record, "question"),
            "options": [_text(record, key) for key in ("opa", "opb", "opc", "opd")],
            "answer": answer, "meta": meta}  # fmt: skip


def _medmcqa_is_one_based(raws: list[_Raw]) -> bool:
    """MedMCQA's `cop` is 0..3 in the Hugging Face release and 1..4 in the original json files.

    We read it as 0-based unless the file holds a 4 and no 0, which only a 1-based file can (any real
    file, of hundreds of questions, has both its extremes).
    """
    cops = {raw.data.get("cop") for raw in raws if isinstance(raw.data, dict)}
    return 4 in cops and 0 not in cops


def _chatdoctor(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    turns = [{"role": "user", "content": _text(record, "patient")},
             {"role": "assistant", "content": _text(record, "doctor")}]  # fmt: skip
    return {"id": _id(record), "kind": "dialogue", "source": "chatdoctor",
            "turns": turns}  # fmt: skip


def _pairs(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    return {"id": _id(record), "kind": "preference", "source": "medical_llm_rl",
            "prompt": _text(record, "prompt"), "chosen": _text(record, "chosen"),
            "rejected": _text(record, "rejected")}  # fmt: skip


def _alpaca(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    question = _text(record, "instruction")
    extra = record.get("input")
    if isinstance(extra, str) and extra.strip():
        question = f"{question}\n{extra}"
    return {"id": _id(record), "kind": "qa", "source": name,
            "question": question, "answer": _text(record, "output")}  # fmt: skip


def _qa_fields(record: Any, number: int | None, name: str) -> dict:
    """A row of question and answer (or prompt and response) without `kind`: a qa record. Schema fields
    (id, source, stage, context, options, difficulty, meta) are kept; any other field goes into meta."""
    record = _object(record)
    if "kind" in record:  # a record of the project's own schema in the same file
        return record
    q_key, a_key = ("question", "answer") if "question" in record else ("prompt", "response")
    out: dict[str, Any] = {"kind": "qa", "question": record.get(q_key), "answer": record.get(a_key)}
    meta = dict(record["meta"]) if isinstance(record.get("meta"), dict) else {}
    for key, value in record.items():
        if key in (q_key, a_key, "kind"):
            continue
        if key in KNOWN_FIELDS - {"prompt", "chosen", "rejected", "turns", "text", "question", "answer"}:
            out[key] = value
        elif value not in (None, ""):
            meta[key] = value
    if meta:
        out["meta"] = meta
    if "id" in out and out["id"] is not None and not isinstance(out["id"], str):
        out["id"] = str(out["id"])
    return out


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _sharegpt(record: Any, number: int | None, name: str) -> dict:
    record = _object(record)
    conversation = record.get("conversations")
    if not isinstance(conversation, list):
        raise _Unmappable("conversations", "must be a list of {from, value} turns")
    turns, system = [], []
    for i, turn in enumerate(conversation):
        speaker = turn.get("from") if isinstance(turn, dict) else None
        if speaker == "system":  # the schema has no system role; keep the text in meta
            system.append(turn.get("value", ""))
        elif speaker in SHAREGPT_ROLES:
            turns.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
        else:
            raise _Unmappable("conversations", f"turn {i}: unknown speaker {speaker!r} (human, gpt, system)")
    meta = {"system": "\n".join(system)} if system else {}
    return {"id": _id(record), "kind": "dialogue", "source": name,
            "turns": turns, "meta": meta}  # fmt: skip


MAPPERS: dict[str, Callable[[Any, int | None, str], Any]] = {
    "icft": _icft, "pubmedqa": _pubmedqa, "pubmedqa_ori": _pubmedqa_ori, "medquad": _medquad,
    "mmlu": _mmlu, "mmlu_csv": _mmlu, "medquad_xml": _medquad, "medqa": _medqa, "medmcqa": _medmcqa,
    "chatdoctor": _chatdoctor, "pairs": _pairs, "alpaca": _alpaca, "sharegpt": _sharegpt, "qa_fields": _qa_fields,
}  # fmt: skip
FORMATS = (*MAPPERS, "hf")


def _convert(raws: list[_Raw], format: str, name: str, strict: bool) -> LoadResult:
    """Map and validate every record; strict raises at the first bad one, otherwise it is skipped."""
    if format not in MAPPERS:
        raise ValueError(f"unknown format {format!r} (known: {', '.join(FORMATS)})")
    mapper = MAPPERS[format]
    if format == "medmcqa":
        mapper = partial(_medmcqa, one_based=_medmcqa_is_one_based(raws))
    examples, skipped, invalid = [], [], []
    for raw in raws:
        try:
            examples.append(_convert_one(raw, mapper, name))
        except _Skip as skip:
            skipped.append((raw.number, str(DataError(raw.path, raw.line, skip.field, skip.message))))
        except DataError as error:
            if strict:
                raise
            skipped.append((raw.number, str(error)))
            invalid.append(error)
    notes = [INFERRED[format]] if format in INFERRED else []
    return LoadResult(examples, skipped, format, invalid, notes)


def _convert_one(raw: _Raw, mapper: Callable, name: str) -> Example:
    if isinstance(raw.data, _Invalid):
        raise DataError(raw.path, raw.line, None, raw.data.message)
    try:
        record = mapper(raw.data, raw.number, name)
    except _Skip:
        raise
    except _Unmappable as error:
        raise DataError(raw.path, raw.line, error.field, error.message) from None
    if isinstance(record, dict) and record.get("id") is None and "kind" in record:
        # No id in the source: the file and line (or record number) make one that no other file shares.
        # (A record of a JSON list or a dataset has no line: its path already reads "file.json[3]".)
        record = {**record, "id": raw.path if raw.line is None else f"{raw.path}:{raw.line}"}
    return Example.from_dict(record, raw.path, raw.line)


def _detect(raws: list[_Raw], path: Path) -> str:
    """The record format of the first JSON object; its line is blamed when there is none to recognise."""
    readable = [raw for raw in raws if not isinstance(raw.data, _Invalid)]
    if not readable:  # every record is unreadable: the first one's reason
        first = next((raw for raw in raws if isinstance(raw.data, _Invalid)), None)
        if first is None:
            raise DataError(path, None, None, "file is empty")
        raise DataError(first.path, first.line, None, first.data.message)
    raw = readable[0]  # lines that cannot be read are reported one by one when the records are converted
    found = detect_record_format(raw.data)
    if found is None:
        fields = ", ".join(sorted(raw.data)) if isinstance(raw.data, dict) else type(raw.data).__name__
        raise DataError(raw.path, raw.line, None, f"unrecognised record format (fields: {fields}); {FORMAT_HINT}")
    return found


FORMAT_HINT = ("give each record a 'kind' and its fields, e.g. {\"kind\": \"qa\", \"question\": \"...\", \"answer\": "
               "\"...\"} (kinds: text, qa, preference, dialogue), or name the fields question and answer "
               "(prompt and response); see docs/own-data.md")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Readers: a file -> a list of _Raw records


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    if not text.strip():
        raise DataError(path, None, None, "file is empty")
    return text


def _not_utf8(path: Path) -> DataError:
    """The line and column of the first byte that is not UTF-8 (decoded again whole: read_text's error
    counts from the start of the chunk it was decoding, not of the file)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        return DataError(path, data.count(b"\n", 0, error.start) + 1, None,
                         f"not UTF-8 text (byte 0x{data[error.start]:02x} at column {error.start - line_start + 1}); "
                         "save the file as UTF-8")  # fmt: skip
    return DataError(path, None, None, "not UTF-8 text")


TOO_DEEP = "JSON nested too deeply to read (a record is a flat object of strings, lists and small objects)"


def _jsonl_raws(path: Path, text: str) -> list[_Raw]:
    raws = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028/U+2029, which splitlines() breaks on
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            data = _Invalid(f"invalid JSON at column {error.colno}: {error.msg} (one JSON object a line)")
        except RecursionError:
            data = _Invalid(TOO_DEEP)
        raws.append(_Raw(number, str(path), number, data))
    return raws


def _load_json(path: Path, format: str | None, strict: bool) -> LoadResult:
    """A .jsonl file, or a .json file holding a list, a PubMedQA dict or (as MedMCQA's are) JSON lines."""
    text = _read_text(path)
    value = _parse_json_document(path, text)
    if isinstance(value, dict) and format in (None, "pubmedqa_ori") and _is_ori_pqal(value):
        items = enumerate(value.items())
        raws = [_Raw(i, f"{path}[{pmid}]", None, (pmid, item)) for i, (pmid, item) in items]
        format = "pubmedqa_ori"
    elif value is None and format != "pubmedqa_ori":
        raws = _jsonl_raws(path, text)
    elif isinstance(value, list) and format != "pubmedqa_ori":
        raws = [_Raw(i, f"{path}[{i}]", None, item) for i, item in enumerate(value)]
    else:
        raise DataError(path, None, None, "expected JSON lines, a list of records or an ori_pqal.json dict")
    if not raws:
        raise DataError(path, None, None, "file is empty")
    return _convert(raws, format or _detect(raws, path), path.stem, strict)


def _parse_json_document(path: Path, text: str) -> Any | None:
    """The whole file as one JSON value, or None when it is JSON lines (one value per line)."""
    if path.suffix == ".jsonl":
        return None
    try:
        return json.loads(text)
    except RecursionError:
        raise DataError(path, None, None, TOO_DEEP) from None
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":
            return None
        message = f"invalid JSON at column {error.colno}: {error.msg}"
        raise DataError(path, error.lineno, None, message) from None


def _is_ori_pqal(value: dict) -> bool:
    first = next(iter(value.values()), None)
    return isinstance(first, dict) and "QUESTION" in first


def _load_csv(path: Path, format: str | None, strict: bool) -> LoadResult:
    """MMLU's header-less csv; a csv whose header names the schema's fields (kind, question, answer...) or
    question/answer (prompt/response) columns is read here, rows by their line in the file (the header is
    line 1); any other csv with a header goes through `datasets` (its columns name the format)."""
    rows = _csv_rows(path, _read_text(path))
    first = rows[0][1]
    is_mmlu = len(first) == 6 and first[5].strip() in tuple("ABCD")
    header = [cell.strip() for cell in first]
    own = detect_record_format(dict.fromkeys(header)) in ("icft", "qa_fields") and format in (None, "icft", "qa_fields")
    if own and not is_mmlu:
        raws = [_Raw(line, str(path), line, _csv_record(header, row)) for line, row in rows[1:]]
        if not raws:
            raise DataError(path, None, None, f"no rows under the header ({', '.join(header)})")
        result = _convert(raws, format or _detect(raws, path), path.stem, strict)
        result.notes = [f"csv header: {', '.join(header)}", *result.notes]
        return result
    if format not in (None, "mmlu_csv") or (format is None and not is_mmlu):
        return _load_dataset(path, format, strict)
    subject, split = _mmlu_subject_and_split(path.stem)
    raws = [_Raw(i, str(path), line, _mmlu_row(row, subject, split, i)) for i, (line, row) in enumerate(rows)]
    return _convert(raws, "mmlu_csv", path.stem, strict)


def _csv_record(header: list[str], row: list[str]) -> dict | _Invalid:
    """A csv row as a record: empty cells left out; `options`, `meta` (JSON), `difficulty` (a number) and an
    option index in `answer` read as the values they spell."""
    if len(row) != len(header):
        return _Invalid(f"expected {len(header)} cells (header: {', '.join(header)}), got {len(row)}")
    record: dict[str, Any] = {key: cell for key, cell in zip(header, row) if cell.strip()}
    for key in ("options", "meta"):
        if isinstance(record.get(key), str) and record[key].strip()[:1] in ("[", "{"):
            try:
                record[key] = json.loads(record[key])
            except (json.JSONDecodeError, RecursionError):
                return _Invalid(f'column \'{key}\' is not valid JSON (a list of options is written ["a", "b"])')
    if isinstance(record.get("difficulty"), str):
        try:
            record["difficulty"] = float(record["difficulty"])
        except ValueError:
            pass  # validation names the field
    if record.get("options") is not None and isinstance(record.get("answer"), str) and record["answer"].isdigit():
        record["answer"] = int(record["answer"])
    return record


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(first line, cells) of each non-empty row."""
    rows, start = [], 1
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if row:
                rows.append((start, row))
            start = reader.line_num + 1  # a quoted field can span lines: the next row starts after this one
    except csv.Error as error:
        raise DataError(path, reader.line_num, None, f"invalid csv: {error}") from None
    return rows


def _mmlu_subject_and_split(stem: str) -> tuple[str, str | None]:
    """MMLU names its files <subject>_<split>.csv, e.g. college_medicine_dev.csv."""
    subject, _, split = stem.rpartition("_")
    if subject and split in ("dev", "val", "test", "train"):
        return subject, split
    return stem, None


def _mmlu_row(row: list[str], subject: str, split: str | None, index: int) -> dict | _Invalid:
    if len(row) != 6:
        return _Invalid(f"expected 6 columns (question, A, B, C, D, answer letter), got {len(row)}")
    prefix = f"mmlu/{subject}/{split}" if split else f"mmlu/{subject}"
    return {"id": f"{prefix}/{index}", "question": row[0], "options": row[1:5],
            "answer": row[5].strip(), "subject": subject}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# MedQuAD XML


def _is_xml(path: Path) -> bool:
    if path.is_dir():
        return next(path.rglob("*.xml"), None) is not None
    return path.suffix == ".xml"


def _load_medquad_xml(path: Path, strict: bool) -> LoadResult:
    files = sorted(path.rglob("*.xml")) if path.is_dir() else [path]
    raws: list[_Raw] = []
    skipped: list[tuple[int | None, str]] = []
    for file in files:
        try:
            raws.extend(_medquad_document(file))
        except DataError as error:
            if strict:
                raise
            skipped.append((None, str(error)))
    result = _convert(raws, "medquad_xml", path.stem, strict)
    result.skipped = skipped + result.skipped
    return result


def _medquad_document(file: Path) -> list[_Raw]:
    """One <Document>: its QA pairs in the medquad JSONL form (id <source>/<qid>, source, focus, qtype)."""
    data = file.read_bytes()
    if not data.strip():
        raise DataError(file, None, None, "file is empty")
    try:
        document = ET.fromstring(data)
    except ET.ParseError as error:
        line, column = error.position
        raise DataError(file, line, None, f"invalid XML at column {column}: {error.msg}") from None
    if document.tag != "Document":
        raise DataError(file, None, None, f"not a MedQuAD document (root element <{document.tag}>)")
    source = document.get("source") or "unknown"
    focus = _clean_text(document.findtext("Focus"))
    raws = []
    for number, pair in enumerate(document.iter("QAPair"), start=1):
        question = pair.find("Question")
        qid = (question.get("qid") if question is not None else None) or f"{document.get('id')}-{number}"
        record = {
            "id": f"{source}/{qid}", "source": source, "focus": focus,
            "qtype": question.get("qtype") if question is not None else None,
            "question": _clean_text(pair.findtext("Question")),
            "answer": _clean_text(pair.findtext("Answer")),
        }  # fmt: skip
        raws.append(_Raw(number, f"{file}[QAPair {number}]", None, record))
    return raws


def _clean_text(text: str | None) -> str:
    """The normalisation of shared/data/medquad: spaces collapsed, lines stripped, at most one blank line."""
    if not text:
        return ""
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.strip().split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# Anything `datasets` can read


def _load_dataset(source: str | Path, format: str | None, strict: bool) -> LoadResult:
    rows, name = _dataset_rows(source)
    label = str(source)
    raws = [_Raw(i, f"{label}[{i}]", None, row) for i, row in enumerate(rows)]
    if not raws:
        raise DataError(label, None, None, "dataset is empty")
    result = _convert(raws, format or _detect(raws, Path(label)), name, strict)
    result.format = f"datasets/{result.format}"
    return result


def _dataset_rows(source: str | Path) -> tuple[list[dict], str]:
    """The rows of a dataset and a name for it (the source of alpaca/sharegpt examples)."""
    import datasets  # slow to import: only when a dataset is actually read

    try:
        if isinstance(source, str) and source.startswith("hf:"):
            name, config, split = _parse_hf_spec(source)
            data, name = datasets.load_dataset(name, config, split=split), name.rstrip("/").split("/")[-1]
        elif source.is_dir() and is_saved_dataset(source):
            data, name = datasets.load_from_disk(str(source)), source.name
        elif source.is_dir():
            data, name = datasets.load_dataset(str(source), split="train"), source.name
        else:
            builder = {".jsonl": "json", ".parquet": "parquet"}.get(source.suffix, source.suffix.lstrip("."))
            data = datasets.load_dataset(builder, data_files=str(source), split="train")
            name = source.stem
    except Exception as error:  # datasets raises many exception types: report any of them as bad input
        raise DataError(source, None, None, f"datasets could not load it: {error}") from None
    if isinstance(data, datasets.DatasetDict):  # a folder saved from a DatasetDict: read its train split
        if "train" not in data:
            raise DataError(source, None, None, f"no 'train' split (splits: {', '.join(data)})")
        data = data["train"]
    return data.to_list(), name


def _parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """'hf:NAME[:CONFIG][@SPLIT]' -> (name, config, split); the split defaults to train, never test."""
    rest, _, split = spec.removeprefix("hf:").partition("@")
    name, _, config = rest.partition(":")
    return name, config or None, split or "train"


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by `save_to_disk` (Dataset or DatasetDict)."""
    return (folder / "state.json").exists() or (folder / "dataset_dict.json").exists()
