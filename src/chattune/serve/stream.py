"""The replies of one chat completion request on the wire: one JSON body, or Server-Sent Events with the pieces of its
`n` choices as they are generated, each with the log-probabilities of its tokens when asked.

    events = sse(jobs, request, Reply(reply_id, created, model_id, decode), include_usage=True, keepalive_every=5)
    completion(jobs_finished, Reply(...))     # the non-streamed ChatCompletion
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from starlette.requests import Request

from chattune.generate.logprobs import TokenLogprob
from chattune.serve.engine import Finished, Job
from chattune.serve.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    ErrorBody,
    ErrorResponse,
    ReplyMessage,
    TopLogprob,
    Usage,
)
from chattune.serve.schemas import TokenLogprob as WireLogprob

log = logging.getLogger("chattune.serve")


@dataclass
class Reply:
    """What every chunk of one request's reply carries."""

    id: str
    created: int
    model: str
    decode: Callable[[list[int]], str]  # token ids -> text (the backend's tokenizer)

    def logprobs(self, noted: list[TokenLogprob]) -> ChoiceLogprobs:
        def entry(token_id: int, logprob: float) -> dict:
            token = self.decode([token_id])
            return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

        return ChoiceLogprobs(content=[
            WireLogprob(**entry(n.token_id, n.logprob), top_logprobs=[TopLogprob(**entry(i, p)) for i, p in n.top])
            for n in noted])

    def chunk(self, index: int, delta: Delta, finish_reason: str | None = None,
              logprobs: ChoiceLogprobs | None = None) -> str:
        choice = ChunkChoice(index=index, delta=delta, finish_reason=finish_reason, logprobs=logprobs)
        event = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[choice])
        return f"data: {event.model_dump_json()}\n\n"

    def usage_chunk(self, usage: Usage) -> str:
        event = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=[], usage=usage)
        return f"data: {event.model_dump_json()}\n\n"


def usage(finished: list[Finished]) -> Usage:
    """One prompt, read once per choice but counted once (as OpenAI counts `n`), and every choice's reply tokens."""
    prompt, completion = finished[0].prompt_tokens, sum(f.completion_tokens for f in finished)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def completion(jobs: list[Job], reply: Reply, with_logprobs: bool) -> ChatCompletion:
    finished = [job.finished for job in jobs]
    choices = [Choice(index=index, message=ReplyMessage(content=done.text), finish_reason=done.finish_reason,
                      logprobs=reply.logprobs(job.logprobs) if with_logprobs else None)
               for index, (job, done) in enumerate(zip(jobs, finished))]
    return ChatCompletion(id=reply.id, created=reply.created, model=reply.model, usage=usage(finished),
                          choices=choices)


async def results(jobs: list[Job], request: Request) -> list[Finished]:
    """Every job's whole reply; all are cancelled when the client disconnects first."""
    watcher = asyncio.create_task(cancel_when_disconnected(request, jobs))
    try:
        return list(await asyncio.gather(*(job.result() for job in jobs)))
    finally:
        watcher.cancel()


async def sse(jobs: list[Job], request: Request, reply: Reply, include_usage: bool, with_logprobs: bool,
              keepalive_every: float) -> AsyncIterator[str]:
    """Server-Sent Events: a role chunk per choice, one chunk per piece of text (with `choices[0].index` saying
    whose), a chunk with each choice's finish reason, the usage chunk if asked, [DONE]; an SSE comment whenever the
    stream has been silent for `keepalive_every` seconds (waiting for a row, a long prompt)."""
    watcher = asyncio.create_task(cancel_when_disconnected(request, jobs))
    try:
        for index in range(len(jobs)):
            yield reply.chunk(index, Delta(role="assistant", content=""))
        async for index, piece, noted in _merged(jobs, keepalive_every):
            logprobs = reply.logprobs(noted) if with_logprobs and (noted or piece) else None
            if index is None:
                yield ": keep-alive\n\n"
            elif piece is not None:
                yield reply.chunk(index, Delta(content=piece), logprobs=logprobs)
            elif jobs[index].finished.finish_reason == "cancelled":  # the client is gone
                return
            else:
                yield reply.chunk(index, Delta(), jobs[index].finished.finish_reason, logprobs)
        if include_usage:
            yield reply.usage_chunk(usage([job.finished for job in jobs]))
        yield "data: [DONE]\n\n"
    except Exception:  # headers are sent: the error can only travel as an event
        log.exception("streamed generation failed")
        error = ErrorResponse(error=ErrorBody(message="generation failed; see the server log", type="server_error"))
        yield f"data: {error.model_dump_json()}\n\n"
    finally:
        watcher.cancel()
        for job in jobs:
            job.cancel()  # no-op once finished; stops the generation when the client went away mid-reply


async def _merged(jobs: list[Job], idle_every: float
                  ) -> AsyncIterator[tuple[int | None, str | None, list[TokenLogprob]]]:
    """(choice index, piece, log-probabilities of its tokens) from every job as they come; (index, None, the
    remaining log-probabilities) when a job ends; (None, None, []) after `idle_every` seconds of silence."""
    queue: asyncio.Queue = asyncio.Queue()

    async def forward(index: int, job: Job) -> None:
        sent = 0
        try:
            async for piece in job.pieces():
                await queue.put((index, piece, job.logprobs[sent:]))
                sent = len(job.logprobs)
            await queue.put((index, None, job.logprobs[sent:]))
        except Exception as error:  # raised in the consumer below
            await queue.put((index, error, []))

    tasks = [asyncio.create_task(forward(index, job)) for index, job in enumerate(jobs)]
    try:
        running = len(jobs)
        while running:
            try:
                index, event, noted = await asyncio.wait_for(queue.get(), idle_every)
            except TimeoutError:
                yield None, None, []
                continue
            if isinstance(event, BaseException):
                raise event
            running -= event is None
            yield index, event, noted
    finally:
        for task in tasks:
            task.cancel()


async def cancel_when_disconnected(request: Request, jobs: list[Job]) -> None:
    """Cancel the jobs when the client disconnects (closed tab, stop button, timeout), even while they wait."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.cancel()
