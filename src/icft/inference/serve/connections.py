"""Slow and many clients: each request's head and body must arrive within REQUEST_READ_S of the connection opening
(or of the last answer on it), open connections are capped below the open-files limit (which `serve` raises to its
hard limit), and at the cap the connection that has waited longest for its request is dropped, so a trickle of
slowloris connections cannot keep /health or a real client out.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import socket
from typing import Any

REQUEST_READ_S = 20.0  # a request's head and body must have arrived this long after the connection or last answer
KEEP_ALIVE_S = 5  # an idle kept-alive connection is closed after this (uvicorn's timeout_keep_alive)
BACKLOG = 128  # how many connections asyncio accepts at once (each an open file until the protocol drops it)
LISTEN_QUEUE = 4096  # connections the kernel holds until accepted: a full queue drops a SYN, a 1 s wait to retry
MAX_CONNECTIONS = 4096


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


def server_class() -> type:
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
