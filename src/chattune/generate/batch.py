"""`chattune generate`: replies to one prompt or a file of prompts, a batch at a time.

    for prompt, reply in reply_to_prompts("runs/demo", read_prompts("prompts.txt"), Sampling(temperature=0)):
        print(prompt, "->", reply)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
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


def sampled_replies(backend, contexts: list[list[dict]], k: int, sampling: Sampling, batch_rows: int = 32
                    ) -> list[list]:
    """k sampled replies (generate.text.Reply) to each context: every context repeated k times and decoded
    `batch_rows` rows at a time over one KV cache, shortest contexts first (a batch is padded to its longest
    prompt, and the prompt's forward pass is most of the cost of a short reply). A seeded `sampling` seeds row r
    with seed + r (`replies` adds the row within a batch, the batch adds its first row), so the same call draws the
    same replies."""
    order = sorted(range(len(contexts)), key=lambda index: sum(len(turn["content"]) for turn in contexts[index]))
    rows = [contexts[index] for index in order for _ in range(k)]
    replies = []
    for first in range(0, len(rows), batch_rows):
        seed = None if sampling.seed is None else sampling.seed + first
        replies += backend.replies(rows[first : first + batch_rows], dataclasses.replace(sampling, seed=seed))
    groups = dict(zip(order, (replies[first : first + k] for first in range(0, len(replies), k))))
    return [groups[index] for index in range(len(contexts))]
