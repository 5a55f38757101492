"""`icft serve`: an OpenAI-compatible HTTP API on FastAPI + uvicorn.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (``stream: true`` sends server-sent
events, ending with ``data: [DONE]``), ``GET /v1/models``, ``GET /health``. Any OpenAI client works with
``base_url="http://127.0.0.1:8000/v1"``. Decoding is greedy unless the request sets a temperature above 0.

One worker thread runs the model; requests wait in a bounded queue, and a request that finds it full is
answered 503 at once (a client retries later) rather than piling up. Tokenising and retrieval also run in
that thread, so the event loop only moves bytes. Every bad request gets a 4xx JSON error in OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``; a streaming client that hangs up stops its generation.
With retrieval on, each choice carries ``retrieved``: the memory ids and similarity scores in its prompt.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .generate import CallbackStreamer, Completion, Engine, InputError, Prompt, StopFlag, cut_at_stop

DEFAULT_MAX_TOKENS = 256


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


class _Sampling(_Strict):
    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Literal[1] = 1
    stream: bool = False
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None

    def stops(self) -> list[str] | None:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops or [] if s] or None


class ChatRequest(_Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1)]


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


# --- the worker -----------------------------------------------------------------------------------------


@dataclass
class Job:
    """One request's work: `build` makes its prompts (in the worker), then they are generated."""

    build: Callable[[], list[Prompt]]
    max_tokens: int | None
    sampling: dict[str, Any]
    on_text: Callable[[str, bool], None] | None = None  # streaming: called with each piece of text
    ready: Future = field(default_factory=Future)  # the prompts, once built and checked
    done: Future = field(default_factory=Future)  # the completions
    stop_flag: StopFlag = field(default_factory=StopFlag)
    param: str = "messages"  # the request field a too-long prompt is blamed on


class Worker:
    """The one thread that touches the model, fed by a bounded queue."""

    def __init__(self, engine: Engine, queue_size: int):
        self.engine = engine
        self.jobs: queue.Queue[Job] = queue.Queue(maxsize=queue_size)
        threading.Thread(target=self._loop, name="icft-generate", daemon=True).start()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise ApiError(
                503,
                "the server is busy: too many requests waiting; retry shortly",
                code="server_busy",
                type_="server_error",
            ) from None

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                self._run(job)
            except BaseException as error:  # noqa: BLE001 - handed to the waiting request, never kills the thread
                for future in (job.ready, job.done):
                    if not future.done():
                        future.set_exception(error)

    def _run(self, job: Job) -> None:
        if job.stop_flag.stopped:  # the client left while the job waited
            raise ApiError(499, "client closed the request")
        prompts = job.build()
        max_tokens = self._check(prompts, job.max_tokens, job.param)
        job.ready.set_result(prompts)
        sampling = dict(job.sampling)
        if sampling.pop("seed", None) is not None:
            torch.manual_seed(job.sampling["seed"])
        streamer = CallbackStreamer(self.engine.tokenizer, job.on_text) if job.on_text else None
        completions = self.engine.generate(prompts, max_tokens, streamer=streamer, stop_flag=job.stop_flag, **sampling)
        job.done.set_result(completions)

    def _check(self, prompts: list[Prompt], max_tokens: int | None, param: str) -> int:
        limit = self.engine.limit
        if max_tokens is not None and max_tokens >= limit:
            raise ApiError(400, f"max_tokens must be less than the context length, {limit}", param="max_tokens")
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


def create_app(engine: Engine, queue_size: int = 16) -> FastAPI:
    app = FastAPI(title="icft", description="OpenAI-compatible API for an icft model")
    worker = Worker(engine, queue_size)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error_response(ApiError(error.status_code, str(error.detail), code=_snake(str(error.detail))))

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        return _error_response(ApiError(500, f"internal error: {type(error).__name__}: {error}", type_="server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.name, "queued": worker.jobs.qsize(), "context_length": engine.limit}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": engine.name,
                    "object": "model",
                    "created": created,
                    "owned_by": "icft",
                    "context_length": engine.limit,
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = _parse(ChatRequest, await request.body(), engine.name)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        limit = req.max_completion_tokens or req.max_tokens
        room = limit or min(DEFAULT_MAX_TOKENS, engine.limit // 4)  # room left for the answer when fitting facts
        job = Job(lambda: [engine.chat_prompt(messages, min(room, engine.limit - 1))], limit, _sampling(req))
        return await _respond(worker, job, req, "chat.completion", "chatcmpl")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = _parse(CompletionRequest, await request.body(), engine.name)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if req.stream and len(prompts) > 1:
            raise ApiError(400, "stream needs a single prompt", param="prompt")
        room = min(req.max_tokens or min(DEFAULT_MAX_TOKENS, engine.limit // 4), engine.limit - 1)
        build = lambda: [engine.completion_prompt(p, room) for p in prompts]  # noqa: E731
        job = Job(build, req.max_tokens, _sampling(req), param="prompt")
        return await _respond(worker, job, req, "text_completion", "cmpl")

    return app


def _parse(cls: type[_Sampling], body: bytes, name: str) -> Any:
    try:
        req = cls.model_validate_json(body or b"")
    except ValidationError as error:
        first = error.errors()[0]
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


def _sampling(req: _Sampling) -> dict[str, Any]:
    return {"temperature": req.temperature, "top_p": req.top_p, "stop": req.stops(), "seed": req.seed}


async def _respond(worker: Worker, job: Job, req: _Sampling, kind: str, prefix: str) -> Any:
    rid, created, name = f"{prefix}-{uuid.uuid4().hex}", int(time.time()), req.model
    chat = kind == "chat.completion"
    if not req.stream:
        worker.submit(job)
        completions = await _wait(job.done, job)
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
    await _wait(job.ready, job)  # errors in the request (context length) are still a 4xx, not a broken stream
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def event(delta: str | None, finish: str | None = None, extra: dict | None = None) -> str:
        if chat:
            choice = {"index": 0, "delta": {} if delta is None else {"content": delta}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        body = {
            "id": rid,
            "object": chunk_kind,
            "created": created,
            "model": name,
            "choices": [{**choice, **(extra or {})}],
        }
        return f"data: {json.dumps(body)}\n\n"

    async def events() -> AsyncIterator[str]:
        try:
            if chat:
                first = event(None)
                yield first.replace('"delta": {}', '"delta": {"role": "assistant", "content": ""}', 1)
            done = asyncio.ensure_future(asyncio.wrap_future(job.done))
            while True:
                getter = asyncio.ensure_future(pieces.get())
                await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield event(getter.result())
                    continue
                getter.cancel()
                while not pieces.empty():
                    yield event(pieces.get_nowait())
                break
            if done.exception() is not None:
                yield f"data: {json.dumps(ApiError(500, str(done.exception()), type_='server_error').body())}\n\n"
            else:
                completion = done.result()[0]
                yield event(None, text.finish_reason(completion), _retrieved(completion))
            yield "data: [DONE]\n\n"
        finally:
            job.stop_flag.set()  # finished, or the client hung up: stop generating either way

    return StreamingResponse(events(), media_type="text/event-stream")


async def _wait(future: Future, job: Job) -> Any:
    try:
        return await asyncio.wrap_future(future)
    except InputError as error:
        raise ApiError(400, str(error)) from None
    except asyncio.CancelledError:
        job.stop_flag.set()  # the client hung up while waiting
        raise


def _choice(index: int, c: Completion, chat: bool) -> dict[str, Any]:
    content = {"message": {"role": "assistant", "content": c.text}} if chat else {"text": c.text, "logprobs": None}
    return {"index": index, **content, "finish_reason": c.finish_reason, **_retrieved(c)}


def _retrieved(c: Completion) -> dict[str, Any]:
    if not c.retrieved:
        return {}
    return {"retrieved": [{"id": h.id, "score": round(h.score, 6), "source": h.source} for h in c.retrieved]}


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


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 8000, queue_size: int = 16) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); returns the exit code."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: this API has no authentication; anyone who can reach it can use it")
    print(
        f"serving '{engine.name}' at http://{host}:{port}/v1 (context {engine.limit} tokens, "
        f"retrieval {'top-' + str(engine.retrieve_k) if engine.retrieve_k else 'off'}, queue {queue_size})",
        flush=True,
    )
    uvicorn.run(create_app(engine, queue_size), host=host, port=port, log_level="warning")
    return 0
