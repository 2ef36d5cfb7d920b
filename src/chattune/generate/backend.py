"""Decode backends: chat-formatted prompt ids in, reply token ids out one at a time, and how to load one.

    backend = load_backend("runs/demo", "hf")            # or "llamacpp" (generate/llamacpp.py)
    reply = ReplyText(backend.decode, stop=[])
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0), lambda t: print(reply.add(t)) or True)

Serving (`serve.engine`) and terminal chat both decode through this interface, so a faster backend only has to
produce the same token ids; everything about text (incremental decoding, stop strings, whitespace) is `ReplyText`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from chattune.data.conversation import Conversation
from chattune.errors import InputError
from chattune.generate.sampling import Sampling

BACKENDS = ("hf", "llamacpp")


class DecodeBackend(Protocol):
    stop_ids: list[int]  # token ids that end a reply (end-of-turn, EOS)
    context_length: int  # prompt + reply tokens the model can read
    max_batch: int  # most requests `generate_batch` decodes at once; 1 means one at a time

    def prompt_ids(self, messages: Conversation) -> list[int]:
        """The conversation rendered with the chat template (and default system prompt), ready for a reply."""

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated token ids, special tokens left out."""

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        """Call `on_token(id)` for every new token; stop at a stop id, at `sampling.max_new_tokens`, or as soon as
        `on_token` returns False."""

    def generate_batch(self, prompts: list[list[int]], samplings: list[Sampling],
                       on_tokens: list[Callable[[int], bool]]) -> None:
        """`generate` for up to `max_batch` prompts whose samplings share a `sampling.batch_key`; each row calls its
        own `on_token` and stops on its own (stop id, its `max_new_tokens`, its `on_token` returning False)."""


def load_backend(name: str, backend: str = "hf", quant: str = "q8_0") -> DecodeBackend:
    """A run folder or model behind the chosen backend; llamacpp exports the run to GGUF once."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "llamacpp":
        from chattune.generate.llamacpp import LlamaCppBackend

        return LlamaCppBackend.load(name, quant)
    from chattune.generate.hf import load_hf_backend

    return load_hf_backend(name)
