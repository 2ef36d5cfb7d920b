"""The decode engine without HTTP: finish reasons, cancelling, batching waiting requests, the context limit."""

from __future__ import annotations

import asyncio
import threading

import pytest
from serve_helpers import PROMPTS, chat_run, one_torch_thread, solo_tokens

from chattune.errors import InputError
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.sampling import Sampling
from chattune.serve.engine import Engine

STOP_ID = 0


class ScriptedBackend:
    """Generates `script` token by token (token i decodes to chr(i)), waiting for `gate` before each token."""

    stop_ids = [STOP_ID]
    context_length = 100
    max_batch = 1

    def __init__(self, script: list[int]):
        self.script, self.gate, self.calls = script, threading.Semaphore(1000), 0

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return [ord(c) for c in messages[-1]["content"]]

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(i) for i in token_ids if i != STOP_ID)

    def generate(self, prompt_ids, sampling, on_token) -> None:
        self.calls += 1
        for token_id in self.script[: sampling.max_new_tokens]:
            self.gate.acquire()
            if not on_token(token_id) or token_id in self.stop_ids:
                return

    def generate_batch(self, prompts, samplings, on_tokens) -> None:
        raise AssertionError("max_batch is 1: the engine decodes one request at a time")


def run_jobs(engine: Engine, requests: list[tuple[str, int]]) -> list:
    """Submit (prompt, max_new_tokens) requests at once; returns (text, finish_reason, completion_tokens) of each."""

    async def main() -> list:
        jobs = [engine.submit([{"role": "user", "content": p}], Sampling(max_new_tokens=n), stop=[])
                for p, n in requests]
        results = await asyncio.gather(*(job.result() for job in jobs))
        return [(r.text, r.finish_reason, r.completion_tokens) for r in results]

    return asyncio.run(main())


def test_finish_reasons_and_cancelling():
    backend = ScriptedBackend([ord(c) for c in "abcdef"] + [STOP_ID])
    engine = Engine(backend)
    try:
        assert run_jobs(engine, [("x", 50), ("y", 3)]) == [("abcdef", "stop", 7), ("abc", "length", 3)]

        backend.gate = threading.Semaphore(2)  # two tokens, then the model waits for the test

        async def cancel_mid_reply():
            job = engine.submit([{"role": "user", "content": "x"}], Sampling(), stop=[])
            pieces = job.pieces()
            assert [await anext(pieces), await anext(pieces)] == ["a", "b"]
            job.cancel()
            for _ in range(10):
                backend.gate.release()
            return [piece async for piece in pieces], job.finished

        _, finished = asyncio.run(cancel_mid_reply())
        assert finished.finish_reason == "cancelled" and finished.completion_tokens < 7

        # a request cancelled while it waits never reaches the model
        backend.gate = threading.Semaphore(0)
        calls = backend.calls

        async def cancel_while_queued() -> tuple:
            first = engine.submit([{"role": "user", "content": "x"}], Sampling(), stop=[])
            while backend.calls == calls:  # the first is decoding (held at the gate)
                await asyncio.sleep(0.01)
            second = engine.submit([{"role": "user", "content": "y"}], Sampling(), stop=[])
            second.cancel()
            for _ in range(10):
                backend.gate.release()
            return await first.result(), await second.result()

        first, second = asyncio.run(cancel_while_queued())
        assert (first.text, first.finish_reason) == ("abcdef", "stop")
        assert (second.finish_reason, second.completion_tokens) == ("cancelled", 0) and backend.calls == calls + 1
    finally:
        engine.close()


def test_hf_backend_uses_the_runs_system_prompt_and_refuses_too_long_prompts(tmp_path_factory, tiny_llama):
    loaded = load_hf_backend(str(chat_run(tmp_path_factory, tiny_llama)))
    backend = HFBackend(loaded.model, loaded.tokenizer, system_prompt="be brief")
    prompt = backend.tokenizer.decode(backend.prompt_ids([{"role": "user", "content": "hi"}]))
    assert prompt.startswith("<|im_start|>system\nbe brief<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    engine = Engine(backend)
    try:
        async def too_long() -> None:
            engine.submit([{"role": "user", "content": "hello " * 600}], Sampling(), stop=[])

        with pytest.raises(InputError, match="reads at most 512"):
            asyncio.run(too_long())
    finally:
        engine.close()


def test_engine_decodes_waiting_requests_as_one_batch(tmp_path_factory, tiny_llama):
    backend = load_hf_backend(str(chat_run(tmp_path_factory, tiny_llama)))
    rows_per_call: list[int] = []
    hook = backend.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_per_call.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    engine = Engine(backend)
    try:
        with one_torch_thread():
            solo = [backend.decode(solo_tokens(backend, p, Sampling(temperature=0, max_new_tokens=24))).strip()
                    for p in PROMPTS]
            rows_per_call.clear()

            async def together() -> list:
                sampling = Sampling(temperature=0, max_new_tokens=24)
                jobs = [engine.submit([{"role": "user", "content": p}], sampling, stop=[]) for p in PROMPTS]
                return [(await job.result()) for job in jobs]

            results = asyncio.run(together())
    finally:
        hook.remove()
        engine.close()
    assert [r.text for r in results] == solo
    assert max(rows_per_call) > 1  # at least the requests queued behind the first were decoded together
    assert len(rows_per_call) < sum(r.completion_tokens for r in results) / 2
