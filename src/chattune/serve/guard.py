"""ASGI middleware between the network and the routes: Host check, rate limit, body limits, security headers and
access log. Each refusal leaves in OpenAI's error shape, like every other error of the server.

    app.add_middleware(HostCheck, hosts=settings.hosts)

Why each exists: a browser tab on any site could otherwise reach the loopback server through DNS rebinding (Host
check), one client could take every decode row (rate limit), a slow or endless body could hold a connection (body
limits), and the chat page must not be framed or have its model output sniffed as HTML (headers).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time

from fastapi.responses import JSONResponse

from chattune.serve.schemas import ErrorBody, ErrorResponse

access_log = logging.getLogger("chattune.access")

SECURITY_HEADERS = [
    # the page loads only its own script and style, and posts only to this server
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                 b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def error_response(status: int, message: str, type: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _header(scope, name: bytes) -> str:
    return dict(scope["headers"]).get(name, b"").decode("latin-1")


class HostCheck:
    """403 unless the Host header names this server (loopback names, or those given with --allow-host)."""

    def __init__(self, app, hosts: frozenset[str]):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            host = _header(scope, b"host").lower()
            name = host[1:].partition("]")[0] if host.startswith("[") else host.rpartition(":")[0] or host
            if name not in self.hosts:
                return await error_response(
                    403, f"Host {host!r} is not served here; start the server with --allow-host {name or 'NAME'} "
                         "to accept it", "permission_error", code="host_not_allowed")(scope, receive, send)
        await self.app(scope, receive, send)


class SecurityHeaders:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers if scope["type"] == "http" else send)


class RateLimit:
    """At most `per_minute` requests to /v1 and /api per API key (per client address without one) in any 60 s."""

    def __init__(self, app, per_minute: int | None, retry_after: int):
        self.app, self.per_minute, self.retry_after = app, per_minute, retry_after
        self.seen: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)

    async def __call__(self, scope, receive, send) -> None:
        if self.per_minute and scope["type"] == "http" and scope["path"].startswith(("/v1/", "/api/")):
            who = _header(scope, b"authorization") or (scope.get("client") or ("?",))[0]
            times, now = self.seen[who], time.monotonic()
            while times and times[0] <= now - 60:
                times.popleft()
            if len(times) >= self.per_minute:
                wait = max(self.retry_after, int(times[0] + 60 - now) + 1)
                return await error_response(
                    429, f"more than {self.per_minute} requests in a minute; retry in {wait} s", "rate_limit_error",
                    code="rate_limit_exceeded", headers={"Retry-After": str(wait)})(scope, receive, send)
            times.append(now)
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413) before they are read (bodies must declare their length), and end a
    request whose body stalls for `read_timeout` seconds (408)."""

    def __init__(self, app, max_bytes: int, read_timeout: float):
        self.app, self.max_bytes, self.read_timeout = app, max_bytes, read_timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            length = _header(scope, b"content-length")
            if not length.isdigit():
                status, message = 411, "send the request body with a Content-Length header"
            elif int(length) > self.max_bytes:
                status, message = 413, f"request body is {int(length)} bytes; at most {self.max_bytes} are accepted"
            else:
                return await self._timed(scope, receive, send)
            return await error_response(status, message, "invalid_request_error", code="request_too_large")(
                scope, receive, send)
        await self.app(scope, receive, send)

    async def _timed(self, scope, receive, send) -> None:
        body_done = False

        async def receive_in_time():
            nonlocal body_done
            if body_done:  # afterwards the app only listens for a disconnect, which may come whenever
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                raise BodyTimeout from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        try:
            await self.app(scope, receive_in_time, send)
        except BodyTimeout:
            await error_response(408, f"the request body stalled for {self.read_timeout:g} s", "invalid_request_error",
                                 code="request_timeout", headers={"Connection": "close"})(scope, receive, send)


class BodyTimeout(Exception):
    pass


class AccessLog:
    """One JSON line per request: method, path, status, milliseconds, client address, and which key (a hash) asked.
    Message content is never logged."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.monotonic(), 0

        async def send_noting_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            key = _header(scope, b"authorization")
            access_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": status,
                "ms": round(1000 * (time.monotonic() - started)), "client": (scope.get("client") or ("",))[0],
                "key": hashlib.sha256(key.encode()).hexdigest()[:8] if key else None}))
