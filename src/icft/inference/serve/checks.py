"""A request's checks in the handler, before the worker sees it: its body parsed into its model (the first error,
in OpenAI's shape), the model's name, token limits under the context, and a prompt too long at any tokenisation."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .errors import ApiError
from .schema import Sampling
from .worker import Decoding


def parse_request(cls: type[Sampling], body: bytes, name: str) -> Any:
    try:
        req = cls.model_validate_json(body or b"")
    except ValidationError as error:
        errors = error.errors()
        # a union field (prompt: str | list[str]) fails in every branch; the branch of the right type says why
        same_field = [e for e in errors if e["loc"][:1] == errors[0]["loc"][:1]]
        first = next((e for e in same_field if not e["type"].endswith("_type")), errors[0])
        where = ".".join(str(p) for p in first["loc"])  # e.g. messages.0.content.str (a union's branch)
        param = str(first["loc"][0]) if first["loc"] else None  # the request field, as OpenAI names it
        message = (
            "request body is not valid JSON"
            if first["type"] == "json_invalid"
            else (f"{where}: {first['msg']}" if where else first["msg"])
        )
        raise ApiError(400, message, param=param, code=first["type"]) from None
    if req.model != name:
        raise ApiError(
            404,
            f"the model '{req.model}' does not exist; this server has '{name}'",
            param="model",
            code="model_not_found",
        )
    return req


def check_limit(value: int | None, param: str, limit: int) -> None:
    if value is not None and value >= limit:
        raise ApiError(400, f"{param} must be less than the context length, {limit}", param=param, code="invalid_value")


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters one token stands for: the vocabulary's longest token (its text as stored, never fewer
    characters than it decodes to) or, for WordPiece, the longest word folded into one unknown token. A prompt
    of more than context * this many characters (spaces aside) cannot fit."""
    try:
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
    except (AttributeError, TypeError, NotImplementedError):  # a tokenizer without a vocabulary to list
        longest = 64
    wordpiece = getattr(tokenizer, "wordpiece_tokenizer", None)  # BERT's Python tokenizer, or the Rust one's model
    model = getattr(getattr(tokenizer, "backend_tokenizer", None), "model", None)
    unknown_word = getattr(wordpiece, "max_input_chars_per_word", 0) or getattr(model, "max_input_chars_per_word", 0)
    return max(1, longest, unknown_word if isinstance(unknown_word, int) else 0)


def check_prompt_size(texts: list[str], most_chars: int, limit: int, param: str) -> None:
    """Refuse, in the request handler, a prompt too long for the context at any tokenisation: the model worker
    would spend seconds tokenising a megabyte only to refuse it. Whitespace is not counted (tokenisers may drop
    it), so no prompt that could fit is refused."""
    if sum(len(t) for t in texts) <= most_chars:
        return
    chars = sum(len(word) for t in texts for word in t.split())
    if chars > most_chars:
        raise ApiError(
            400, f"this model's maximum context length is {limit} tokens, and the prompt's {chars} characters "
            f"(not counting spaces) are more than {limit} tokens can hold", param=param,
            code="context_length_exceeded",
        )  # fmt: skip


def decoding(req: Sampling) -> Decoding:
    return Decoding(req.temperature, req.top_p, req.stops(), req.seed)
