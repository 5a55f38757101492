"""One schema for every training and evaluation example.

Four kinds of example, all flat JSON objects on disk (one per line in `.jsonl`):

- ``text``:       {"text": "..."}                               plain language-model text
- ``qa``:         {"question", "context"?, "options"?, "answer"} multiple choice (answer = option index),
                                                                 yes/no/maybe (options ["yes","no","maybe"])
                                                                 or open answer (answer = string)
- ``preference``: {"prompt", "chosen", "rejected"}              which of two answers is better
- ``dialogue``:   {"turns": [{"role": "user"|"assistant", "content": "..."}, ...]}  last turn is the assistant's

Every example also has ``kind``, ``id`` (default: ``<file>:<line>``), ``source`` (default: the file's
stem) and optionally ``stage``, ``difficulty`` (in [0, 1]) and ``meta`` (free-form dict, e.g. the bundled
data's ``condition`` and ``tier``). In memory an example also knows its ``origin`` (file and line), so
that a duplicate id can be reported with both places; it is not written back to disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("text", "qa", "preference", "dialogue")
OPTION_LETTERS = "ABCDEFGHIJ"  # how options are named in prompts and in MMLU/MedQA answer keys
YES_NO_MAYBE = ["yes", "no", "maybe"]  # the options of PubMedQA-style questions
ROLES = ("user", "assistant")
REQUIRED_FIELDS = {
    "text": ("text",),
    "qa": ("question", "answer"),
    "preference": ("prompt", "chosen", "rejected"),
    "dialogue": ("turns",),
}
KNOWN_FIELDS = {
    "id", "kind", "source", "stage", "difficulty", "meta",
    "text", "question", "context", "options", "answer", "prompt", "chosen", "rejected", "turns",
}  # fmt: skip


class DataError(ValueError):
    """Bad input data. The message names the file, the line (1-based) and the field."""

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.reason = str(path), line, field, message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")

    def __reduce__(self):  # rebuilt from its parts when it crosses a process boundary (icft compare's workers)
        return DataError, (self.path, self.line, self.field, self.reason)


@dataclass
class Example:
    id: str
    kind: str
    source: str
    stage: str | None = None
    difficulty: float | None = None
    text: str | None = None
    question: str | None = None
    context: str | None = None
    options: list[str] | None = None
    answer: int | str | None = None
    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    turns: list[dict[str, str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = field(default="", compare=False, repr=False)  # "<file>:<line>" it was read from

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form: fields that are unset are left out."""
        return {k: v for k, v in asdict(self).items() if v is not None and v != {} and k != "origin"}

    @classmethod
    def from_dict(cls, record: Any, path: str = "<memory>", line: int | None = None) -> Example:
        """Validate one record and build an Example; raises DataError naming path, line and field."""

        def fail(field_name: str | None, message: str) -> DataError:
            return DataError(path, line, field_name, message)

        _check_shape(record, fail)
        if path != "<memory>":  # read from a file: the place and the file name stand in for id and source
            if "id" not in record and line is not None:
                record = {**record, "id": f"{path}:{line}"}
            if "source" not in record:
                record = {**record, "source": Path(path).stem}
        kind = _check_fields(record, fail)
        difficulty = _check_difficulty(record.get("difficulty"), fail)
        meta = _check_meta(record.get("meta", {}), fail)
        answer, options, turns = record.get("answer"), record.get("options"), record.get("turns")
        if kind == "qa":
            answer, options = _check_qa(answer, options, fail)
        if kind == "dialogue":
            turns = _check_turns(turns, fail)
        return cls(
            id=record["id"], kind=kind, source=record["source"], stage=record.get("stage"),
            difficulty=difficulty, text=record.get("text"),
            question=record.get("question"), context=record.get("context"), options=options, answer=answer,
            prompt=record.get("prompt"), chosen=record.get("chosen"), rejected=record.get("rejected"), turns=turns,
            meta=meta, origin=path if line is None else f"{path}:{line}",
        )  # fmt: skip


def _check_shape(record: Any, fail) -> None:
    """A JSON object of known fields whose texts are valid Unicode."""
    if not isinstance(record, dict):
        raise fail(None, f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - KNOWN_FIELDS)
    if unknown:
        raise fail(unknown[0], f"unknown field (known fields: {', '.join(sorted(KNOWN_FIELDS))})")
    for name, value in record.items():
        problem = _not_unicode(value)
        if problem:
            raise fail(name, problem)


def _check_fields(record: dict[str, Any], fail) -> str:
    """The record's kind, once id, kind and source are non-empty strings, the kind is known, its required
    fields are there and not empty, and every text field is a string."""
    for name in ("id", "kind", "source"):
        if name not in record:
            raise fail(name, "missing required field")
        if not isinstance(record[name], str) or not record[name].strip():
            raise fail(name, "must be a non-empty string")
    kind = record["kind"]
    if kind not in KINDS:
        raise fail("kind", f"unknown kind '{kind}' (expected one of: {', '.join(KINDS)})")
    for name in REQUIRED_FIELDS[kind]:
        if name not in record or record[name] is None:
            raise fail(name, f"missing required field for kind '{kind}' (a {kind} record needs "
                             f"{' and '.join(REQUIRED_FIELDS[kind])}): add it, or remove the record")  # fmt: skip
    for name in ("text", "question", "context", "prompt", "chosen", "rejected", "stage"):
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise fail(name, f"must be a string, got {type(value).__name__}")
    for name in REQUIRED_FIELDS[kind]:
        if isinstance(record[name], str) and not record[name].strip():
            raise fail(name, "must not be empty: give it text, or remove the record")
    return kind


def _check_difficulty(difficulty: Any, fail) -> float | None:
    if difficulty is None:
        return None
    if isinstance(difficulty, bool) or not isinstance(difficulty, (int, float)):
        raise fail("difficulty", "must be a number in [0, 1]")
    if not 0.0 <= float(difficulty) <= 1.0:
        raise fail("difficulty", f"{difficulty} is outside [0, 1]")
    return float(difficulty)


def _check_meta(meta: Any, fail) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise fail("meta", "must be a JSON object")
    return meta


def _not_unicode(value: Any, depth: int = 0) -> str | None:
    """Why a value's text cannot be written as UTF-8 (a lone surrogate such as "\\ud800", which a JSON escape
    can produce and no tokenizer or file accepts), or None. Strings inside lists and objects are checked too."""
    if isinstance(value, str):
        if value.isascii():
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            code = ord(value[error.start])
            return (
                f"not valid Unicode: a lone surrogate \\u{code:04x} at character {error.start + 1} "
                "(a JSON escape \\ud800-\\udfff without its pair); remove it or write the character itself"
            )
        return None
    if depth > 20:
        return None
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list):
        items = value
    else:
        return None
    return next((found for item in items if (found := _not_unicode(item, depth + 1))), None)


def _check_qa(answer: Any, options: Any, fail) -> tuple[int | str, list[str] | None]:
    if options is None:
        if not isinstance(answer, str) or not answer.strip():
            raise fail("answer", "an open question's answer must be a non-empty string")
        return answer, None
    if not isinstance(options, list) or len(options) < 2:
        raise fail("options", "must be a list of at least 2 strings")
    for i, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise fail("options", f"option {i} must be a non-empty string")
    if isinstance(answer, str) and answer in options:
        return options.index(answer), options
    if isinstance(answer, bool) or not isinstance(answer, int):
        raise fail("answer", f"must be an option index (0..{len(options) - 1}) or one of the options")
    if not 0 <= answer < len(options):
        raise fail("answer", f"index {answer} is outside the {len(options)} options (0..{len(options) - 1})")
    return answer, options


def _check_turns(turns: Any, fail) -> list[dict[str, str]]:
    if not isinstance(turns, list) or len(turns) < 2:
        raise fail("turns", "must be a list of at least 2 turns")
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES:
            raise fail("turns", f"turn {i} must be an object with role 'user' or 'assistant'")
        if not isinstance(turn.get("content"), str) or not turn["content"].strip():
            raise fail("turns", f"turn {i} needs a non-empty string 'content'")
    if turns[-1]["role"] != "assistant":
        raise fail("turns", "the last turn must be the assistant's")
    return [{"role": t["role"], "content": t["content"]} for t in turns]
