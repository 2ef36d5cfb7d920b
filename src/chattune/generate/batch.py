"""`chattune generate`: replies to one prompt or a file of prompts, a batch at a time.

    for prompt, reply in reply_to_prompts("runs/demo", read_prompts("prompts.txt"), Sampling(temperature=0)):
        print(prompt, "->", reply)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

from chattune.errors import InputError
from chattune.generate.hf import load_hf_backend
from chattune.generate.sampling import Sampling


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per non-empty line of a UTF-8 text file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: not UTF-8 (offset {error.start}); save the prompts as UTF-8") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{path}: no prompts (one per line)")
    return prompts


def reply_to_prompts(name: str, prompts: list[str], sampling: Sampling, batch_size: int = 8
                     ) -> Iterator[tuple[str, str]]:
    """(prompt, reply) for each prompt, each a one-turn conversation, `batch_size` decoded together."""
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    backend = load_hf_backend(name, packed=True)
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first : first + batch_size]
        replies = backend.replies([[{"role": "user", "content": prompt}] for prompt in chunk], sampling)
        yield from zip(chunk, (reply.text for reply in replies))


# Rows x (longest prompt + max_new_tokens) a batch may hold: its KV cache grows with that product (SmolLM2: ~46 KB per
# token, ~380 MB here). Shortest prompts go first, so one long context makes its own smaller batch instead of
# padding 31 short ones to its length (a 457-token context in the demo's eval took a 32-row batch to ~0.7 GB of KV).
MAX_BATCH_TOKENS = 8192


def sampled_replies(backend, contexts: list[list[dict]], k: int, sampling: Sampling, batch_rows: int = 32,
                    on_batch: Callable[[int], None] | None = None) -> list[list]:
    """k replies (generate.text.Reply) to each context: every context repeated k times and decoded up to
    `batch_rows` rows (and MAX_BATCH_TOKENS) at a time over one KV cache, shortest prompts first (a batch is padded
    to its longest prompt, and the prompt's forward pass is most of the cost of a short reply). A seeded `sampling`
    seeds row r with seed + r (`replies` adds the row within a batch, the batch adds its first row), so the same call
    draws the same replies. `on_batch(rows)` after each batch (a progress bar)."""
    lengths = [len(backend.prompt_ids(context)) for context in contexts]
    order = sorted(range(len(contexts)), key=lengths.__getitem__)
    replies = []
    for batch in _batches([index for index in order for _ in range(k)], lengths, batch_rows, sampling.max_new_tokens):
        seed = None if sampling.seed is None else sampling.seed + len(replies)
        replies += backend.replies([contexts[index] for index in batch], dataclasses.replace(sampling, seed=seed))
        if on_batch is not None:
            on_batch(len(batch))
    groups = dict(zip(order, (replies[first : first + k] for first in range(0, len(replies), k))))
    return [groups[index] for index in range(len(contexts))]


def _batches(rows: list[int], lengths: list[int], max_rows: int, max_new_tokens: int) -> Iterator[list[int]]:
    """`rows` (context indices, shortest first) cut into batches of at most `max_rows` and MAX_BATCH_TOKENS."""
    batch: list[int] = []
    for row in rows:  # the row joining is the batch's longest
        if batch and (len(batch) == max_rows or (len(batch) + 1) * (lengths[row] + max_new_tokens) > MAX_BATCH_TOKENS):
            yield batch
            batch = []
        batch.append(row)
    if batch:
        yield batch
