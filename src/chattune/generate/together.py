"""Decode a fixed set of prompts as one batch, each row stopping on its own: `generate`, `replies` and the tests use
it; the server's engine drives a `DecodeBatch` itself (rows join and leave there).

    decode_together(backend, [prompt_ids], [Sampling(temperature=0)], [lambda token_id: True])
"""

from __future__ import annotations

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
