"""Generate replies for the server: one decode worker takes requests from a queue, so concurrent requests never
share model state, and each reply streams back to its request piece by piece.

    engine = Engine(load_backend("runs/demo", "hf"))
    job = engine.submit(messages, Sampling(temperature=0), stop=[])   # from inside the event loop
    async for piece in job.pieces():
        ...
    job.finished   # Finished(text, finish_reason, prompt_tokens, completion_tokens)

The decode backend sits behind a small interface (`chattune.decode.DecodeBackend`): chat-formatted prompt ids in,
token ids out one at a time; `ReplyText` turns them into text.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from chattune.decode import DecodeBackend, ReplyText
from chattune.errors import InputError
from chattune.inference import Sampling

log = logging.getLogger("chattune.serve")

MAX_WAITING = 32  # requests queued behind the one decoding; more are refused with 503 rather than left to time out


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
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # str pieces, then Finished or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    finished: Finished | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, event: str | Finished | BaseException) -> None:
        """Called from the worker thread; the event loop delivers the event (none is left to after shutdown)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)

    async def pieces(self) -> AsyncIterator[str]:
        """The reply as it is generated; afterwards `self.finished` holds the whole reply and its counts."""
        while not isinstance(event := await self.events.get(), Finished):
            if isinstance(event, BaseException):
                raise event
            yield event
        self.finished = event

    async def result(self) -> Finished:
        async for _ in self.pieces():
            pass
        return self.finished


class EngineBusy(Exception):
    """Too many requests are waiting; the client should retry later."""


class Engine:
    def __init__(self, backend: DecodeBackend, max_waiting: int = MAX_WAITING):
        self.backend, self.max_waiting = backend, max_waiting
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="chattune-decode", daemon=True)
        self._worker.start()

    def submit(self, messages: list[dict], sampling: Sampling, stop: list[str],
               on_finish: Callable[[Finished], None] | None = None) -> Job:
        """Queue a reply to `messages`; call from the event loop. `on_finish` runs in the worker once the reply is
        complete or cancelled, before the client is told it ended, so every reply is recorded exactly once."""
        prompt_ids = self.backend.prompt_ids(messages)
        room = self.backend.context_length - len(prompt_ids)
        if room < 1:
            raise InputError(f"the conversation is {len(prompt_ids)} tokens but the model reads at most "
                             f"{self.backend.context_length}; send fewer or shorter messages")
        if self._jobs.qsize() >= self.max_waiting:
            raise EngineBusy(f"{self.max_waiting} requests are already waiting; retry in a few seconds")
        sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
        job = Job(prompt_ids, sampling, stop, on_finish, asyncio.get_running_loop())
        self._jobs.put(job)
        return job

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                finished = self._decode(job)
                if job.on_finish is not None:
                    job.on_finish(finished)
                job.emit(finished)
            except Exception as error:  # the server boundary: this request fails, the worker serves the next
                log.exception("generation failed")
                job.emit(error)

    def _decode(self, job: Job) -> Finished:
        reply = ReplyText(self.backend.decode, job.stop)

        def on_token(token_id: int) -> bool:
            if piece := reply.add(token_id):
                job.emit(piece)
            return not (reply.stopped or job.cancelled.is_set())

        if not job.cancelled.is_set():  # a client that left while queued costs nothing
            self.backend.generate(job.prompt_ids, job.sampling, on_token)
        if piece := reply.finish():
            job.emit(piece)
        ended_turn = bool(reply.token_ids) and reply.token_ids[-1] in self.backend.stop_ids
        reason = "cancelled" if job.cancelled.is_set() else "stop" if reply.stopped or ended_turn else "length"
        return Finished(reply.text, reason, len(job.prompt_ids), len(reply.token_ids))
