"""The app (`create_app`): the chat page at `/`, `GET /health`, `GET /v1/models`, `POST /v1/chat/completions` and
`POST /v1/completions`, behind the access checks and the request log; and `serve`, which runs it with uvicorn."""

from __future__ import annotations

import hashlib
import re
import time
from base64 import b64encode
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..generate import Engine
from .access import MAX_BODY_BYTES, Guard, bind_warning, check_api_key, own_hosts
from .checks import check_limit, check_prompt_size, decoding, longest_token_chars, parse_request
from .connections import BACKLOG, KEEP_ALIVE_S, connection_cap, guarded_protocol, raise_open_files_limit, server_class
from .errors import ApiError, answer_errors_openai_style
from .logs import RequestLog, limit_server_logs, log_requests
from .openapi import documented, openapi_schema
from .responses import Reply, answer
from .schema import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    CompletionRequest,
    Health,
    ModelCard,
    ModelList,
    TextCompletion,
    TextCompletionChunk,
)
from .worker import DEFAULT_MAX_TOKENS, Job, Worker

STATIC = Path(__file__).parent.parent / "static"  # the chat page
POST_ERRORS = (400, 401, 403, 404, 413, 415, 503, 504)


@dataclass(frozen=True)
class Limits:
    """How much the server takes on."""

    queue_size: int = 16  # requests waiting for a batch; one more is answered 503
    batch_size: int = 8  # prompts generated together
    request_timeout: float = 300.0  # seconds; a request still running then ends with 504 and frees its slot
    max_body: int = MAX_BODY_BYTES


def create_app(
    engine: Engine, limits: Limits | None = None, *, api_key: str | None = None, hosts: set[str] | None = None
) -> FastAPI:
    """The app; `hosts` are the names a Host header may carry (default: loopback names, see `own_hosts`)."""
    limits = limits or Limits()
    check_api_key(api_key)  # here, not only in Guard: middleware is built at the first request
    app = FastAPI(
        title="icft",
        description="OpenAI-compatible API for an icft model",
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    worker = Worker(engine, limits.queue_size, limits.batch_size)
    app.state.worker = worker
    app.add_middleware(Guard, hosts=hosts or own_hosts("127.0.0.1"), api_key=api_key, max_body=limits.max_body)
    app.add_middleware(RequestLog)  # added last, so around Guard: a refused request has its line too
    answer_errors_openai_style(app)
    routes = Routes(engine, worker, limits.request_timeout)
    app.get("/", include_in_schema=False)(page)
    app.get("/health", responses=documented(Health, 403))(routes.health)
    app.get("/v1/models", responses=documented(ModelList, 401, 403))(routes.models)
    chat_docs = documented(ChatCompletion, *POST_ERRORS, stream=ChatCompletionChunk)
    app.post("/v1/chat/completions", responses=chat_docs)(routes.chat)
    text_docs = documented(TextCompletion, *POST_ERRORS, stream=TextCompletionChunk)
    app.post("/v1/completions", responses=text_docs)(routes.completions)
    app.openapi = lambda: openapi_schema(app, engine, api_key is not None)
    return app


def trained_length(engine: Engine) -> int | None:
    """Tokens per sequence the served run trained on (None when unknown, or for a stand-in engine in tests)."""
    return getattr(engine, "trained_length", None)


class Routes:
    """The routes' work: a request is checked here, in the event loop, then handed to the worker as a job."""

    def __init__(self, engine: Engine, worker: Worker, request_timeout: float):
        self.engine, self.worker, self.request_timeout = engine, worker, request_timeout
        self.created = int(time.time())
        self.most_chars = engine.limit * longest_token_chars(engine.tokenizer)  # no prompt of more characters fits

    async def health(self) -> JSONResponse:
        engine, worker = self.engine, self.worker
        health = Health(status="ok", model=engine.name, queued=worker.queued(), running=worker.running,
                        batches=worker.batches, context_length=engine.limit,
                        trained_length=trained_length(engine))  # fmt: skip
        return JSONResponse(health.model_dump(mode="json"))

    async def models(self) -> JSONResponse:
        card = ModelCard(id=self.engine.name, object="model", created=self.created, owned_by="icft",
                         context_length=self.engine.limit, trained_length=trained_length(self.engine))  # fmt: skip
        return JSONResponse(ModelList(object="list", data=[card]).model_dump(mode="json"))

    async def chat(self, request: Request) -> Response:
        engine = self.engine
        req = parse_request(ChatRequest, await request.body(), engine.name)
        check_limit(req.max_tokens, "max_tokens", engine.limit)  # both, though max_completion_tokens wins
        check_limit(req.max_completion_tokens, "max_completion_tokens", engine.limit)
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        check_prompt_size([m["content"] for m in messages], self.most_chars, engine.limit, "messages")
        limit = req.max_completion_tokens or req.max_tokens
        room = limit or min(DEFAULT_MAX_TOKENS, engine.limit // 4)  # room left for the answer when fitting facts
        build = lambda: [engine.chat_prompt(messages, min(room, engine.limit - 1))]  # noqa: E731
        job = Job(build, limit, decoding(req), self.request_timeout)
        return await answer(self.worker, job, request, Reply(chat=True, model=req.model), req.stream)

    async def completions(self, request: Request) -> Response:
        engine = self.engine
        req = parse_request(CompletionRequest, await request.body(), engine.name)
        check_limit(req.max_tokens, "max_tokens", engine.limit)
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        for prompt in prompts:
            check_prompt_size([prompt], self.most_chars, engine.limit, "prompt")
        if req.stream and len(prompts) > 1:
            raise ApiError(400, "stream needs a single prompt", param="prompt", code="invalid_value")
        room = min(req.max_tokens or min(DEFAULT_MAX_TOKENS, engine.limit // 4), engine.limit - 1)
        build = lambda: [engine.completion_prompt(p, room) for p in prompts]  # noqa: E731
        job = Job(build, req.max_tokens, decoding(req), self.request_timeout, rows=len(prompts), param="prompt")
        return await answer(self.worker, job, request, Reply(chat=False, model=req.model), req.stream)


async def page() -> HTMLResponse:
    html, csp = _page()
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(html, headers=headers)


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


def serve(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits | None = None,
    *,
    api_key: str | None = None,
    allow_hosts: list[str] | None = None,
) -> int:
    """Serve until interrupted (SIGINT or SIGTERM); returns the exit code. `allow_hosts`: more names the Host
    header may carry (a reverse proxy's)."""
    import uvicorn

    limits = limits or Limits()
    check_api_key(api_key)
    cap = connection_cap(raise_open_files_limit())
    warning = bind_warning(host, api_key)
    if warning:
        print(warning, flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"serving '{engine.name}' at http://{shown}:{port}/ (chat page) and /v1 (API; "
        f"{'API key required' if api_key else 'no API key'}); retrieval {_retrieval(engine)}, batches of up to "
        f"{limits.batch_size}, queue {limits.queue_size}, request timeout {limits.request_timeout:g} s, at most "
        f"{cap} connections",
        flush=True,
    )
    print(context_line(engine), flush=True)
    app = create_app(engine, limits, api_key=api_key, hosts=own_hosts(host, allow_hosts))
    # limit_concurrency is uvicorn's own cap (a 503 once connections or running requests pass it): above what the
    # protocol's cap lets through, with room for a burst of accepted connections not yet dropped
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=guarded_protocol(cap),
                            limit_concurrency=cap + 3 * BACKLOG, backlog=BACKLOG,
                            timeout_keep_alive=KEEP_ALIVE_S)  # fmt: skip
    limit_server_logs()  # after Config, which sets up uvicorn's logging
    log_requests()
    server_class()(config).run()
    return 0


def context_line(engine: Engine) -> str:
    """The context the server advertises (/v1/models and /health: context_length), and the length it trained at."""
    trained = trained_length(engine)
    line = f"context {engine.limit} tokens (prompt + answer; context_length in /v1/models and /health)"
    return line + (f"; trained on sequences of {trained} tokens (trained_length)" if trained else "")


def _retrieval(engine: Engine) -> str:
    if not engine.retrieve_k:
        return "off"
    floor = engine.retrieval_floor
    return f"top-{engine.retrieve_k}" + (f" with facts scoring at least {floor:g}" if floor is not None else "")
