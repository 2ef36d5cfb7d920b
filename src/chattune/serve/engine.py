"""Generate replies for the server: one decode worker takes requests from a queue and decodes those waiting together
(up to the backend's `max_batch`, when their sampling allows, see `chattune.generate.sampling.batch_key`), and each
reply streams back to its request piece by piece.

    engine = Engine(load_backend("runs/demo", "hf"))
    job = engine.submit(messages, Sampling(temperature=0), stop=[])   # from inside the event loop
    async for piece in job.pieces():
        ...
    job.finished   # Finished(text, finish_reason, prompt_tokens, completion_tokens)

The decode backend sits behind a small interface (`chattune.generate.backend.DecodeBackend`): chat-formatted prompt
ids in, token ids out one at a time; `ReplyText` turns them into text.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

from chattune.errors import InputError
from chattune.generate.backend import DecodeBackend
from chattune.generate.sampling import Sampling, batch_key
from chattune.generate.text import ReplyText

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
        # jobs the worker took from the queue but left out of a batch (other sampling); served first, in order
        self._held: collections.deque[Job] = collections.deque()
        self._closing = False
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
        if self._jobs.qsize() + len(self._held) >= self.max_waiting:
            raise EngineBusy(f"{self.max_waiting} requests are already waiting; retry in a few seconds")
        sampling = replace(sampling, max_new_tokens=min(sampling.max_new_tokens, room))
        job = Job(prompt_ids, sampling, stop, on_finish, asyncio.get_running_loop())
        self._jobs.put(job)
        return job

    def close(self) -> None:
        self._jobs.put(None)
        self._worker.join()

    def _work(self) -> None:
        while batch := self._next_batch():
            try:
                finished = self._decode(batch)
            except Exception as error:  # the server boundary: these requests fail, the worker serves the next
                log.exception("generation failed")
                for job in batch:
                    job.emit(error)
                continue
            for job, result in zip(batch, finished):
                try:
                    if job.on_finish is not None:
                        job.on_finish(result)
                    job.emit(result)
                except Exception as error:  # the same boundary, for recording one reply
                    log.exception("recording a reply failed")
                    job.emit(error)

    def _next_batch(self) -> list[Job]:
        """The oldest waiting job, with up to `max_batch - 1` of those waiting behind it that share its batch key;
        waits when none is waiting, and is empty once the engine is closing."""
        while not self._held and not self._closing:
            self._take(self._jobs.get())
        if not self._held:
            return []
        first = self._held.popleft()
        key = batch_key(first.sampling)
        if self.backend.max_batch == 1 or key is None:
            return [first]
        while not self._closing:  # everything already queued joins the candidates
            try:
                self._take(self._jobs.get_nowait())
            except queue.Empty:
                break
        batch = [first]
        for job in list(self._held):
            if len(batch) < self.backend.max_batch and batch_key(job.sampling) == key:
                self._held.remove(job)
                batch.append(job)
        return batch

    def _take(self, job: Job | None) -> None:
        if job is None:
            self._closing = True
        else:
            self._held.append(job)

    def _decode(self, batch: list[Job]) -> list[Finished]:
        """Decode the batch (one job: `generate`, more: `generate_batch`); a job cancelled while queued costs
        nothing."""
        replies = [ReplyText(self.backend.decode, job.stop) for job in batch]
        live = [(job, reply) for job, reply in zip(batch, replies) if not job.cancelled.is_set()]
        on_tokens = [self._token_handler(job, reply) for job, reply in live]
        if len(live) == 1:
            self.backend.generate(live[0][0].prompt_ids, live[0][0].sampling, on_tokens[0])
        elif live:
            self.backend.generate_batch([job.prompt_ids for job, _ in live], [job.sampling for job, _ in live],
                                        on_tokens)
        return [self._finish(job, reply) for job, reply in zip(batch, replies)]

    @staticmethod
    def _token_handler(job: Job, reply: ReplyText) -> Callable[[int], bool]:
        def on_token(token_id: int) -> bool:
            if piece := reply.add(token_id):
                job.emit(piece)
            return not (reply.stopped or job.cancelled.is_set())

        return on_token

    def _finish(self, job: Job, reply: ReplyText) -> Finished:
        if piece := reply.finish():
            job.emit(piece)
        ended_turn = bool(reply.token_ids) and reply.token_ids[-1] in self.backend.stop_ids
        reason = "cancelled" if job.cancelled.is_set() else "stop" if reply.stopped or ended_turn else "length"
        return Finished(reply.text, reason, len(job.prompt_ids), len(reply.token_ids))
