"""Generate replies for the server with continuous batching: one decode worker runs a batch (`DecodeBatch`), and
between two decode steps finished or cancelled requests leave it and waiting ones join it (their prompt is read in
the next step, then they decode with the rest). Each reply streams back to its request piece by piece.

    engine = Engine.loading(lambda: load_backend("runs/demo", "hf"))   # or Engine(backend), loaded by the caller
    job = engine.submit(messages, Sampling(temperature=0), stop=[])   # from inside the event loop
    async for piece in job.pieces():
        ...
    job.finished   # Finished(text, finish_reason, prompt_tokens, completion_tokens)

A request joins when the batch has a free row (`backend.max_batch`) and its prompt + `max_tokens` fit the KV budget
left (`backend.kv_tokens`); until then it waits, and past `max_waiting` waiting requests `submit` refuses with
`EngineBusy` (the server answers 503 with Retry-After). Sampling settings are per request, so any requests share a
step. Text (incremental decoding, stop strings) is `ReplyText`'s job.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from chattune.errors import InputError
from chattune.generate.backend import DecodeBackend, DecodeBatch
from chattune.generate.logprobs import TokenLogprob
from chattune.generate.sampling import Sampling
from chattune.generate.text import ReplyText

log = logging.getLogger("chattune.serve")

MAX_WAITING = 32  # requests waiting for a row; more are refused with 503 rather than left to time out


@dataclass
class Finished:
    text: str
    finish_reason: str  # "stop" (end of turn or a stop string), "length" (max_tokens), "cancelled" (client left)
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Job:
    prompt_ids: list[int]
    sampling: Sampling
    stop: list[str]
    on_finish: Callable[[Finished], None] | None
    loop: asyncio.AbstractEventLoop
    top_logprobs: int | None = None  # note log-probabilities (with this many alternatives) for every reply token
    # str pieces (each after the log-probabilities of its tokens, when asked), then Finished or an exception
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: Finished | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # those delivered so far (read in the event loop)

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event: str | list[TokenLogprob] | Finished | BaseException) -> None:
        """Called from the worker thread; the event loop delivers the event (none is left to after shutdown)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def pieces(self) -> AsyncIterator[str]:
        """The reply as it is generated; afterwards `self.finished` holds the whole reply and its counts."""
        while True:
            event = await self.events.get()
            if isinstance(event, Finished):
                self.finished = event
                return
            if isinstance(event, BaseException):
                raise event
            if isinstance(event, list):
                self.logprobs += event
                continue
            yield event

    async def result(self) -> Finished:
        async for _ in self.pieces():
            pass
        return self.finished


class EngineBusy(Exception):
    """Too many requests are waiting (or the server is shutting down); the client should retry later."""


@dataclass
class _Row:
    """A job in the running batch."""

    job: Job
    reply: ReplyText
    reserved: int  # KV tokens it may use: prompt + max_new_tokens
    count: int = 0  # tokens generated
    done: bool = False


class Engine:
    def __init__(self, backend: DecodeBackend, max_waiting: int = MAX_WAITING):
        self._start(lambda: backend, max_waiting)

    @classmethod
    def loading(cls, load: Callable[[], DecodeBackend], max_waiting: int = MAX_WAITING) -> Engine:
        """An engine whose backend `load()` builds in the decode thread itself; returns once it is loaded (a load
        error is raised here). Why: once the main thread has run a multi-threaded torch op (loading a model does),
        a packed decode step in another thread took ~58 ms instead of ~44 ms (SmolLM2, 1 row, 2 threads, AMD EPYC
        Zen 4); loaded and run in one thread, it is as fast as in the main thread. The server's main thread then
        runs no torch work, only the event loop."""
        engine = cls.__new__(cls)
        engine._start(load, max_waiting)
        return engine

    def _start(self, load: Callable[[], DecodeBackend], max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: dict[int, _Row] = {}
        self._wake = threading.Condition()
        self._draining = self._closing = False
        self._load_error: BaseException | None = None
        loaded = threading.Event()
        self._worker = threading.Thread(target=self._work, args=(load, loaded), name="chattune-decode", daemon=True)
        self._worker.start()
        loaded.wait()
        if self._load_error is not None:
            raise self._load_error

    def submit(self, messages: list[dict], sampling: Sampling, stop: list[str],
               on_finish: Callable[[Finished], None] | None = None, top_logprobs: int | None = None) -> Job:
        """Queue a reply to `messages`; call from the event loop. `on_finish` runs in the worker once the reply is
        complete or cancelled, before the client is told it ended, so every reply is recorded exactly once. With
        `top_logprobs`, `job.logprobs` fills with the reply tokens' log-probabilities as its pieces arrive."""
        return self.submit_choices(messages, [sampling], stop, [on_finish], top_logprobs)[0]

    def submit_choices(self, messages: list[dict], samplings: list[Sampling], stop: list[str],
                       on_finishes: list[Callable[[Finished], None] | None], top_logprobs: int | None = None
                       ) -> list[Job]:
        """Several replies to one conversation (OpenAI's `n`), one per sampling, queued together: all are taken or,
        with no room for all of them, none (EngineBusy). They join the same batch, so they decode together."""
        prompt_ids = self.backend.prompt_ids(messages)
        limit = min(self.backend.context_length, self.backend.kv_tokens)
        if len(prompt_ids) >= limit:
            raise InputError(f"the conversation is {len(prompt_ids)} tokens but the model reads at most {limit}; "
                             "send fewer or shorter messages")
        loop = asyncio.get_running_loop()
        jobs = [Job(prompt_ids, replace(sampling, max_new_tokens=min(sampling.max_new_tokens, limit - len(prompt_ids))),
                    stop, on_finish, loop, top_logprobs)
                for sampling, on_finish in zip(samplings, on_finishes, strict=True)]
        with self._wake:
            if self._draining:
                raise EngineBusy("the server is shutting down; retry in a few seconds")
            if len(self._waiting) + len(jobs) > self.max_waiting:
                raise EngineBusy(f"{len(self._waiting)} requests are already waiting (at most {self.max_waiting}); "
                                 "retry in a few seconds")
            self._waiting.extend(jobs)
            self._wake.notify()
        return jobs

    @property
    def load(self) -> dict:
        """Requests decoding and waiting now."""
        with self._wake:
            return {"running": len(self._running), "waiting": len(self._waiting)}

    def drain(self) -> None:
        """Shutting down: refuse new requests and end every running and waiting one now, as cancelled (each is
        recorded and its stream ends)."""
        with self._wake:
            self._draining = True
            for job in [*self._waiting, *(row.job for row in self._running.values())]:
                job.cancel()
            self._wake.notify()

    def close(self) -> None:
        self.drain()
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._worker.join()

    def _work(self, load: Callable[[], DecodeBackend], loaded: threading.Event) -> None:
        try:
            self.backend = load()
        except BaseException as error:  # the caller's to report (a bad run folder is one error line)
            self._load_error = error
            return
        finally:
            loaded.set()
        batch = self.backend.new_batch()
        while self._admit(batch):
            try:
                tokens = batch.step()
            except Exception as error:  # the server boundary: these requests fail, the worker serves the next
                log.exception("generation failed")
                for row in self._take_all_running():
                    row.job.emit(error)
                batch = self.backend.new_batch()
                continue
            for row_id, token_id in tokens.items():
                self._add_token(batch, row_id, token_id)
            for row_id, row in list(self._running.items()):
                if row.done or row.job.cancelled.is_set():
                    batch.remove(row_id)
                    with self._wake:
                        del self._running[row_id]
                    self._finish(row)

    def _admit(self, batch: DecodeBatch) -> bool:
        """Move waiting jobs into free rows while their KV fits; wait while there is nothing to do. False once the
        engine is closing and nothing runs."""
        with self._wake:
            while not self._running and not self._waiting and not self._closing:
                self._wake.wait()
            reserved = sum(row.reserved for row in self._running.values())
            while self._waiting and len(self._running) < self.backend.max_batch:
                job = self._waiting[0]
                need = len(job.prompt_ids) + job.sampling.max_new_tokens
                if reserved + need > self.backend.kv_tokens and not job.cancelled.is_set():
                    break  # the KV budget is full: it waits for a row to leave
                self._waiting.popleft()
                row = _Row(job, ReplyText(self.backend.decode, job.stop), need)
                if job.cancelled.is_set():  # cancelled while waiting: costs nothing, still recorded
                    self._finish(row)
                    continue
                self._running[batch.add(job.prompt_ids, job.sampling, job.top_logprobs)] = row
                reserved += need
            return bool(self._running) or not self._closing

    def _take_all_running(self) -> list[_Row]:
        with self._wake:
            rows, self._running = list(self._running.values()), {}
        return rows

    def _add_token(self, batch: DecodeBatch, row_id: int, token_id: int) -> None:
        row = self._running[row_id]
        if row.job.top_logprobs is not None:  # sent before the piece holding their tokens; none for end of turn
            noted = batch.take_logprobs(row_id)
            row.job.emit([entry for entry in noted if entry.token_id not in self.backend.stop_ids])
        row.count += 1
        if piece := row.reply.add(token_id):
            row.job.emit(piece)
        row.done = (row.reply.stopped or token_id in self.backend.stop_ids
                    or row.count >= row.job.sampling.max_new_tokens)

    def _finish(self, row: _Row) -> None:
        job, reply = row.job, row.reply
        if not job.cancelled.is_set() and (piece := reply.finish()):
            job.emit(piece)
        ended_turn = bool(reply.token_ids) and reply.token_ids[-1] in self.backend.stop_ids
        reason = "stop" if reply.stopped or ended_turn else "length" if row.done else "cancelled"
        finished = Finished(reply.text, reason, len(job.prompt_ids), len(reply.token_ids))
        try:
            if job.on_finish is not None:
                job.on_finish(finished)
            job.emit(finished)
        except Exception as error:  # the same boundary, for recording one reply
            log.exception("recording a reply failed")
            job.emit(error)

