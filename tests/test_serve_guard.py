"""Hardening for a shared network: Host allowlist, CORS, rate limit, security headers, refused bindings, read
timeouts, malformed requests, surrogates, SIGTERM with streams in flight, and an immediate restart on the same port."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from serve_helpers import ScriptedBackend, chat_run, free_port, http

from chattune.cli import main
from chattune.serve.app import create_app
from chattune.serve.engine import Engine
from chattune.serve.settings import ServeSettings
from chattune.serve.store import Store

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def make_client(tmp_path):
    made = []

    def make(**settings) -> TestClient:
        engine, store = Engine(ScriptedBackend([ord("a"), 0])), Store(tmp_path / f"{len(made)}.sqlite")
        made.append((engine, store))
        return TestClient(create_app(engine, store, "scripted", ServeSettings(**settings)), base_url="http://127.0.0.1")

    yield make
    for engine, store in made:
        engine.close()
        store.close()


def test_foreign_host_gets_403_and_allowed_hosts_pass(make_client):
    client = make_client(allow_hosts=("chat.example.com",))
    assert client.get("/v1/models").status_code == 200
    refused = client.post("/v1/chat/completions", json={"messages": HELLO}, headers={"Host": "evil.example"})
    assert refused.status_code == 403 and "--allow-host evil.example" in refused.json()["error"]["message"]
    assert client.get("/health", headers={"Host": "evil.example:8000"}).status_code == 403
    assert client.get("/health", headers={"Host": "chat.example.com:8000"}).status_code == 200
    assert client.get("/health", headers={"Host": "[::1]:8000"}).status_code == 200


def test_no_cors_by_default_and_one_origin_when_asked(make_client):
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    plain = make_client()
    assert "access-control-allow-origin" not in plain.get("/v1/models", headers=origin).headers
    assert "access-control-allow-origin" not in plain.options("/v1/chat/completions", headers=origin).headers
    allowed = make_client(cors_origin="https://app.example")
    reply = allowed.get("/v1/models", headers={"Origin": "https://app.example"})
    assert reply.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in allowed.get("/v1/models", headers=origin).headers


def test_rate_limit_gives_429_with_retry_after_per_key(make_client):
    client = make_client(rate_limit=3)
    assert [client.get("/v1/models").status_code for _ in range(3)] == [200] * 3
    limited = client.get("/v1/models")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert client.get("/health").status_code == 200  # the limit guards the API only
    other_key = make_client(rate_limit=1, api_key="k")
    assert other_key.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    assert other_key.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 429


def test_security_headers_on_the_page_and_api(make_client):
    client = make_client()
    for path in ("/", "/static/app.js", "/v1/models"):
        headers = client.get(path).headers
        assert "default-src 'self'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_surrogates_outside_content_are_400_before_generating(make_client):
    client = make_client()
    for field, body in (("metadata", {"messages": HELLO, "metadata": {"conversation_id": "\ud800"}}),
                        ("stop", {"messages": HELLO, "stop": ["\udfff"]})):
        raw = json.dumps(body).encode()  # ensure_ascii: the surrogate travels as "\\ud800", as a client sends it
        reply = client.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400 and reply.json()["error"]["message"].startswith(field)


def test_non_loopback_without_a_key_exits_2(tiny_llama, capsys, monkeypatch):
    monkeypatch.delenv("CHATTUNE_API_KEY", raising=False)
    assert main(["serve", tiny_llama, "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    error = capsys.readouterr().err
    assert "--api-key" in error and "--insecure" in error and error.count("\n") == 1


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_llama):
    """`chattune serve` as a subprocess; yields a function that starts one on a port."""
    run = chat_run(tmp_path_factory, tiny_llama)
    folder = tmp_path_factory.mktemp("serve-guard")
    started = []

    def start(port: int, *flags: str) -> tuple[subprocess.Popen, str, object]:
        db = folder / "feedback.sqlite"
        log = open(folder / f"server-{len(started)}.log", "w")
        process = subprocess.Popen([sys.executable, "-m", "chattune.cli", "serve", str(run), "--port", str(port),
                                    "--db", str(db), *flags], stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        started.append(process)
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert process.poll() is None, (folder / f"server-{len(started) - 1}.log").read_text()
            assert time.monotonic() < deadline, "chattune serve did not start"
            try:
                if http("GET", f"{url}/health")[0] == 200:
                    return process, url, db
            except OSError:
                time.sleep(0.2)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def raw_exchange(port: int, data: bytes, wait: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
        return received


def test_slow_headers_are_cut_and_malformed_requests_get_json(live):
    port = free_port()
    process, url, _ = live(port, "--read-timeout", "1")
    reply = raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["type"] == "invalid_request_error"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127")  # and then nothing more
        assert slow.recv(100) == b""  # the server closed it
    assert time.monotonic() - started < 5
    started = time.monotonic()
    stalled = raw_exchange(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: 100\r\n\r\n{\"messages\"", wait=10)
    # ended by the read timeout (FastAPI reports the cut body as a 400 it could not parse), not held open
    assert stalled.split()[1] in (b"400", b"408") and time.monotonic() - started < 5
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def test_sigterm_ends_long_streams_stores_them_and_the_port_is_free_again(live):
    import openai

    port = free_port()
    process, url, db = live(port)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
    streams, firsts = [], threading.Barrier(5)

    def stream(index: int) -> None:
        chunks = client.chat.completions.create(model=None, messages=[{"role": "user", "content": "tell me a story"}],
                                                temperature=1.0, seed=index, max_tokens=1024, stream=True)
        try:
            for number, _ in enumerate(chunks):
                if number == 2:
                    firsts.wait(timeout=60)
        except openai.APIError:
            pass
        streams.append(index)

    with sqlite3.connect(db) as store:  # the module's servers share the store: count only these four replies
        stored_before = store.execute("SELECT COUNT(*) FROM replies").fetchone()[0]
    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    firsts.wait(timeout=60)  # all four are mid-reply
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=10)
    assert time.monotonic() - sent < 10
    for thread in threads:
        thread.join(timeout=10)
    with sqlite3.connect(db) as store:
        rows = store.execute("SELECT finish_reason, completion_tokens FROM replies ORDER BY rowid LIMIT -1 OFFSET ?",
                             (stored_before,)).fetchall()
    # every stream stored once; cancelled unless its story reached its end before the signal (how many do depends
    # on how fast the machine decodes)
    assert len(rows) == 4 and all(reason in ("cancelled", "stop") and tokens >= 2 for reason, tokens in rows)
    assert any(reason == "cancelled" for reason, _ in rows)
    restarted, url, _ = live(port)  # at once, on the same port (TIME-WAIT sockets left by the streams)
    assert http("GET", f"{url}/health")[0] == 200
    restarted.send_signal(signal.SIGINT)
    assert restarted.wait(timeout=30) == 0


def test_a_waiting_stream_gets_keep_alives_then_its_reply(tmp_path):
    import http.client

    from serve_helpers import thread_server

    backend = ScriptedBackend([ord("o"), ord("k"), 0])
    backend.gate = threading.Semaphore(0)  # no decode step runs until the test lets it
    engine, store = Engine(backend), Store(tmp_path / "feedback.sqlite")
    app = create_app(engine, store, "scripted", ServeSettings(keepalive_every=0.2))
    with thread_server(app) as url:
        connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
        connection.request("POST", "/v1/chat/completions", json.dumps({"messages": HELLO, "stream": True}),
                           {"Content-Type": "application/json"})
        response = connection.getresponse()
        lines = [response.readline() for _ in range(4)]  # the role chunk, then silence while the step waits
        assert lines[0].startswith(b"data: ") and b"keep-alive" not in lines[0]
        assert lines[2] == b": keep-alive\n"
        for _ in range(10):
            backend.gate.release()
        rest = response.read().decode()
        connection.close()
    engine.close()
    store.close()
    pieces = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: {")]
    assert "".join(p["choices"][0]["delta"].get("content", "") for p in pieces if p["choices"]) == "ok"
    assert rest.rstrip().endswith("data: [DONE]")
