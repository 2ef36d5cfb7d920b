"""What `chattune serve` is limited to and who may reach it: named defaults (with why), overridden by flags.

    settings = ServeSettings(api_key="KEY", allow_hosts=("chat.example.com",), rate_limit=60)
    create_app(engine, store, "runs/demo", settings)

Checked here, at the edge (`check`), before a model loads: a server bound beyond this machine needs an API key.
"""

from __future__ import annotations

from dataclasses import dataclass

from chattune.errors import InputError

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DECODE_THREADS = 1  # torch threads for the HF backend: with another job on a 2-core machine, one batch-4 decode step
# took 879 ms with 2 threads (they wait on each other's core) vs 130 ms with 1; see README "Speed"
READ_TIMEOUT = 10.0  # seconds a client may take to send its request headers or the next piece of its body
KEEPALIVE_EVERY = 5.0  # seconds of silence on a waiting stream before an SSE comment keeps proxies and clients alive
SHUTDOWN_GRACE = 3.0  # seconds for streams to end (stored as cancelled) after SIGTERM before connections are cut
RETRY_AFTER = 5  # seconds a refused (503) or rate-limited (429) client is told to wait


@dataclass(frozen=True)
class ServeSettings:
    api_key: str | None = None  # required as "Authorization: Bearer KEY" on /v1 and /api when set
    allow_hosts: tuple[str, ...] = ()  # Host header values accepted besides the loopback names (DNS rebinding)
    cors_origin: str | None = None  # the one browser origin allowed to call the API from another site; none: off
    rate_limit: int | None = None  # requests per minute per API key (per client address without a key); none: off
    max_waiting: int = 32  # requests waiting for a decode row; more get 503 with Retry-After
    read_timeout: float = READ_TIMEOUT
    keepalive_every: float = KEEPALIVE_EVERY
    shutdown_grace: float = SHUTDOWN_GRACE
    access_log: bool = True  # one JSON line per request (method, path, status, ms, client; never message content)

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(h.lower() for h in (*LOOPBACK_HOSTS, *self.allow_hosts))

    def check(self, host: str, insecure: bool) -> None:
        if host not in LOOPBACK_HOSTS and self.api_key is None and not insecure:
            raise InputError(f"--host {host} lets other machines reach the model: add --api-key KEY (or set "
                             "$CHATTUNE_API_KEY), or pass --insecure to serve without one")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise InputError(f"--rate-limit {self.rate_limit}: must be at least 1 request per minute")
        if self.max_waiting < 0:
            raise InputError(f"--max-waiting {self.max_waiting}: must be 0 or more")
