"""The one thread that runs the model (`Worker`), and the work a request hands it (`Job`).

Requests wait in a bounded line (a request that finds it full is answered 503 with Retry-After at once). Requests
that arrive together are generated together, as one batch with left padding, each row ending on its own (EOS, its
stop strings, its max_tokens), so a greedy answer is the one it would get alone; requests arriving during a batch
join the next one. Tokenising and retrieval run here too, so the event loop only moves bytes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Any

import torch

from ..generate import Engine, InputError, Prompt, Row, StopFlag
from .errors import ApiError, client_gone, timeout_error

DEFAULT_MAX_TOKENS = 256
# Before starting a batch that is not full, the worker waits for company: about one token's time of the last
# batch (within these bounds), so a lone request loses one token of latency and requests sent together, which
# reach the worker tens of milliseconds apart on a busy machine, share a batch instead of waiting a whole one.
GATHER_S = (0.01, 0.25)


@dataclass
class Decoding:
    """How a request's tokens are chosen (greedy at temperature 0) and where its text stops."""

    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None


@dataclass(eq=False)  # a job is itself, not its fields: it is a dict key and is removed from a deque
class Job:
    """One request's work: `build` makes its prompts (in the worker), then they are generated."""

    build: Callable[[], list[Prompt]]
    max_tokens: int | None
    decoding: Decoding
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
        d = self.decoding
        if d.temperature == 0:
            return ("greedy",)
        if d.seed is not None:
            return ("seeded", id(self))  # alone, so that the seed decides its tokens
        return ("sample", d.temperature, d.top_p)


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
                _fail(job, client_gone())

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
            stops = job.decoding.stop
            for k, prompt in enumerate(prompts):
                on_text = job.on_text if k == 0 else None
                rows.append(Row(prompt, max_tokens, stops, criteria, on_text, job.stop_flag, job.deadline))
                owners.append(job)
        if not rows:
            return
        decoding = owners[0].decoding  # the same for the whole batch (`Job.key`)
        if decoding.seed is not None:
            torch.manual_seed(decoding.seed)
        self.running, self.batches = len(rows), self.batches + 1
        started = time.monotonic()
        try:
            completions = self.engine.generate_rows(rows, decoding.temperature, decoding.top_p)
        finally:
            self.running = 0
        steps = max(c.completion_tokens for c in completions) + 1  # + the prompt's forward pass
        self.step_s = (time.monotonic() - started) / steps
        for job in dict.fromkeys(owners):
            _resolve(job.done, [c for c, owner in zip(completions, owners) if owner is job])

    def _prepare(self, job: Job) -> tuple[list[Prompt], int, Any]:
        if job.stop_flag.stopped:  # the client left while the job waited
            raise client_gone()
        if time.monotonic() > job.deadline:
            raise timeout_error(job.timeout)
        prompts = job.build()
        max_tokens = self._check(prompts, job.max_tokens, job.param)
        try:
            criteria = self.engine.stop_criteria(job.decoding.stop)
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
