"""Shared by the serve tests: a tiny chat run that learned three replies, and servers on free local ports."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# What the chat run learned. The story never ends: a 2-layer model cannot count 40 "la"s, so it rambles until
# max_tokens, which gives the tests a generation long enough to interrupt.
LEARNED = {
    "hello how are you": "i am fine thanks and you",
    "what is your favourite food": "i like pizza and pasta a lot",
    "tell me a story": "la " * 40,
}
# Eight prompts of different lengths (left padding differs per row): the learned ones and some the model never saw.
PROMPTS = [*LEARNED, "hello", "what is your name", "tell me a story about a cat", "food", "how are you today"]


STOP_ID = 0


class ScriptedBatch:
    """Every row generates the backend's `script` (token i decodes to chr(i)); each step waits for `gate` first."""

    def __init__(self, backend: ScriptedBackend):
        self.backend, self.rows, self.last_row = backend, {}, -1

    def add(self, prompt_ids, sampling, top_logprobs=None) -> int:
        self.last_row += 1
        self.rows[self.last_row] = iter(self.backend.script)
        self.backend.added += 1
        return self.last_row

    def remove(self, row: int) -> None:
        del self.rows[row]

    def take_logprobs(self, row: int) -> list:
        return []

    def step(self) -> dict[int, int]:
        self.backend.gate.acquire()
        self.backend.widths.append(len(self.rows))
        return {row: next(script, STOP_ID) for row, script in self.rows.items()}


class ScriptedBackend:
    stop_ids = [STOP_ID]
    context_length = 100

    def __init__(self, script: list[int], max_batch: int = 1, kv_tokens: int = 1000):
        self.script, self.gate, self.added, self.widths = script, threading.Semaphore(1000), 0, []
        self.max_batch, self.kv_tokens = max_batch, kv_tokens

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return [ord(c) for c in messages[-1]["content"]]

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(i) for i in token_ids if i != STOP_ID)

    def new_batch(self) -> ScriptedBatch:
        return ScriptedBatch(self)


def chat_run(tmp_path_factory, base_model: str) -> Path:
    """A run folder (config.yaml + model/) of the tiny Llama fine-tuned on LEARNED for 40 full steps (~3 s on 2
    cores, built once per test session): its greedy replies are exact and end at the end-of-turn token."""
    run = tmp_path_factory.getbasetemp() / "serve-chat-run"
    if (run / "config.yaml").is_file():
        return run
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from chattune.data.chat import IGNORE_INDEX, end_of_turn_token, tokenize_conversation

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    examples = [tokenize_conversation(tokenizer, [{"role": "user", "content": prompt},
                                                  {"role": "assistant", "content": reply}],
                                      end_of_turn_token(tokenizer), max_length=128)
                for prompt, reply in LEARNED.items()]
    width = max(len(example["input_ids"]) for example in examples)
    pad = [width - len(example["input_ids"]) for example in examples]
    input_ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * p for e, p in zip(examples, pad)])
    labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * p for e, p in zip(examples, pad)])
    attention_mask = torch.tensor([[1] * (width - p) + [0] * p for p in pad])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    with one_torch_thread():
        for _ in range(40):
            model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    # the story must ramble until max_tokens, so this run decodes without the no-repeat n-gram guard: its
    # generation_config.json says so, as a user would turn it off (chat, serve and eval read it)
    from chattune.generate.sampling import Sampling, generation_config

    generation_config(tokenizer, Sampling(no_repeat_ngram_size=0)).save_pretrained(run / "model")
    (run / "config.yaml").write_text(f"model: {base_model}\n")  # written last: its presence means the run is whole
    return run


def solo_tokens(backend, prompt: str, sampling) -> list[int]:
    """The tokens `backend.generate` replies to one user message with, alone."""
    tokens: list[int] = []
    backend.generate(backend.prompt_ids([{"role": "user", "content": prompt}]), sampling,
                     lambda t: tokens.append(t) or True)
    return tokens


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """A 64-wide model gains nothing from a second thread, and on a busy 2-core machine the threads' hand-offs cost
    ~25 ms per decoded token instead of ~1 ms."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def thread_server(app) -> Iterator[str]:
    """Run the ASGI app with uvicorn in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A raw request (for what the openai client will not send); returns (status, JSON body)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
