"""A request's answer: whole (one JSON body) or streamed (server-sent events, ending with `data: [DONE]`), each
built from the response models. A client that hangs up, streaming or not, frees its row at the next token, and a
request that runs past --request-timeout ends with a 504 (or, streaming, an error event)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from ..generate import Completion, InputError, cut_at_stop
from .errors import ApiError, client_gone, timeout_error
from .schema import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    Delta,
    TextChoice,
    TextChunkChoice,
    TextCompletion,
    TextCompletionChunk,
    Usage,
    retrieved_facts,
)
from .worker import Job, Worker


@dataclass
class Reply:
    """One request's answer in the shapes of its kind, chat.completion or text_completion: whole, or as chunks."""

    chat: bool
    model: str
    id: str = field(init=False)
    created: int = field(init=False)

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def whole(self, completions: list[Completion]) -> ChatCompletion | TextCompletion:
        usage = Usage.of(completions)
        if self.chat:
            choices = [ChatChoice(index=i, message=AssistantMessage(role="assistant", content=c.text),
                                  finish_reason=c.finish_reason, retrieved=retrieved_facts(c),
                                  no_fact_passed_floor=c.unmet_floor) for i, c in enumerate(completions)]  # fmt: skip
            return ChatCompletion(id=self.id, object="chat.completion", created=self.created, model=self.model,
                                  choices=choices, usage=usage)  # fmt: skip
        choices = [TextChoice(index=i, text=c.text, logprobs=None, finish_reason=c.finish_reason,
                              retrieved=retrieved_facts(c), no_fact_passed_floor=c.unmet_floor)
                   for i, c in enumerate(completions)]  # fmt: skip
        return TextCompletion(id=self.id, object="text_completion", created=self.created, model=self.model,
                              choices=choices, usage=usage)  # fmt: skip

    def chunk(
        self, text: str | None, finish: str | None = None, done: Completion | None = None, role: str | None = None
    ) -> ChatCompletionChunk | TextCompletionChunk:
        """A piece of text; the first chat chunk also has the `role`, the last the `finish` reason and, from the
        `done` completion, the memory facts in its prompt."""
        facts, floor = (retrieved_facts(done), done.unmet_floor) if done is not None else (None, None)
        if self.chat:
            choice = ChatChunkChoice(index=0, delta=Delta(role=role, content=text), finish_reason=finish,
                                     retrieved=facts, no_fact_passed_floor=floor)  # fmt: skip
            return ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created,
                                       model=self.model, choices=[choice])  # fmt: skip
        choice = TextChunkChoice(index=0, text=text or "", logprobs=None, finish_reason=finish, retrieved=facts,
                                 no_fact_passed_floor=floor)  # fmt: skip
        return TextCompletionChunk(id=self.id, object="text_completion", created=self.created, model=self.model,
                                   choices=[choice])  # fmt: skip


def event(body: BaseModel) -> str:
    """One server-sent event carrying a chunk or an error."""
    return f"data: {body.model_dump_json()}\n\n"


async def answer(worker: Worker, job: Job, request: Request, reply: Reply, stream: bool) -> Response:
    """Hand the job to the worker and answer with what it makes, whole or streamed."""
    if stream:
        return await _streamed(worker, job, request, reply)
    worker.submit(job)
    completions = await settle(job.done, job, request, worker)
    if any(c.finish_reason == "timeout" for c in completions):
        raise timeout_error(job.timeout)
    whole = reply.whole(completions)
    request.state.usage = whole.usage
    return JSONResponse(whole.model_dump(mode="json"))


async def _streamed(worker: Worker, job: Job, request: Request, reply: Reply) -> StreamingResponse:
    stream = _Stream(job, reply, request.state, StopText(job.decoding.stop), asyncio.get_running_loop())
    job.on_text = stream.on_text
    worker.submit(job)
    await settle(job.ready, job, request, worker)  # errors in the request (context length) are still a 4xx
    return StreamingResponse(stream.events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@dataclass
class _Stream:
    """A streamed answer: its text as the worker makes it, then its last chunk (or the error that ended it)."""

    job: Job
    reply: Reply
    state: Any  # request.state, where the request's log line finds the token counts
    text: StopText
    loop: asyncio.AbstractEventLoop
    pieces: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    def on_text(self, piece: str, end: bool) -> None:  # runs in the worker thread
        out = self.text.feed(piece, end)
        if out:
            self.loop.call_soon_threadsafe(self.pieces.put_nowait, out)
        if self.text.stopped:
            self.job.stop_flag.set()

    async def events(self) -> AsyncIterator[str]:
        done = asyncio.wrap_future(self.job.done)
        try:
            if self.reply.chat:
                yield event(self.reply.chunk("", role="assistant"))
            async for piece in self._text(done):
                yield event(self.reply.chunk(piece))
            yield self._last(done)
            yield "data: [DONE]\n\n"
        finally:
            self.job.stop_flag.set()  # finished, the time is up, or the client hung up: stop generating either way
            if not done.done():
                done.cancel()

    async def _text(self, done: asyncio.Future) -> AsyncIterator[str]:
        """The pieces of text, until the answer is done (then the pieces still queued) or its time is up."""
        while not done.done():
            getter = asyncio.ensure_future(self.pieces.get())
            left = max(0.0, self.job.deadline - time.monotonic())
            await asyncio.wait({getter, done}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if not done.done():  # the time is up
                    return
                break
            yield getter.result()
        while not self.pieces.empty():
            yield self.pieces.get_nowait()

    def _last(self, done: asyncio.Future) -> str:
        if not done.done():
            return event(timeout_error(self.job.timeout).body())
        if done.exception() is not None:
            return event(ApiError(500, str(done.exception()), type_="server_error").body())
        completion = done.result()[0]
        self.state.usage = Usage.of([completion])
        if completion.finish_reason == "timeout":
            return event(timeout_error(self.job.timeout).body())
        return event(self.reply.chunk(None, self.text.finish_reason(completion), completion))


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


async def _disconnected(request: Request) -> None:
    """Returns when the client hangs up (the body has been read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def settle(future: Future, job: Job, request: Request, worker: Worker) -> Any:
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
    raise client_gone() if gone in finished else timeout_error(job.timeout)
