"""Who gets in: the Host must be one of the server's own names (no DNS rebinding) and an Origin, when sent, the
server itself (no other web page can drive it); with --api-key every /v1/* route needs `Authorization: Bearer
KEY`; POST bodies must be application/json and at most MAX_BODY_BYTES. Each refusal is a 4xx in OpenAI's shape.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import socket
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers

from ..generate import InputError
from .errors import ApiError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more text than any context here holds, and cheap to refuse early
LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEY = re.compile(r"[!-~]+")  # printable ASCII without spaces: what an HTTP header carries as typed


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


def bind_warning(host: str, api_key: str | None) -> str | None:
    """What `icft serve` says when it listens beyond this machine without a key; None when all is well."""
    if host in LOOPBACK or api_key:
        return None
    return (
        f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model; "
        "set --api-key KEY (or ICFT_API_KEY)"
    )
