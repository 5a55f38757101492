"""`icft serve`: an OpenAI-compatible HTTP API on FastAPI + uvicorn, and a chat page at `/`.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` sends server-sent
events, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``, ``GET /`` (the chat page) and
``GET /openapi.json`` (the request and response models). Any OpenAI client works with
``base_url="http://127.0.0.1:8000/v1"``. Decoding is greedy unless the request sets a temperature above 0.

One worker thread runs the model. Requests wait in a bounded queue (a request that finds it full is answered
503 with ``Retry-After`` at once); requests that arrive together are generated together, as one batch with
left padding, each row ending on its own (EOS, its stop strings, its ``max_tokens``), so a greedy answer is
the one it would get alone; requests arriving during a batch join the next one. Tokenising and retrieval run
in the worker too, so the event loop only moves bytes. A client that hangs up, streaming or not, frees its
row at the next token, and a request that runs past ``--request-timeout`` ends with a 504.

Who gets in (`Guard`): the ``Host`` must be one of the server's own names (no DNS rebinding) and an
``Origin``, when sent, the server itself (no other web page can drive it); with ``--api-key`` every
``/v1/*`` route needs ``Authorization: Bearer KEY``; POST bodies must be ``application/json`` and at most
1 MiB. Every refusal and every bad request gets a 4xx JSON error in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``. With retrieval on, each choice carries ``retrieved``:
the memory facts in its prompt (id, similarity score, source, text), a field OpenAI clients ignore.

Slow and many clients (`GuardedH11Protocol`): each request's head and body must arrive within
``REQUEST_READ_S`` of the connection opening (or of the last answer on it), open connections are capped below
the open-files limit (which ``serve`` raises to its hard limit), and at the cap the connection that has waited
longest for its request is dropped, so a trickle of slowloris connections cannot keep ``/health`` or a real
client out. Server logs carry at most one line per kind of error per second (`OncePerSecond`). A prompt with
more characters than the context could hold at the vocabulary's longest token is refused in the request
handler, before the model worker spends time tokenising it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import random
import re
import resource
import socket
import threading
import time
import uuid
from base64 import b64encode
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from .generate import Completion, Engine, InputError, Prompt, Row, StopFlag, cut_at_stop

DEFAULT_MAX_TOKENS = 256
MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than any context here holds, and cheap to refuse early
MAX_PROMPTS = 16  # prompts in one /v1/completions request
MAX_STOP_CHARS = 64  # transformers' stop-string matcher is built per string; long ones cost seconds
MIN_TEMPERATURE = 0.01  # below it, logits / temperature overflow to inf (and sampling is greedy in all but name)
# Before starting a batch that is not full, the worker waits for company: about one token's time of the last
# batch (within these bounds), so a lone request loses one token of latency and requests sent together, which
# reach the worker tens of milliseconds apart on a busy machine, share a batch instead of waiting a whole one.
GATHER_S = (0.01, 0.25)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
STATIC = Path(__file__).with_name("static")
REQUEST_READ_S = 20.0  # a request's head and body must have arrived this long after the connection or last answer
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's timeout_keep_alive)
BACKLOG = 128  # how many connections asyncio accepts at once (each an open file until the protocol drops it)
LISTEN_QUEUE = 4096  # connections the kernel holds until accepted: a full queue drops a SYN, a 1 s wait to retry
MAX_CONNECTIONS = 4096
API_KEY = re.compile(r"[!-~]+")  # printable ASCII without spaces: what an HTTP header carries as typed


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


class _Sampling(_Strict):
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


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: TokenCount | None = None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]


# --- responses (documented in /openapi.json; the handlers build plain dicts of these shapes) -------------


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


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    retrieved: list[Retrieved] | None = None


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
    finish_reason: Literal["stop", "length"]
    retrieved: list[Retrieved] | None = None


class TextCompletion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: Literal["stop", "length"] | None
    retrieved: list[Retrieved] | None = None  # on the last chunk


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
    finish_reason: Literal["stop", "length"] | None
    retrieved: list[Retrieved] | None = None  # on the last chunk


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
    context_length: int


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


ERRORS = {
    400: "malformed JSON, a missing, mistyped or out-of-range field, a prompt over the context, a bad stop string",
    401: "--api-key is set and the request has no `Authorization: Bearer KEY` with it",
    403: "the Host is not this server's, or the Origin is another site",
    404: "the model is not the one this server has",
    413: f"the body is over {MAX_BODY_BYTES} bytes",
    415: "the body is not Content-Type: application/json",
    503: "the queue is full; retry after Retry-After seconds",
    504: "the request ran past --request-timeout",
}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}}},
    503: {"Retry-After": {"schema": {"type": "string"}}},
}


def _responses(ok: type[BaseModel] | None, *codes: int, stream: type[BaseModel] | None = None) -> dict[int | str, Any]:
    out: dict[int | str, Any] = {}
    if ok is not None:
        out[200] = {"model": ok, "description": "the answer"}
        if stream is not None:  # the event schema is filled in by _openapi, which knows where the models go
            out[200]["content"] = {"text/event-stream": {"schema": {"x-icft-chunk": stream.__name__}}}
            out[200]["description"] = (
                "the answer; with `stream: true`, server-sent events: chunks, an error if one happens midway, "
                "then `[DONE]`"
            )
    for code in codes:
        out[code] = {"model": ErrorBody, "description": ERRORS[code]}
        if code in ERROR_HEADERS:
            out[code]["headers"] = ERROR_HEADERS[code]
    return out


# --- errors ---------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _timeout_error(seconds: float) -> ApiError:
    return ApiError(
        504, f"the request ran past the server's --request-timeout of {seconds:g} s and was stopped",
        code="timeout", type_="server_error",
    )  # fmt: skip


def _client_gone() -> ApiError:
    return ApiError(499, "client closed the request", code="client_closed")


# --- who gets in ----------------------------------------------------------------------------------------


def own_hosts(bind: str, extra: list[str] | None = None) -> set[str]:
    """The names a Host header may carry besides any IP address: loopback names, the bound name, this machine's
    names if bound to all addresses, and `--allow-host` names (e.g. a reverse proxy's)."""
    names = {*LOOPBACK, bind, *(extra or [])}
    if bind in ("0.0.0.0", "::", ""):
        names |= {socket.gethostname(), socket.getfqdn()}
    return {n.lower().strip("[]") for n in names if n}


def _hostname(host: str) -> str:
    """`name`, `name:port`, `[v6]` or `[v6]:port` -> the name, lower-case, without brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_api_key(key: str | None) -> None:
    """An API key must be printable ASCII without spaces: clients send it UTF-8 encoded in a header that the server
    reads as latin-1, so any other character could never match."""
    if key == "":
        raise InputError("--api-key is empty: give a key, or leave the option out to serve without one")
    if key is not None and not API_KEY.fullmatch(key):
        raise InputError("--api-key (or ICFT_API_KEY): use printable ASCII letters, digits and signs only, no "
                         "spaces or other characters: an HTTP header does not carry those as typed, so the key "
                         "could never match")  # fmt: skip


def _same_origin(origin: str, host: str) -> bool:
    """The Origin of a page served by this server: http, or https through a TLS proxy that keeps the Host (the
    server may not see the proxy's scheme), and exactly the Host the request was sent to. Any other scheme
    (`evil://`, `file://`, `null`) is another origin."""
    host = host.strip().lower()
    return origin.strip().lower() in (f"http://{host}", f"https://{host}")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware run before any route: Host, Origin, API key, Content-Type and body size.

    Starlette's TrustedHostMiddleware answers a foreign Host with a plain-text 400 and has no Origin check; this
    answers both with a 403 in OpenAI's error shape. A Host that is an IP address is always allowed: DNS
    rebinding needs a name the attacker controls.
    """

    def __init__(self, app: Any, hosts: set[str], api_key: str | None, max_body: int = MAX_BODY_BYTES):
        check_api_key(api_key)
        self.app, self.hosts, self.max_body = app, hosts, max_body
        self.key = api_key.encode("ascii") if api_key else None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._check(scope)
        except ApiError as error:
            return await error.response()(scope, receive, send)
        if scope["method"] == "POST":
            receive = self._limited(receive)
        await self.app(scope, receive, send)

    def _check(self, scope: dict) -> None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        name = _hostname(host)
        if name not in self.hosts and not _is_address(name):
            raise ApiError(403, f"Host {host!r} is not this server's name or address", code="forbidden_host")
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            raise ApiError(403, f"requests from the web page at {origin!r} are refused", code="forbidden_origin")
        path = scope["path"]
        if self.key is not None and (path == "/v1" or path.startswith("/v1/")):
            given = headers.get("authorization", "")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.key):
                what = "Incorrect API key provided" if given else "Missing API key: send Authorization: Bearer KEY"
                raise ApiError(401, what, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if scope["method"] != "POST":
            return
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise ApiError(
                415, f"Content-Type must be application/json, not {media or 'missing'!r}",
                code="unsupported_media_type",
            )  # fmt: skip
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            raise self._too_large()

    def _limited(self, receive: Callable) -> Callable:
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # a chunked body without Content-Length
                raise self._too_large()
            return message

        return counted

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is over the limit of {self.max_body} bytes", code="body_too_large")


# --- the worker -----------------------------------------------------------------------------------------


@dataclass(eq=False)  # a job is itself, not its fields: it is a dict key and is removed from a deque
class Job:
    """One request's work: `build` makes its prompts (in the worker), then they are generated."""

    build: Callable[[], list[Prompt]]
    max_tokens: int | None
    sampling: dict[str, Any]  # temperature, top_p, stop, seed
    timeout: float
    rows: int = 1  # prompts in the request
    on_text: Callable[[str, bool], None] | None = None  # streaming: called with each piece of text
    param: str = "messages"  # the request field a too-long prompt is blamed on
    ready: Future = field(default_factory=Future)  # the prompts, once built and checked
    done: Future = field(default_factory=Future)  # the completions
    stop_flag: StopFlag = field(default_factory=StopFlag)  # set when the client leaves or the time is up
    deadline: float = 0.0

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def key(self) -> tuple:
        """Jobs with equal keys can share a batch: all greedy ones; sampled ones with the same settings."""
        s = self.sampling
        if s["temperature"] == 0:
            return ("greedy",)
        if s["seed"] is not None:
            return ("seeded", id(self))  # alone, so that the seed decides its tokens
        return ("sample", s["temperature"], s["top_p"])


def _resolve(future: Future, result: Any = None, error: BaseException | None = None) -> None:
    """Settle a future the request may have given up on (then it is cancelled, and that is fine)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _fail(job: Job, error: BaseException) -> None:
    for future in (job.ready, job.done):
        _resolve(future, error=error)


class Worker:
    """The one thread that touches the model: takes waiting jobs in batches from a bounded waiting line."""

    def __init__(self, engine: Engine, queue_size: int, batch_size: int = 8, start: bool = True):
        self.engine, self.queue_size, self.batch_size = engine, queue_size, batch_size
        self.waiting: deque[Job] = deque()
        self.changed = threading.Condition()
        self.running = 0  # rows in the batch being generated
        self.batches = 0  # batches generated so far
        self.step_s = 0.0  # seconds per token of the last batch
        self.thread = threading.Thread(target=self._loop, name="icft-generate", daemon=True)
        if start:
            self.thread.start()

    def queued(self) -> int:
        return len(self.waiting)

    def submit(self, job: Job) -> None:
        with self.changed:
            if len(self.waiting) >= self.queue_size:
                raise ApiError(
                    503, "the server is busy: too many requests waiting; retry shortly",
                    code="server_busy", type_="server_error", headers={"Retry-After": "1"},
                )  # fmt: skip
            self.waiting.append(job)
            self.changed.notify()

    def withdraw(self, job: Job) -> None:
        """Take a job out of the line (its client left or its time ran out): its slot is free at once."""
        with self.changed:
            if job in self.waiting:
                self.waiting.remove(job)
                _fail(job, _client_gone())

    def _loop(self) -> None:
        while True:
            batch = self._take()
            try:
                self._run(batch)
            except BaseException as error:  # noqa: BLE001 - handed to the waiting requests, never kills the thread
                for job in batch:
                    _fail(job, error)

    def _take(self) -> list[Job]:
        """The oldest waiting job and those that can share its batch (same decoding), up to batch_size rows."""
        with self.changed:
            while not self.waiting:
                self.changed.wait()
            first = self.waiting.popleft()
            key = first.key()
            until = time.monotonic() + min(max(self.step_s, GATHER_S[0]), GATHER_S[1])
            alone = key[0] == "seeded"
            while not alone and self._fits(first, key) < self.batch_size and (left := until - time.monotonic()) > 0:
                self.changed.wait(left)  # woken by each new request
            batch, rows = [first], first.rows
            for job in list(self.waiting):
                if job.key() == key and rows + job.rows <= self.batch_size:
                    batch.append(job)
                    rows += job.rows
                    self.waiting.remove(job)
        return batch

    def _fits(self, first: Job, key: tuple) -> int:
        """Rows a batch led by `first` would have now."""
        return first.rows + sum(job.rows for job in self.waiting if job.key() == key)

    def _run(self, batch: list[Job]) -> None:
        rows, owners = [], []
        for job in batch:
            try:
                prompts, max_tokens, criteria = self._prepare(job)
            except BaseException as error:  # noqa: BLE001 - this request's error, not the batch's
                _fail(job, error)
                continue
            _resolve(job.ready, prompts)
            stops = job.sampling["stop"]
            for k, prompt in enumerate(prompts):
                on_text = job.on_text if k == 0 else None
                rows.append(Row(prompt, max_tokens, stops, criteria, on_text, job.stop_flag, job.deadline))
                owners.append(job)
        if not rows:
            return
        sampling = owners[0].sampling
        if sampling["seed"] is not None:
            torch.manual_seed(sampling["seed"])
        self.running, self.batches = len(rows), self.batches + 1
        started = time.monotonic()
        try:
            completions = self.engine.generate_rows(rows, sampling["temperature"], sampling["top_p"])
        finally:
            self.running = 0
        steps = max(c.completion_tokens for c in completions) + 1  # + the prompt's forward pass
        self.step_s = (time.monotonic() - started) / steps
        for job in dict.fromkeys(owners):
            _resolve(job.done, [c for c, owner in zip(completions, owners) if owner is job])

    def _prepare(self, job: Job) -> tuple[list[Prompt], int, Any]:
        if job.stop_flag.stopped:  # the client left while the job waited
            raise _client_gone()
        if time.monotonic() > job.deadline:
            raise _timeout_error(job.timeout)
        prompts = job.build()
        max_tokens = self._check(prompts, job.max_tokens, job.param)
        try:
            criteria = self.engine.stop_criteria(job.sampling["stop"])
        except InputError as error:
            raise ApiError(400, str(error), param="stop", code="invalid_stop") from None
        return prompts, max_tokens, criteria

    def _check(self, prompts: list[Prompt], max_tokens: int | None, param: str) -> int:
        limit = self.engine.limit
        if max_tokens is not None and max_tokens >= limit:
            raise ApiError(
                400, f"max_tokens must be less than the context length, {limit}", param="max_tokens",
                code="invalid_value",
            )  # fmt: skip
        longest = max(len(p.ids) for p in prompts)
        if max_tokens is None:
            max_tokens = min(DEFAULT_MAX_TOKENS, limit - longest)
        if longest + max(max_tokens, 1) > limit:
            raise ApiError(
                400,
                f"this model's maximum context length is {limit} tokens, but the prompt has "
                f"{longest} and {max_tokens} more were asked for (max_tokens)",
                param=param,
                code="context_length_exceeded",
            )
        return max_tokens


# --- the app --------------------------------------------------------------------------------------------


def create_app(
    engine: Engine,
    queue_size: int = 16,
    *,
    api_key: str | None = None,
    hosts: set[str] | None = None,
    batch_size: int = 8,
    request_timeout: float = 300.0,
    max_body: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The app; `hosts` are the names a Host header may carry (default: loopback names, see `own_hosts`)."""
    check_api_key(api_key)  # here, not only in Guard: middleware is built at the first request
    app = FastAPI(
        title="icft",
        description="OpenAI-compatible API for an icft model",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    worker = Worker(engine, queue_size, batch_size)
    app.state.worker = worker
    created = int(time.time())
    most_chars = engine.limit * longest_token_chars(engine.tokenizer)  # no prompt of more characters can fit
    app.add_middleware(Guard, hosts=hosts or own_hosts("127.0.0.1"), api_key=api_key, max_body=max_body)
    _answer_errors_openai_style(app)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        html, csp = _page()
        headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"}
        headers["Referrer-Policy"] = "no-referrer"
        return HTMLResponse(html, headers=headers)

    @app.get("/health", responses=_responses(Health, 403))
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": engine.name,
            "queued": worker.queued(),
            "running": worker.running,
            "batches": worker.batches,
            "context_length": engine.limit,
        }

    @app.get("/v1/models", responses=_responses(ModelList, 401, 403))
    async def models() -> dict[str, Any]:
        card = {"id": engine.name, "object": "model", "created": created, "owned_by": "icft"}
        return {"object": "list", "data": [{**card, "context_length": engine.limit}]}

    post_errors = (400, 401, 403, 404, 413, 415, 503, 504)

    @app.post("/v1/chat/completions", responses=_responses(ChatCompletion, *post_errors, stream=ChatCompletionChunk))
    async def chat(request: Request) -> Any:
        req = _parse(ChatRequest, await request.body(), engine.name)
        _check_limit(req.max_tokens, "max_tokens", engine.limit)  # both, though max_completion_tokens wins
        _check_limit(req.max_completion_tokens, "max_completion_tokens", engine.limit)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        _check_prompt_size([m["content"] for m in messages], most_chars, engine.limit, "messages")
        limit = req.max_completion_tokens or req.max_tokens
        room = limit or min(DEFAULT_MAX_TOKENS, engine.limit // 4)  # room left for the answer when fitting facts
        build = lambda: [engine.chat_prompt(messages, min(room, engine.limit - 1))]  # noqa: E731
        job = Job(build, limit, _sampling(req), request_timeout)
        return await _respond(worker, job, req, request, "chat.completion", "chatcmpl")

    @app.post("/v1/completions", responses=_responses(TextCompletion, *post_errors, stream=TextCompletionChunk))
    async def completions(request: Request) -> Any:
        req = _parse(CompletionRequest, await request.body(), engine.name)
        _check_limit(req.max_tokens, "max_tokens", engine.limit)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        for prompt in prompts:
            _check_prompt_size([prompt], most_chars, engine.limit, "prompt")
        if req.stream and len(prompts) > 1:
            raise ApiError(400, "stream needs a single prompt", param="prompt", code="invalid_value")
        room = min(req.max_tokens or min(DEFAULT_MAX_TOKENS, engine.limit // 4), engine.limit - 1)
        build = lambda: [engine.completion_prompt(p, room) for p in prompts]  # noqa: E731
        job = Job(build, req.max_tokens, _sampling(req), request_timeout, rows=len(prompts), param="prompt")
        return await _respond(worker, job, req, request, "text_completion", "cmpl")

    app.openapi = lambda: _openapi(app, engine, api_key is not None)
    return app


def _answer_errors_openai_style(app: FastAPI) -> None:
    """Every error, ours, Starlette's (404, 405) or an unexpected one, as OpenAI's JSON error body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        # keeps the headers: a 405 carries Allow
        detail = str(error.detail)
        return ApiError(error.status_code, detail, code=_snake(detail), headers=error.headers).response()

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(error).__name__}: {error}", type_="server_error").response()


def _openapi(app: FastAPI, engine: Engine, keyed: bool) -> dict[str, Any]:
    """FastAPI's schema plus the request bodies (the routes read the raw body, to answer errors OpenAI's way)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version="1", description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionChunk, TextCompletionChunk):
        _add_schema(components, model, "serialization")
    for path, model in (("/v1/chat/completions", ChatRequest), ("/v1/completions", CompletionRequest)):
        event = schema["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"]
        event["schema"] = _event_schema(event["schema"]["x-icft-chunk"])
        body = _add_schema(components, model, "validation")
        body["properties"]["model"] = {"type": "string", "enum": [engine.name], "title": "Model"}
        for limit in ("max_tokens", "max_completion_tokens"):
            if limit in body["properties"]:
                body["properties"][limit]["anyOf"][0]["maximum"] = engine.limit - 1
        ref = {"$ref": f"#/components/schemas/{model.__name__}"}
        content = {"application/json": {"schema": ref}}
        schema["paths"][path]["post"]["requestBody"] = {"required": True, "content": content}
    if keyed:
        schema["components"]["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
        for path, operations in schema["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"apiKey": []}]
    app.openapi_schema = schema
    return schema


def _add_schema(components: dict[str, Any], model: type[BaseModel], mode: str) -> dict[str, Any]:
    body = model.model_json_schema(ref_template="#/components/schemas/{model}", mode=mode)
    components.update(body.pop("$defs", {}))
    components[model.__name__] = body
    return body


def _event_schema(chunk: str) -> dict[str, Any]:
    """One server-sent event (OpenAPI 3.1 reads a text/event-stream schema per event): a JSON chunk or error in
    `data`, or the closing `[DONE]`."""
    payload = {"anyOf": [{"$ref": f"#/components/schemas/{chunk}"}, {"$ref": "#/components/schemas/ErrorBody"}]}
    data = {"anyOf": [{"const": "[DONE]"}, {"contentMediaType": "application/json", "contentSchema": payload}]}
    return {"type": "object", "required": ["data"], "properties": {"data": {"type": "string", **data}}}


@lru_cache(maxsize=1)
def _page() -> tuple[str, str]:
    """The chat page and its Content-Security-Policy: its own inline script and style, by hash, and nothing else."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
        return " ".join(f"'sha256-{b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies)

    csp = (
        f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html, csp


def _parse(cls: type[_Sampling], body: bytes, name: str) -> Any:
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


def _check_limit(value: int | None, param: str, limit: int) -> None:
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


def _check_prompt_size(texts: list[str], most_chars: int, limit: int, param: str) -> None:
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


def _sampling(req: _Sampling) -> dict[str, Any]:
    return {"temperature": req.temperature, "top_p": req.top_p, "stop": req.stops(), "seed": req.seed}


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _settle(future: Future, job: Job, request: Request, worker: Worker) -> Any:
    """The future's result; if the client leaves or the time runs out first, the job is stopped (its slot freed)."""
    waiter = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        finished, _ = await asyncio.wait(
            {waiter, gone}, timeout=max(0.0, job.deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        job.stop_flag.set()
        worker.withdraw(job)
        raise
    finally:
        gone.cancel()
    if waiter in finished:
        try:
            return waiter.result()
        except InputError as error:
            raise ApiError(400, str(error), param=job.param, code="invalid_value") from None
    job.stop_flag.set()  # a running row ends at its next token
    worker.withdraw(job)  # a waiting one leaves the line
    waiter.cancel()
    raise _client_gone() if gone in finished else _timeout_error(job.timeout)


async def _respond(worker: Worker, job: Job, req: _Sampling, request: Request, kind: str, prefix: str) -> Any:
    rid, created, name = f"{prefix}-{uuid.uuid4().hex}", int(time.time()), req.model
    chat = kind == "chat.completion"
    if not req.stream:
        worker.submit(job)
        completions = await _settle(job.done, job, request, worker)
        if any(c.finish_reason == "timeout" for c in completions):
            raise _timeout_error(job.timeout)
        choices = [_choice(i, c, chat) for i, c in enumerate(completions)]
        prompt_tokens = sum(c.prompt_tokens for c in completions)
        completion_tokens = sum(c.completion_tokens for c in completions)
        return {
            "id": rid,
            "object": kind,
            "created": created,
            "model": name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    text = StopText(job.sampling["stop"])

    def on_text(piece: str, end: bool) -> None:  # runs in the worker thread
        out = text.feed(piece, end)
        if out:
            loop.call_soon_threadsafe(pieces.put_nowait, out)
        if text.stopped:
            job.stop_flag.set()

    job.on_text = on_text
    worker.submit(job)
    await _settle(job.ready, job, request, worker)  # errors in the request (context length) are still a 4xx
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta: str | None, finish: str | None = None, extra: dict | None = None) -> str:
        if chat:
            choice = {"index": 0, "delta": {} if delta is None else {"content": delta}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        choice.update(extra or {})
        body = {"id": rid, "object": chunk_kind, "created": created, "model": name, "choices": [choice]}
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        done = asyncio.wrap_future(job.done)
        try:
            if chat:
                first = event(None)
                yield first.replace('"delta": {}', '"delta": {"role": "assistant", "content": ""}', 1)
            while True:
                getter = asyncio.ensure_future(pieces.get())
                left = max(0.0, job.deadline - time.monotonic())
                await asyncio.wait({getter, done}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield event(getter.result())
                    continue
                getter.cancel()
                if not done.done():  # the time is up
                    yield f"data: {json.dumps(_timeout_error(job.timeout).body())}\n\n"
                    break
                while not pieces.empty():
                    yield event(pieces.get_nowait())
                if done.exception() is not None:
                    yield f"data: {json.dumps(ApiError(500, str(done.exception()), type_='server_error').body())}\n\n"
                elif done.result()[0].finish_reason == "timeout":
                    yield f"data: {json.dumps(_timeout_error(job.timeout).body())}\n\n"
                else:
                    completion = done.result()[0]
                    yield event(None, text.finish_reason(completion), _retrieved(completion))
                break
            yield "data: [DONE]\n\n"
        finally:
            job.stop_flag.set()  # finished, the time is up, or the client hung up: stop generating either way
            if not done.done():
                done.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _choice(index: int, c: Completion, chat: bool) -> dict[str, Any]:
    content = {"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text, "logprobs": None}
    return {"index": index, **content, "finish_reason": c.finish_reason, **_retrieved(c)}


def _retrieved(c: Completion) -> dict[str, Any]:
    return {"retrieved": [h.to_json() for h in c.retrieved]} if c.retrieved else {}


def _snake(text: str) -> str:
    return "_".join(text.lower().split())


class StopText:
    """Streamed text cut at the first stop string: holds back just enough characters to see one coming."""

    def __init__(self, stop: list[str] | None):
        self.stop = stop or []
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def feed(self, piece: str, end: bool) -> str:
        if self.stopped:
            return ""
        if not self.sent:
            piece = piece.lstrip()  # as the non-streaming text, which is stripped
        self.text += piece
        cut, self.stopped = cut_at_stop(self.text, self.stop)
        upto = len(cut) if self.stopped or end else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent : upto], max(self.sent, upto)
        return out

    def finish_reason(self, completion: Completion) -> str:
        return "stop" if self.stopped else completion.finish_reason


# --- slow and many clients -------------------------------------------------------------------------------


def raise_open_files_limit(most: int = 65536) -> int:
    """Raise the soft limit on open files to the hard one (at most `most`): each connection is an open file.
    Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return most
    want = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):  # not allowed here: keep the soft limit
            pass
    return soft


def connection_cap(open_files: int) -> int:
    """Open connections allowed under an open-files limit: the files open now (model, libraries, the event loop)
    and a burst of connections accepted at once (asyncio takes up to BACKLOG per wake-up, before any is dropped)
    stay below it, so accept() never fails for want of a file (which pauses accepting for a second)."""
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    return max(8, min(MAX_CONNECTIONS, open_files - in_use - 3 * BACKLOG - 32))


def guarded_protocol(cap: int, read_s: float = REQUEST_READ_S) -> type:
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline for reading each request and a cap on open connections.

    uvicorn alone waits for a request's head forever (its keep-alive timer stops at the first byte), so clients
    sending a byte every few seconds hold their connections, and the server's open files, indefinitely. Here a
    connection still reading its request (head or body) `read_s` after it opened, or after its last answer, is
    closed (a little sooner, at random in the second half of `read_s`, so a burst is not closed as one); and past
    `cap` open connections the one that has waited longest for its request is dropped (the newest, if every other
    is busy with a request), so a fast client still gets in and is answered.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    reading: dict[Any, None] = {}  # connections reading a request, longest waiting first (dicts keep order)

    class GuardedH11Protocol(H11Protocol):
        read_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._start_reading()
            if len(self.connections) > cap:
                oldest = next(iter(reading))  # this one, when every other connection is busy with a request
                reading.pop(oldest)
                oldest.transport.abort()

        def connection_lost(self, exc: Exception | None) -> None:
            self._done_reading()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY):  # the whole request is in
                self._done_reading()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start the next request on a kept-alive connection
            if not self.transport.is_closing() and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
                self._start_reading()

        def _start_reading(self) -> None:
            self._done_reading()
            reading[self] = None
            # spread over read_s/2..read_s: connections opened together (a burst) are not all closed together,
            # which would bring their reopening back as one burst that a real client queues behind
            self.read_timer = self.loop.call_later(read_s * (0.5 + random.random() / 2), self._read_too_slow)

        def _done_reading(self) -> None:
            reading.pop(self, None)
            if self.read_timer is not None:
                self.read_timer.cancel()
                self.read_timer = None

        def _read_too_slow(self) -> None:
            self.read_timer = None
            reading.pop(self, None)
            if not self.transport.is_closing():
                self.transport.abort()

    return GuardedH11Protocol


class OncePerSecond(logging.Filter):
    """At most one log line per kind of record (logger, message, exception type) per second. The first record of a
    kind keeps its traceback; later ones are one line, counting those left out. Under a flood of failing
    connections (out of open files, say) the log grows by a line a second, not by megabytes."""

    def __init__(self, every: float = 1.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.every, self.clock = every, clock
        self.last: dict[tuple, float] = {}
        self.skipped: dict[tuple, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[0] if record.exc_info else None
        kind = (record.name, str(record.msg)[:200], getattr(error, "__name__", None))
        now = self.clock()
        first = kind not in self.last
        if not first and now - self.last[kind] < self.every:
            self.skipped[kind] = self.skipped.get(kind, 0) + 1
            return False
        if len(self.last) > 1000:  # kinds made of varying text: forget them rather than grow
            self.last.clear()
            self.skipped.clear()
        self.last[kind] = now
        skipped = self.skipped.pop(kind, 0)
        if not first and (record.exc_info or skipped):
            message = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            record.msg, record.args, record.exc_info, record.exc_text = message, (), None, None
            if skipped:
                record.msg += f" [{skipped} more like this left out]"
        return True


def limit_server_logs() -> None:
    """Rate-limit uvicorn's and asyncio's error logs (asyncio's go to stderr through a handler of its own)."""
    once = OncePerSecond()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).addFilter(once)
    loop_log = logging.getLogger("asyncio")
    if not loop_log.handlers:
        loop_log.addHandler(logging.StreamHandler())
        loop_log.propagate = False
    loop_log.addFilter(once)


def bind_warning(host: str, api_key: str | None) -> str | None:
    """What `icft serve` says when it listens beyond this machine without a key; None when all is well."""
    if host in LOOPBACK or api_key:
        return None
    return (
        f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model; "
        "set --api-key KEY (or ICFT_API_KEY)"
    )


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    queue_size: int = 16,
    *,
    api_key: str | None = None,
    allow_hosts: list[str] | None = None,
    batch_size: int = 8,
    request_timeout: float = 300.0,
) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); returns the exit code."""
    import uvicorn

    check_api_key(api_key)
    cap = connection_cap(raise_open_files_limit())
    warning = bind_warning(host, api_key)
    if warning:
        print(warning, flush=True)
    hosts = own_hosts(host, allow_hosts)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving '{engine.name}' at http://{shown}:{port}/ (chat page) and /v1 (API; "
        f"{'API key required' if api_key else 'no API key'}); context {engine.limit} tokens, retrieval "
        f"{'top-' + str(engine.retrieve_k) if engine.retrieve_k else 'off'}, batches of up to {batch_size}, "
        f"queue {queue_size}, request timeout {request_timeout:g} s, at most {cap} connections",
        flush=True,
    )
    app = create_app(
        engine, queue_size, api_key=api_key, hosts=hosts, batch_size=batch_size, request_timeout=request_timeout
    )
    # limit_concurrency is uvicorn's own cap (a 503 once connections or running requests pass it): above what the
    # protocol's cap lets through, with room for a burst of accepted connections not yet dropped
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=guarded_protocol(cap),
                            limit_concurrency=cap + 3 * BACKLOG, backlog=BACKLOG,
                            timeout_keep_alive=KEEP_ALIVE_S)  # fmt: skip
    limit_server_logs()  # after Config, which sets up uvicorn's logging
    _server_class()(config).run()
    return 0


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server with a long listen queue: asyncio listens with the backlog it also accepts in one
        go (kept short, see BACKLOG), so the queue is lengthened afterwards on the same socket."""

        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            for server in getattr(self, "servers", []):
                for listening in server.sockets:
                    with socket.socket(fileno=os.dup(listening.fileno())) as same:
                        same.listen(LISTEN_QUEUE)

    return Server
