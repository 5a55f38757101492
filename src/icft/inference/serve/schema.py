"""The API's request and response models: requests are validated with them, and every answer, chunk and error is
built from them (and documented by them in /openapi.json).

icft's own fields (`retrieved`, `no_fact_passed_floor`) and the chunk deltas' fields are left out of the JSON when
they are None, so an answer keeps OpenAI's shape and a delta carries only what changed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ..generate import Completion

MAX_PROMPTS = 16  # prompts in one /v1/completions request
MAX_STOP_CHARS = 64  # transformers' stop-string matcher is built per string; long ones cost seconds
MIN_TEMPERATURE = 0.01  # below it, logits / temperature overflow to inf (and sampling is greedy in all but name)

# --- requests -------------------------------------------------------------------------------------------


class _Strict(BaseModel):
    # strict: "5" is not a number and 1 is not a string; unknown fields (logit_bias, user, ...) are ignored
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


def _integral(value: Any) -> Any:
    """5.0 is the integer 5 in JSON and JSON Schema; strict mode would refuse it (and still refuses "5", 5.5)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


TokenCount = Annotated[int, Field(ge=1), BeforeValidator(_integral)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**64 - 1), BeforeValidator(_integral)]  # what torch.manual_seed takes


def _greedy_or_warm(t: float) -> float:
    if 0 < t < MIN_TEMPERATURE:
        raise PydanticCustomError(
            "temperature_too_low",
            "temperature must be 0 (greedy) or from {low} to 2; {t} is too small to sample with",
            {"low": MIN_TEMPERATURE, "t": t},
        )
    return t


Temperature = Annotated[
    float,
    Field(
        ge=0.0,
        le=2.0,
        description=f"0 is greedy decoding; sampling takes {MIN_TEMPERATURE} to 2",
        json_schema_extra={"not": {"exclusiveMinimum": 0, "exclusiveMaximum": MIN_TEMPERATURE}},
    ),
    AfterValidator(_greedy_or_warm),
]
StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]


class Sampling(_Strict):
    """What both completion requests share: the model, the answer's length, and how it is decoded."""

    model: str
    max_tokens: TokenCount | None = None
    temperature: Temperature = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[Literal[1], BeforeValidator(_integral)] = 1
    stream: bool = False
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    seed: Seed | None = None

    def stops(self) -> list[str] | None:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops or [] if s] or None


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]


# --- responses ------------------------------------------------------------------------------------------

Finish = Literal["stop", "length"]
_LEFT_OUT_WHEN_NONE = Field(exclude_if=lambda value: value is None)


class Retrieved(BaseModel):
    """A memory fact put into the prompt: icft's extra field, which OpenAI clients ignore."""

    id: str
    score: float
    source: str
    text: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, completions: list[Completion]) -> Usage:
        prompt, completion = sum(c.prompt_tokens for c in completions), sum(c.completion_tokens for c in completions)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def retrieved_facts(completion: Completion) -> list[Retrieved] | None:
    """The facts in a completion's prompt, or None (the field left out) when there were none."""
    return [Retrieved.model_validate(hit.to_json()) for hit in completion.retrieved] or None


# icft's fields on a choice (on a stream's last chunk): the memory facts in its prompt, or, when retrieval was on
# and no fact reached the run's relevance floor, that floor
RetrievedFacts = Annotated[list[Retrieved] | None, _LEFT_OUT_WHEN_NONE]
UnmetFloor = Annotated[float | None, _LEFT_OUT_WHEN_NONE]


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Finish
    retrieved: RetrievedFacts = None
    no_fact_passed_floor: UnmetFloor = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Finish
    retrieved: RetrievedFacts = None
    no_fact_passed_floor: UnmetFloor = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Delta(BaseModel):
    role: Annotated[Literal["assistant"] | None, _LEFT_OUT_WHEN_NONE] = None  # on the first chunk
    content: Annotated[str | None, _LEFT_OUT_WHEN_NONE] = None  # none on the last chunk


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Finish | None
    retrieved: RetrievedFacts = None  # on the last chunk
    no_fact_passed_floor: UnmetFloor = None  # on the last chunk


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]


class TextChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Finish | None
    retrieved: RetrievedFacts = None  # on the last chunk
    no_fact_passed_floor: UnmetFloor = None  # on the last chunk


class TextCompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChunkChoice]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int  # prompt + answer tokens this server takes
    trained_length: int | None  # tokens per sequence the run trained on; None for a model without a run's format


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    queued: int  # requests waiting for a batch
    running: int  # prompts being generated now
    batches: int  # batches generated since the start
    context_length: int
    trained_length: int | None
