"""The decode engine without HTTP: reply text assembly, finish reasons, cancelling, and the HF backend's prompt."""

from __future__ import annotations

import asyncio
import threading

import pytest
from serve_helpers import chat_run

from chattune.errors import InputError
from chattune.inference import Sampling, load_chatbot
from chattune.decode import HFGenerateBackend, ReplyText
from chattune.serve.engine import Engine

STOP_ID = 0


class ScriptedBackend:
    """Generates `script` token by token (token i decodes to chr(i)), waiting for `gate` before each token."""

    stop_ids = [STOP_ID]
    context_length = 100

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


def test_reply_pieces_add_up_and_stop_strings_cut(tiny_llama):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    text = "  😀 héllo good morning\nUser: hi there"
    reply = ReplyText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), stop=["\nUser:"])
    pieces = [reply.add(token_id) for token_id in tokenizer(text, add_special_tokens=False)["input_ids"]]
    pieces.append(reply.finish())
    assert reply.stopped and "".join(pieces) == reply.text == "😀 héllo good morning"
    assert not any("\ufffd" in piece for piece in pieces)  # half an emoji is held back, never sent
    assert sum(bool(piece) for piece in pieces) > 3

    plain = ReplyText(lambda ids: tokenizer.decode(ids), stop=[])
    pieces = [plain.add(t) for t in tokenizer(" i am fine \n", add_special_tokens=False)["input_ids"]]
    assert "".join(pieces) + plain.finish() == plain.text == "i am fine" and not plain.stopped


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
    chatbot = load_chatbot(str(chat_run(tmp_path_factory, tiny_llama)))
    chatbot.system_prompt = "be brief"
    backend = HFGenerateBackend(chatbot)
    prompt = chatbot.tokenizer.decode(backend.prompt_ids([{"role": "user", "content": "hi"}]))
    assert prompt.startswith("<|im_start|>system\nbe brief<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    engine = Engine(backend)
    try:
        async def too_long() -> None:
            engine.submit([{"role": "user", "content": "hello " * 600}], Sampling(), stop=[])

        with pytest.raises(InputError, match="reads at most 512"):
            asyncio.run(too_long())
    finally:
        engine.close()
