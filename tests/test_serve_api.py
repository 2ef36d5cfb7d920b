"""`chattune serve` as users run it (a subprocess on 127.0.0.1), driven by the official openai client."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from serve_helpers import LEARNED, chat_run, free_port, http

from chattune.cli import main
from chattune.serve.schemas import MAX_BODY_BYTES, MAX_MESSAGES, MAX_TOKENS_CAP, MAX_TOTAL_CHARS

KEY = "test-key-123"
HELLO = [{"role": "user", "content": "hello how are you"}]
STORY = [{"role": "user", "content": "tell me a story"}]


@dataclass
class Server:
    url: str
    model: str
    db: Path
    run: Path

    def client(self, api_key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def rows(self, sql: str, *args) -> list[sqlite3.Row]:
        with sqlite3.connect(self.db) as db:
            db.row_factory = sqlite3.Row
            return db.execute(sql, args).fetchall()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama):
    run = chat_run(tmp_path_factory, tiny_llama)
    folder = tmp_path_factory.mktemp("serve-api")
    port, db, log_path = free_port(), folder / "feedback.sqlite", folder / "server.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "chattune.cli", "serve", str(run), "--port", str(port), "--db", str(db)],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "CHATTUNE_API_KEY": KEY, "OMP_NUM_THREADS": "1"})  # see one_torch_thread
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, f"chattune serve exited:\n{log_path.read_text()}"
        assert time.monotonic() < deadline, f"chattune serve did not start:\n{log_path.read_text()}"
        try:
            if http("GET", f"{url}/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    yield Server(url, str(run), db, run)
    process.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn shuts down, the store closes
    assert process.wait(timeout=30) == 0, log_path.read_text()


def stream_text(client, **request) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **request))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_streamed_reply_equals_plain_reply_with_usage_and_record(server):
    from transformers import AutoTokenizer

    client = server.client()
    request = dict(model=server.model, messages=HELLO, temperature=0, max_tokens=32)
    plain = client.chat.completions.create(**request)
    assert plain.choices[0].message.content == LEARNED["hello how are you"]
    assert plain.choices[0].finish_reason == "stop" and plain.object == "chat.completion"
    tokenizer = AutoTokenizer.from_pretrained(server.run / "model")
    prompt = tokenizer.apply_chat_template(HELLO, tokenize=False, add_generation_prompt=True)
    assert plain.usage.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # the reply's tokens plus the end-of-turn token that ended it
    assert plain.usage.completion_tokens == len(tokenizer(LEARNED["hello how are you"])["input_ids"]) + 1
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

    text, chunks = stream_text(client, **request, stream_options={"include_usage": True})
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) > 3  # token by token, not at once
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == plain.usage
    assert len({c.id for c in chunks}) == 1

    sampled = dict(model=server.model, messages=STORY, temperature=1.0, top_p=0.95, seed=7, max_tokens=12)
    assert stream_text(client, **sampled)[0] == client.chat.completions.create(**sampled).choices[0].message.content

    [row] = server.rows("SELECT * FROM replies WHERE id = ?", plain.id)
    assert (row["model"], row["content"], row["finish_reason"]) == (server.model, plain.choices[0].message.content,
                                                                    "stop")
    assert (row["temperature"], row["max_tokens"], json.loads(row["messages"])) == (0, 32, HELLO)


def test_max_tokens_ends_with_length_and_stop_strings_cut(server):
    client = server.client()
    cut = client.chat.completions.create(model=server.model, messages=STORY, temperature=0, max_tokens=5)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 5
    assert cut.choices[0].message.content.startswith("la la")
    request = dict(model=server.model, messages=HELLO, temperature=0, stop=["thanks", "zzz"])
    stopped = client.chat.completions.create(**request)
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("i am fine", "stop")
    assert stream_text(client, **request)[0] == "i am fine"


def test_models_health_and_api_key(server):
    assert [m.id for m in server.client().models.list()] == [server.model]
    assert http("GET", f"{server.url}/health") == (200, {"status": "ok", "running": 0, "waiting": 0})  # no path
    with pytest.raises(openai.AuthenticationError) as error:
        server.client(api_key="not-the-key").models.list()
    assert error.value.status_code == 401 and error.value.body["code"] == "invalid_api_key"
    # no key at all (the openai client refuses to send that, so a raw request)
    status, body = http("POST", f"{server.url}/v1/chat/completions", json.dumps({"messages": HELLO}).encode(),
                        {"Content-Type": "application/json"})
    assert status == 401 and body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("change, mentions", [
    ({"messages": [{"role": "user", "content": "x" * (MAX_TOTAL_CHARS // 2 + 1)}] * 2}, "characters"),
    ({"messages": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"max_tokens": MAX_TOKENS_CAP + 1}, "max_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"n": 5}, "n"),
    ({"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
    ({"top_logprobs": 2}, "logprobs: true"),
    ({"stream": "yes"}, "stream"),  # loose types are refused, as OpenAI's strict validation does
    ({"temperature": "0.5"}, "temperature"),
    ({"max_tokens": True}, "max_tokens"),
    ({"seed": 2**63}, "seed"),  # SQLite stores at most 2^63 - 1
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"}, "tools"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"logit_bias": {"50": 10}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "without a grammar"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_bad_requests_are_400_naming_the_field(server, change, mentions):
    with pytest.raises(openai.BadRequestError) as error:
        server.client().chat.completions.create(**{"model": server.model, "messages": HELLO, **change})
    assert error.value.status_code == 400 and mentions in error.value.message
    assert error.value.body["type"] == "invalid_request_error" and "Traceback" not in str(error.value.body)


def test_n_choices_decode_together_each_stored(server):
    client = server.client()
    greedy = client.chat.completions.create(model=server.model, messages=HELLO, temperature=0, n=2)
    assert [(c.index, c.message.content) for c in greedy.choices] == [(0, LEARNED["hello how are you"]),
                                                                      (1, LEARNED["hello how are you"])]
    one = client.chat.completions.create(model=server.model, messages=HELLO, temperature=0)
    assert greedy.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert greedy.usage.completion_tokens == 2 * one.usage.completion_tokens
    stored = server.rows("SELECT id, content FROM replies WHERE id IN (?, ?)", greedy.id, f"{greedy.id}-1")
    assert sorted(row["id"] for row in stored) == [greedy.id, f"{greedy.id}-1"]

    sampled = dict(model=server.model, messages=[{"role": "user", "content": "food"}], temperature=1.5, seed=11,
                   max_tokens=12, n=3)
    plain = [c.message.content for c in client.chat.completions.create(**sampled).choices]
    assert len(set(plain)) > 1  # choice i draws with seed + i: different replies
    streamed = ["", "", ""]
    for chunk in client.chat.completions.create(stream=True, **sampled):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == plain  # interleaved on the wire, each reproducible


def test_logprobs_have_openais_shape_and_greedy_picks_the_top_one(server):
    client = server.client()
    request = dict(model=server.model, messages=HELLO, temperature=0, logprobs=True, top_logprobs=3)
    reply = client.chat.completions.create(**request)
    entries = reply.choices[0].logprobs.content
    # every reply token but the end-of-turn token that ended it
    assert len(entries) == reply.usage.completion_tokens - 1
    assert "".join(e.token for e in entries).strip() == reply.choices[0].message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest token is the one picked
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs),
                                                                 reverse=True)
    chunks = list(client.chat.completions.create(stream=True, **request))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    bare = client.chat.completions.create(**{**request, "top_logprobs": None})
    assert bare.choices[0].logprobs.content[0].top_logprobs == []
    assert client.chat.completions.create(model=server.model, messages=HELLO).choices[0].logprobs is None


def test_requests_without_sampling_fields_get_the_servers_defaults(server):
    from chattune.generate.sampling import Sampling

    status, defaults = http("GET", f"{server.url}/api/defaults", headers={"Authorization": f"Bearer {KEY}"})
    default = Sampling()
    assert status == 200 and defaults == {"temperature": default.temperature, "top_p": default.top_p,
                                          "max_tokens": default.max_new_tokens, "max_tokens_cap": MAX_TOKENS_CAP}
    reply = server.client().chat.completions.create(model=server.model, messages=STORY)
    [row] = server.rows("SELECT temperature, top_p, max_tokens FROM replies WHERE id = ?", reply.id)
    assert tuple(row) == (default.temperature, default.top_p, default.max_new_tokens)


def test_unknown_model_404_broken_json_400_oversized_body_413(server):
    with pytest.raises(openai.NotFoundError) as error:
        server.client().chat.completions.create(model="gpt-4o", messages=HELLO)
    assert server.model in error.value.message
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, reply = http("POST", f"{server.url}/v1/chat/completions", b'{"messages": [', headers)
    assert status == 400 and "not valid JSON" in reply["error"]["message"]
    body = json.dumps({"messages": [{"role": "user", "content": "x" * MAX_BODY_BYTES}]}).encode()
    status, reply = http("POST", f"{server.url}/v1/chat/completions", body, headers)
    assert status == 413 and str(MAX_BODY_BYTES) in reply["error"]["message"]


def test_eight_concurrent_streams_each_equal_their_solo_reply(server):
    client = server.client()
    prompts = ["hello how are you", "what is your favourite food", "tell me a story", "hello",
               "what food", "tell me", "how are you today", "your favourite story"]
    for temperature in (0, 1.0):  # greedy, then sampling with a seed per request
        requests = [dict(model=server.model, messages=[{"role": "user", "content": prompt}], max_tokens=16,
                         temperature=temperature, seed=index) for index, prompt in enumerate(prompts)]
        solo = [client.chat.completions.create(**r).choices[0].message.content for r in requests]
        assert len(set(solo)) >= 3  # different replies, so an interleaving would show
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(lambda r: stream_text(client, **r)[0], requests))
        assert together == solo


def test_client_disconnect_stops_its_generation(server):
    room = 512 - 20  # the tiny model reads 512 tokens; the story prompt is ~15
    stream = server.client().chat.completions.create(model=server.model, messages=STORY, temperature=0,
                                                     max_tokens=MAX_TOKENS_CAP, stream=True)
    for _, _ in zip(range(3), stream):
        pass
    stream.close()  # the client goes away after three chunks
    deadline = time.monotonic() + 30
    while not (rows := server.rows("SELECT * FROM replies WHERE finish_reason = 'cancelled'")):
        assert time.monotonic() < deadline, "the cancelled reply was never recorded"
        time.sleep(0.05)
    assert rows[0]["completion_tokens"] < room / 2 and rows[0]["content"].startswith("la")
    # the server is free again at once
    again = server.client().chat.completions.create(model=server.model, messages=HELLO, temperature=0, timeout=10)
    assert again.choices[0].message.content == LEARNED["hello how are you"]


def test_serve_refuses_a_busy_port_in_one_line(tiny_llama, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", tiny_llama, "--port", str(taken.getsockname()[1])]) == 2
    error = capsys.readouterr().err
    assert "cannot listen on 127.0.0.1" in error and "--port" in error and error.count("\n") == 1
