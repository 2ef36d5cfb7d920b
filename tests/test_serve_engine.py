"""The decode engine without HTTP: finish reasons, cancelling, continuous batching (join mid-decode, leave, per-request
sampling, the KV budget), the waiting limit, the context limit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from serve_helpers import PROMPTS, STOP_ID, ScriptedBackend, chat_run, one_torch_thread, solo_tokens

from chattune.errors import InputError
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.sampling import Sampling
from chattune.serve.engine import Engine, EngineBusy



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
        calls = backend.added

        async def cancel_while_queued() -> tuple:
            first = engine.submit([{"role": "user", "content": "x"}], Sampling(), stop=[])
            while backend.added == calls:  # the first is decoding (held at the gate)
                await asyncio.sleep(0.01)
            second = engine.submit([{"role": "user", "content": "y"}], Sampling(), stop=[])
            second.cancel()
            for _ in range(10):
                backend.gate.release()
            return await first.result(), await second.result()

        first, second = asyncio.run(cancel_while_queued())
        assert (first.text, first.finish_reason) == ("abcdef", "stop")
        assert (second.finish_reason, second.completion_tokens) == ("cancelled", 0) and backend.added == calls + 1
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


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def test_a_request_joins_a_running_batch_and_mixed_sampling_matches_solo(tmp_path_factory, tiny_llama):
    backend = load_hf_backend(str(chat_run(tmp_path_factory, tiny_llama)))
    story = Sampling(temperature=0, max_new_tokens=300, no_repeat_ngram_size=0)  # "la la ...": a loop on purpose
    crowd = [("hello how are you", Sampling(temperature=0, max_new_tokens=16)),
             ("tell me a story", Sampling(temperature=1.0, seed=3, max_new_tokens=16)),
             ("what is your name", Sampling(temperature=0.7, top_p=0.8, seed=4, max_new_tokens=16))]
    engine = Engine(backend)
    try:
        with one_torch_thread():
            solo = [backend.decode(solo_tokens(backend, p, s)).strip() for p, s in crowd]

            async def late_joiners() -> tuple:
                long_job = engine.submit(user("tell me a story"), story, stop=[])
                pieces = long_job.pieces()
                for _ in range(5):
                    await anext(pieces)
                jobs = [engine.submit(user(p), s, stop=[]) for p, s in crowd]
                first_pieces = [asyncio.create_task(anext(job.pieces())) for job in jobs]
                joined_at = [(await piece, time.monotonic())[1] for piece in first_pieces]
                results = [await job.result() for job in jobs]
                async for _ in pieces:
                    pass
                return joined_at, time.monotonic(), results, long_job.finished

            joined_at, long_ended_at, results, long_reply = asyncio.run(late_joiners())
    finally:
        engine.close()
    # each newcomer's first token came while the long reply was still decoding, not after it
    assert max(joined_at) < long_ended_at and long_reply.completion_tokens > 100
    assert [r.text for r in results] == solo  # greedy and seeded replies in a crowd equal their solo replies


def test_cancelling_mid_batch_frees_the_row_for_a_waiting_request():
    backend = ScriptedBackend([ord("a")] * 90, max_batch=2)
    backend.gate = threading.Semaphore(0)
    engine = Engine(backend)
    try:
        async def main() -> tuple:
            first, second, third = (engine.submit(user(p), Sampling(max_new_tokens=90), stop=[]) for p in "xyz")
            for _ in range(3):
                backend.gate.release()
            while backend.added < 2:
                await asyncio.sleep(0.01)
            first.cancel()  # the third waits for a row, until the first leaves
            for _ in range(200):
                backend.gate.release()
            return await first.result(), await second.result(), await third.result()

        first, second, third = asyncio.run(main())
    finally:
        engine.close()
    assert first.finish_reason == "cancelled" and first.completion_tokens < 90
    assert (second.finish_reason, third.finish_reason) == ("length", "length")
    assert max(backend.widths) == 2 and backend.added == 3
    # the third took the first's row at the next step, while the second decoded on: two rows for all its 90 steps
    assert backend.widths[:90] == [2] * 90


def test_the_kv_budget_holds_a_request_back_and_the_waiting_limit_gives_busy():
    backend = ScriptedBackend([ord("a")] * 20, max_batch=4, kv_tokens=40)  # one request needs 1 + 20 tokens
    engine = Engine(backend, max_waiting=2)
    try:
        assert run_jobs(engine, [("x", 20), ("y", 20)]) == [("a" * 20, "length", 20)] * 2
        assert max(backend.widths) == 1  # two would need 42 tokens of KV: the second waited

        backend.gate = threading.Semaphore(0)

        async def crowd() -> None:
            jobs = [engine.submit(user("x"), Sampling(max_new_tokens=20), stop=[])]
            while backend.added < 3:  # the first runs; two more may wait
                await asyncio.sleep(0.01)
            jobs += [engine.submit(user(p), Sampling(max_new_tokens=20), stop=[]) for p in "yz"]
            with pytest.raises(EngineBusy, match="2 requests are already waiting"):
                engine.submit(user("w"), Sampling(), stop=[])
            for _ in range(100):
                backend.gate.release()
            await asyncio.gather(*(job.result() for job in jobs))

        asyncio.run(crowd())
    finally:
        engine.close()


def test_a_loading_engine_builds_its_backend_in_the_decode_thread_and_raises_its_load_error():
    """`chattune serve` loads the model in the thread that decodes with it (Engine.loading says why)."""
    loaded_in = []

    def load():
        loaded_in.append(threading.current_thread().name)
        return ScriptedBackend([ord(c) for c in "ok"] + [STOP_ID])

    engine = Engine.loading(load)
    try:
        assert loaded_in == ["chattune-decode"]
        assert run_jobs(engine, [("x", 10)]) == [("ok", "stop", 3)]
    finally:
        engine.close()

    def broken():
        raise InputError("runs/missing: not a chattune run folder")

    with pytest.raises(InputError, match="not a chattune run folder"):
        Engine.loading(broken)
