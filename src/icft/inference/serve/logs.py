"""The server's logs: one line per request on stderr (`RequestLog`), and uvicorn's and asyncio's error logs held
to one line per kind of error per second (`OncePerSecond`), so a flood of failing connections adds a line a
second, not megabytes.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from .schema import Usage

REQUEST_LOG = logging.getLogger("icft.serve")


class RequestLog:
    """ASGI middleware, around all others: one line per request, `METHOD PATH STATUS in=N out=N MSms` (prompt and
    answer tokens; `-` where no model ran). A route puts its token counts in `request.state.usage`. The line is
    written before the answer's last bytes are sent, so a client holding its answer finds the line written."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = scope.setdefault("state", {})  # request.state: where the routes leave the usage
        status, logged = 500, False  # 500 until an answer starts: an unexpected error ends it otherwise

        def log() -> None:
            nonlocal logged
            logged = True
            usage: Usage | None = state.get("usage")
            tokens = f"in={usage.prompt_tokens} out={usage.completion_tokens}" if usage else "in=- out=-"
            ms = (time.perf_counter() - started) * 1000
            REQUEST_LOG.info("%s %s %d %s %.0fms", scope["method"], scope["path"], status, tokens, ms)

        async def send_and_log(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body") and not logged:
                log()
            await send(message)

        try:
            await self.app(scope, receive, send_and_log)
        finally:
            if not logged:  # the client left, or an error escaped: the line all the same
                log()


def log_requests() -> None:
    """Request lines to stderr, as they are, one per request (not rate-limited: each request's line is the point)."""
    if not REQUEST_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        REQUEST_LOG.addHandler(handler)
    REQUEST_LOG.setLevel(logging.INFO)
    REQUEST_LOG.propagate = False


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
