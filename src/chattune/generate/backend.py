"""Decode backends: chat-formatted prompt ids in, reply token ids out, and how to load one.

    backend = load_backend("runs/demo", "hf")            # or "llamacpp" (generate/llamacpp.py)
    reply = ReplyText(backend.decode, stop=[])
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0), lambda t: print(reply.add(t)) or True)

    batch = backend.new_batch()                          # continuous batching (the server's engine)
    row = batch.add(prompt_ids, Sampling(seed=1))        # joins at the next step
    batch.step()                                         # {row: next token id} for every row
    batch.remove(row)                                    # leaves between steps; its KV no longer counts

Serving (`serve.engine`) and terminal chat both decode through this interface, so a faster backend only has to
produce the same token ids; everything about text (incremental decoding, stop strings, whitespace) is `ReplyText`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from chattune.data.conversation import Conversation
from chattune.errors import InputError
from chattune.generate.sampling import Sampling

if TYPE_CHECKING:  # its module imports torch; the CLI reads BACKENDS and must start fast
    from chattune.generate.logprobs import TokenLogprob

BACKENDS = ("hf", "llamacpp")


class DecodeBatch(Protocol):
    """Requests decoding together; rows join and leave between steps, each with its own sampling."""

    def add(self, prompt_ids: list[int], sampling: Sampling, top_logprobs: int | None = None) -> int:
        """A new row (its id); its prompt is read at the next `step`. With `top_logprobs` (0..5) the row notes
        each picked token's log-probability and that many alternatives (`generate.logprobs`)."""

    def take_logprobs(self, row: int) -> list[TokenLogprob]:
        """The log-probabilities noted for the row's tokens since the last call ([] if it asked for none)."""

    def step(self) -> dict[int, int]:
        """One decode step: the next token of every row that has one (a long prompt may take a few steps)."""

    def remove(self, row: int) -> None:
        """The row leaves the batch; its KV no longer counts against `kv_tokens` (hf frees it; llama.cpp may keep
        it cached for a later prompt that starts the same way, and evicts it before its cells are needed)."""


class DecodeBackend(Protocol):
    stop_ids: list[int]  # token ids that end a reply (end-of-turn, EOS)
    context_length: int  # prompt + reply tokens one request can read
    max_batch: int  # most rows a batch decodes at once
    kv_tokens: int  # prompt + reply tokens all rows of a batch may hold together (the KV cache budget)

    def prompt_ids(self, messages: Conversation) -> list[int]:
        """The conversation rendered with the chat template (and default system prompt), ready for a reply."""

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated token ids, special tokens left out."""

    def new_batch(self) -> DecodeBatch:
        """An empty batch over this model (one at a time: batches share the model's context)."""

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        """Call `on_token(id)` for every new token; stop at a stop id, at `sampling.max_new_tokens`, or as soon as
        `on_token` returns False."""


def load_backend(name: str, backend: str = "hf", quant: str = "q8_0", max_batch: int | None = None,
                 kv_tokens: int | None = None, threads: int | None = None, parked_cells: int | None = None,
                 prompt_precision: str = "auto") -> DecodeBackend:
    """A run folder or model behind the chosen backend; llamacpp exports the run to GGUF once. `max_batch`,
    `kv_tokens` and (llamacpp) `parked_cells` override the backend's own limits (see hf.py and llamacpp.py for the
    defaults and why); `threads` sets llama.cpp's threads (torch's are the caller's: `torch.set_num_threads`);
    (hf) `prompt_precision`: auto, fp32 or bf16 (`load_hf_backend` says what auto does and costs)."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "llamacpp":
        from chattune.generate.llamacpp import LlamaCppBackend

        if prompt_precision != "auto":
            raise InputError("--prompt-precision: llama.cpp reads prompts in the precision of its --quant; it is "
                             "for --backend hf")
        return LlamaCppBackend.load(name, quant, threads=threads, max_batch=max_batch, kv_tokens=kv_tokens,
                                    parked_cells=parked_cells)
    if parked_cells is not None:
        raise InputError("--parked-cells: the hf backend keeps no finished request's KV; it is for --backend "
                         "llamacpp")
    from chattune.generate.hf import load_hf_backend

    loaded = load_hf_backend(name, packed=True, prompt_precision=prompt_precision)
    loaded.max_batch = max_batch or loaded.max_batch
    loaded.kv_tokens = kv_tokens or loaded.kv_tokens
    return loaded
