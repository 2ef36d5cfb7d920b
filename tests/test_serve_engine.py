"""The decode engine without HTTP: reply text assembly, finish reasons, cancelling, and the HF backend's prompt."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest
from serve_helpers import LEARNED, chat_run, one_torch_thread

from chattune.errors import InputError
from chattune.inference import Sampling, load_chatbot
from chattune.decode import HFGenerateBackend, ReplyText, batch_key
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


# Eight prompts of different lengths (left padding differs per row): the learned ones and some the model never saw.
PROMPTS = [*LEARNED, "hello", "what is your name", "tell me a story about a cat", "food", "how are you today"]


def solo_tokens(backend: HFGenerateBackend, prompt: str, sampling: Sampling) -> list[int]:
    tokens: list[int] = []
    backend.generate(backend.prompt_ids([{"role": "user", "content": prompt}]), sampling,
                     lambda t: tokens.append(t) or True)
    return tokens


def test_hf_batch_equals_solo_greedy_and_a_stopped_row_leaves_the_others(tmp_path_factory, tiny_llama):
    backend = HFGenerateBackend(load_chatbot(str(chat_run(tmp_path_factory, tiny_llama))))
    sampling = Sampling(temperature=0, max_new_tokens=24)
    with one_torch_thread():
        solo = [solo_tokens(backend, prompt, sampling) for prompt in PROMPTS]
        batched: list[list[int]] = [[] for _ in PROMPTS]

        def on_token(row: int):
            # row 1 behaves like a client that left after 3 tokens
            return lambda t: batched[row].append(t) or row != 1 or len(batched[row]) < 3

        samplings = [replace(sampling, max_new_tokens=5) if row == 2 else sampling for row in range(len(PROMPTS))]
        backend.generate_batch([backend.prompt_ids([{"role": "user", "content": p}]) for p in PROMPTS], samplings,
                               [on_token(row) for row in range(len(PROMPTS))])
    assert backend.decode(solo[0]) == LEARNED[PROMPTS[0]]
    assert batched[1] == solo[1][:3] and batched[2] == solo[2][:5]  # stopped by its client, by its own max
    assert [b for row, b in enumerate(batched) if row not in (1, 2)] == \
        [s for row, s in enumerate(solo) if row not in (1, 2)]
    assert len({len(s) for s in solo}) > 1  # rows ended at different steps (end of turn vs max_new_tokens)


def test_hf_batch_sampling_at_a_tiny_temperature_is_greedy(tmp_path_factory, tiny_llama):
    backend = HFGenerateBackend(load_chatbot(str(chat_run(tmp_path_factory, tiny_llama))))
    prompts = PROMPTS[:4]
    with one_torch_thread():
        greedy = [solo_tokens(backend, p, Sampling(temperature=0, max_new_tokens=12)) for p in prompts]
        sampled: list[list[int]] = [[] for _ in prompts]
        backend.generate_batch([backend.prompt_ids([{"role": "user", "content": p}]) for p in prompts],
                               [Sampling(temperature=1e-4, top_p=0.9, max_new_tokens=12)] * len(prompts),
                               [lambda t, row=row: sampled[row].append(t) or True for row in range(len(prompts))])
    assert sampled == greedy


def test_engine_decodes_waiting_requests_as_one_batch(tmp_path_factory, tiny_llama):
    backend = HFGenerateBackend(load_chatbot(str(chat_run(tmp_path_factory, tiny_llama))))
    rows_per_call: list[int] = []
    hook = backend.chatbot.model.register_forward_pre_hook(
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


def test_batching_rule():
    greedy, warm = Sampling(temperature=0, top_p=0.5), Sampling(temperature=0.7)
    assert batch_key(greedy) == batch_key(Sampling(temperature=0)) != batch_key(warm)
    assert batch_key(warm) != batch_key(Sampling(temperature=0.7, top_p=0.5))
    assert batch_key(Sampling(seed=1)) is None  # a seeded reply is reproducible only alone
