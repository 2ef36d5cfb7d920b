"""Held-out (context -> reference reply) pairs, and batched, seeded replies to them with a progress bar.

    pairs = reply_pairs(conversations, seed=42)              # one pair per conversation
    replies = generate_replies(backend, pairs, Sampling(temperature=0, max_new_tokens=64), console=console)
    replies[0].text, replies[0].ended                       # ended: stopped on end-of-turn, not cut by the limit

One pair per conversation keeps the pairs independent, which the paired bootstrap assumes; the reply turn is
picked with a seeded RNG so that `chattune eval` on the same run always asks the same questions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chattune.data.conversation import Conversation
from chattune.generate.batch import sampled_replies
from chattune.generate.hf import HFBackend
from chattune.generate.sampling import Sampling
from chattune.generate.text import Reply

# Turns of history given to the model before the reply: user, assistant, user, assistant, user. Longer chit-chat
# histories mostly add prefill time on CPU; five turns carry the thread of a conversation.
CONTEXT_TURNS = 5


@dataclass
class ReplyPair:
    context: Conversation  # ends with a user turn (a system turn, when present, is kept first)
    reference: str  # what the assistant actually said next


def reply_pairs(conversations: list[Conversation], seed: int) -> list[ReplyPair]:
    """One (context, reference) pair per conversation: a seeded choice among its assistant turns."""
    rng = random.Random(seed)
    pairs = []
    for conversation in conversations:
        turns = [index for index, message in enumerate(conversation) if message["role"] == "assistant"]
        assert turns, "cleaned conversations always have an assistant turn"
        index = rng.choice(turns)
        system = [conversation[0]] if conversation[0]["role"] == "system" else []
        history = conversation[len(system) : index][-CONTEXT_TURNS:]
        if history[0]["role"] == "assistant":  # roles alternate, so an odd window starts with the user
            history = history[1:]
        pairs.append(ReplyPair(system + history, conversation[index]["content"]))
    return pairs


def generate_replies(backend: HFBackend, pairs: list[ReplyPair], sampling: Sampling, *, batch_size: int = 32,
                     label: str = "generate", console: Console | None = None) -> list[Reply]:
    """Replies to every pair's context, in the pairs' order, decoded up to `batch_size` at a time, shortest contexts
    first (generate.batch.sampled_replies). 32 rows, not 8: a decode step reads all the weights whatever the rows,
    so 96 greedy replies of up to 40 tokens took 37-39 s instead of 56-66 s (SmolLM2, 2 Zen 4 cores)."""
    columns = (TextColumn(f"[bold blue]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task(label, total=len(pairs))
        # the run's chat template and system prompt, as `chattune chat` and `chattune generate` reply
        groups = sampled_replies(backend, [pair.context for pair in pairs], 1, sampling, batch_size,
                                 on_batch=lambda rows: progress.update(task, advance=rows))
    return [group[0] for group in groups]
