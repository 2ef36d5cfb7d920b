"""uvicorn, hardened for a shared network: request headers must arrive within a read timeout, malformed requests get
OpenAI-shaped 400s, and SIGTERM ends every stream within a few seconds (stored as cancelled) instead of waiting for
them.

    run_server(app, engine, "127.0.0.1", 8000, settings)
"""

from __future__ import annotations

import json
import signal
import socket

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from chattune.errors import InputError
from chattune.serve.engine import Engine
from chattune.serve.settings import ServeSettings


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol plus a deadline for the request headers (uvicorn has none: a client sending one
    byte a minute holds its connection forever), reset for each request on a kept-alive connection."""

    header_timeout = 10.0  # set from the settings by `run_server`

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def handle_events(self) -> None:
        had_cycle = self.cycle
        super().handle_events()
        if self.cycle is not had_cycle and self._header_deadline is not None:  # a request's headers are complete
            self._header_deadline.cancel()
            self._header_deadline = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._header_deadline is None and not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def connection_lost(self, exc) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """A request h11 cannot parse (e.g. `Content-Length: -1`): the OpenAI error shape, not plain text."""
        body = json.dumps({"error": {"message": f"malformed HTTP request: {msg}", "type": "invalid_request_error",
                                     "param": None, "code": "bad_request"}}).encode()
        head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n")
        self.transport.write(head + body)
        self.transport.close()


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM/SIGINT the engine ends every request now (each stored as cancelled, its stream closed),
    so shutdown takes seconds, not as long as the longest stream; a second signal of either kind exits at once."""

    def __init__(self, config: uvicorn.Config, engine: Engine):
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame) -> None:
        if self.should_exit and sig in (signal.SIGINT, signal.SIGTERM):
            self.force_exit = True
        self.engine.drain()
        super().handle_exit(sig, frame)


def check_port_free(host: str, port: int) -> None:
    """Fail early, in one line, when the port is taken. SO_REUSEADDR as uvicorn binds: a port left in TIME-WAIT by the
    last server is free for the next one at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror}); pick another with --port") from None


def run_server(app, engine: Engine, host: str, port: int, settings: ServeSettings) -> None:
    GuardedH11Protocol.header_timeout = settings.read_timeout
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            http=GuardedH11Protocol, timeout_keep_alive=int(settings.read_timeout),
                            timeout_graceful_shutdown=int(settings.shutdown_grace))
    try:
        DrainingServer(config, engine).run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled; the shutdown is already done
        pass
