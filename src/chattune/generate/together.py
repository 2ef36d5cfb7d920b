"""Decode a fixed set of prompts as one batch, each row stopping on its own: `generate`, `replies` and the tests use
it; the server's engine drives a `DecodeBatch` itself (rows join and leave there).

    decode_together(backend, [prompt_ids], [Sampling(temperature=0)], [lambda token_id: True])
    tokens_together(backend, prompts, Sampling(seed=1))     # every row's token ids, row i seeded with seed + i
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from chattune.generate.sampling import Sampling


def decode_together(backend, prompts: list[list[int]], samplings: list[Sampling],
                    on_tokens: list[Callable[[int], bool]], batch=None) -> None:
    """Decode the prompts as one batch (a new one, or `batch`); each row calls its own `on_token` and stops on its
    own (a stop id, its `max_new_tokens`, its `on_token` returning False). `generate` is this with one prompt. Rows
    leave the batch however decoding ends (an interrupted chat turn too), so a kept batch holds no stale row."""
    batch = batch if batch is not None else backend.new_batch()
    rows = {batch.add(prompt, sampling): (sampling.max_new_tokens, on_token)
            for prompt, sampling, on_token in zip(prompts, samplings, on_tokens, strict=True)}
    counts = dict.fromkeys(rows, 0)
    try:
        while rows:
            for row, token_id in batch.step().items():
                counts[row] += 1
                max_new_tokens, on_token = rows[row]
                if not on_token(token_id) or token_id in backend.stop_ids or counts[row] >= max_new_tokens:
                    batch.remove(row)
                    del rows[row]
    finally:
        for row in rows:
            batch.remove(row)


def tokens_together(backend, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """Every prompt's reply token ids (its stop token included), decoded as one batch. A seeded `sampling` seeds row
    i with `seed + i`, so equal prompts (k samples of one context, n dialogues on one topic) still differ."""
    tokens: list[list[int]] = [[] for _ in prompts]
    samplings = [sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + row)
                 for row in range(len(prompts))]
    decode_together(backend, prompts, samplings,
                    [lambda token_id, row=row: tokens[row].append(token_id) or True for row in range(len(prompts))])
    return tokens
