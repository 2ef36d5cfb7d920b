"""Decode with llama.cpp (llama-cpp-python) instead of transformers: the fast path for chat and serving on a CPU.

    backend = LlamaCppBackend.load("runs/demo", quant="q8_0")     # exports RUN/model-q8_0.gguf once
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0), on_token)
    batch = backend.new_batch()                                   # continuous batching (the server's engine)

The run's LoRA is merged into the base weights and written to GGUF once (`chattune.export.gguf`); the packaged
SmolLM2 GGUF is used as it is for the base model at q4_1. Prompts are rendered and tokenized by the run's own HF
tokenizer and chat template (`chattune.generate.prompt`) and handed to llama.cpp as token ids, so both backends see
exactly the same tokens, and replies are decoded by the same tokenizer. Same interface as `hf.HFBackend`.

Why the low-level API: the high-level `Llama` holds one sequence, so requests could only take turns. Here one
llama.cpp context holds up to `max_batch` sequences (`n_seq_max`) in one unified KV cache of `kv_tokens` cells, and
every step is a single `llama_decode` of one `llama_batch`: the last token of every running sequence plus the prompt
tokens of those joining, in chunks of CHUNK_TOKENS while others decode (as llama.cpp's own server does with its
parallel slots and its batch size). Tokens are picked in Python from the
logits with the same warpers and per-request generator as the HF backend (`generate.pick`), so a seeded request is
reproducible alone or in a crowd, and both backends sample the same way.

Prefix reuse: a chat's next turn is its previous prompt + reply + a new message, and without reuse every turn reads
the whole conversation again (turn 10 of a support chat: 745 tokens, 1.6 s to the first token on 2 cores). So a
row that leaves keeps its KV in the cache, parked (least recently used first out, whenever running rows need the
cells or sequence ids), and a new row starts from the longest prefix any sequence holds (shared cells, `_Cache`),
reading only the rest: ~30 tokens and 0.15 s at turn 10 (`benchmarks/chat_prefix_reuse.py`). Parked sequences
hold at most PARKED_CELLS cells: each one slows every step a little (see there). The reused KV of a
reply is the one computed token by token while it was generated; at q8_0 that is not bit-identical to reading the
same tokens as a prompt, so greedy replies may differ from `prefix_reuse=False` (at f16 they matched).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from chattune.data.conversation import Conversation
from chattune.errors import InputError
from chattune.generate.logprobs import NotingPicker, TokenLogprob
from chattune.generate.pick import TokenPicker
from chattune.generate.together import decode_together
from chattune.generate.prompt import ChatPrompt
from chattune.generate.sampling import Sampling
from chattune.runs import Run

CONTEXT_TOKENS = 4096  # most prompt + reply tokens of one request; chat prompts + replies fit well within this
MAX_BATCH = 8  # sequences decoded together: the 8 concurrent streams serving is sized for
KV_TOKENS = 16 * 1024  # KV cells shared by all sequences; SmolLM2-135M at f16 needs 23 KB per cell (~380 MB)
BATCH_TOKENS = 512  # most tokens per llama_decode: longer prompts are read over several steps
# Most tokens per llama_decode while some row is decoding: newcomers' prompts are read in chunks this size, so a
# streaming reply pauses for at most one chunk (~0.4 s on 2 cores) and the worker returns to admit new requests
# that often. 8 clients sending 200-token prompts in waves (benchmarks/serve_load.py, 2 Zen 3 cores, q8_0): TTFT p95
# 5.4-6.8 s reading 512 tokens a step (3 runs), 2.7-3.1 s at 128 (2 runs), tok/s 51-57 vs 56-67; chunks of 64
# lost ~15% of tok/s. A step with no row decoding reads up to BATCH_TOKENS, so a lone prompt is not cut.
CHUNK_TOKENS = 128
PARKED = 32  # finished sequences whose KV stays in the cache for a prompt that starts the same way (next turn)
# Most cells parked sequences hold (beyond those a running one shares). Parked KV is not free: every token of every
# step scans the attention mask over all cells up to the highest one in use, so 8 rows of new 200-token prompts ran
# 49 tok/s with ~8.9k cells parked and 67 with none; at this cap 55 (1.11x), while 16 support chats taking turns
# still find 75% of their prompts parked, as with no cap (0.92x and 1.02x its tok/s in two runs; with none parked
# 0.68x). benchmarks/parked_cells.py, 2 Zen 3 cores
PARKED_CELLS = 4096
LLAMA_MAX_SEQ = 256  # llama.cpp refuses a context with more sequences ("n_seq_max must be <= 256")
KEEP_TAIL = 32  # a parked sequence whose unmatched tail is shorter is taken over by the new prompt rather than kept


def _llama_cpp():
    try:
        import llama_cpp
        from llama_cpp import _internals
    except ImportError:
        raise InputError("--backend llamacpp needs llama-cpp-python: pip install llama-cpp-python "
                         "(builds llama.cpp from source, a few minutes)") from None
    return llama_cpp, _internals


def gguf_path(name: str, quant: str) -> Path:
    """The GGUF for a run or model, exported on first use (merged LoRA for runs)."""
    from chattune.models import ALIASES, cache_dir

    if Run.is_run(name):
        target = Run.open(name).gguf_path(quant)
    elif name in ALIASES:
        package, file = ALIASES[name]
        if quant == "q4_1":  # the packaged file is exactly this quantisation of the base model
            from importlib.util import find_spec

            return Path(find_spec(package).submodule_search_locations[0]) / file
        target = cache_dir() / "gguf" / f"{name}-{quant}.gguf"
    elif Path(name).is_dir():
        target = Path(name) / f"model-{quant}.gguf"
    else:
        target = cache_dir() / "gguf" / f"{name}-{quant}.gguf"
    if not target.is_file():
        from chattune.export.gguf import export_gguf
        from chattune.generate.hf import load_hf_backend

        hf = load_hf_backend(name)  # merges a run's adapter into the base weights
        export_gguf(hf.model, hf.tokenizer, target, quant)
    return target


@dataclass
class _Sequence:
    seq_id: int  # llama.cpp's sequence id: its cells in the shared KV cache
    picker: TokenPicker | NotingPicker
    pending: list[int]  # tokens not yet read: the prompt (maybe in chunks), then the last picked token
    position: int = 0  # position of the next token read
    end: int = 0  # position it may reach: prompt + max_new_tokens (the cells it may need, with the reused ones)
    reused: int = 0  # prompt tokens whose KV came from an earlier or running sequence instead of being read
    waiting: list[int] | None = None  # its prompt, while another row reads the same one (it then copies that KV)


def _common_prefix(prompt: np.ndarray, held: list[int]) -> int:
    n = min(len(prompt), len(held))
    differ = np.flatnonzero(prompt[:n] != np.asarray(held[:n], dtype=prompt.dtype))
    return int(differ[0]) if differ.size else n


class _Cache:
    """Which tokens' KV each sequence id holds, and which cells it shares, so a new prompt can start from the
    longest prefix already in the cache and finished sequences can be parked there until their cells are needed.

    Cells are counted by id: a token read takes a new cell; `llama_memory_seq_cp` in a unified cache (one stream)
    only adds the destination sequence to the source's cells (llama-kv-cache.cpp: "both sequences are in the same
    stream, no data copy is necessary"), so a shared prefix costs no cells, and a cell is free once no sequence
    holds it. llama.cpp has no call for the cells in use; this count is what eviction goes by."""

    def __init__(self, context, n_seq: int):
        self.context, self.free_ids = context, list(range(n_seq))
        self.held: dict[int, list[int]] = {}  # seq id -> token ids at positions 0.. whose KV it holds
        self.cells: dict[int, list[int]] = {}  # seq id -> its cell ids, in position order
        self.holders: collections.Counter[int] = collections.Counter()  # cell id -> sequences holding it
        self.parked: collections.OrderedDict[int, None] = collections.OrderedDict()  # least recently used first
        self.next_cell = 0

    def new_id(self, keep: int = -1) -> int:
        if not self.free_ids:  # every id is running or parked: the least recently used parked one goes
            self.drop(next(seq_id for seq_id in self.parked if seq_id != keep))
        seq_id = self.free_ids.pop(0)
        self.held[seq_id], self.cells[seq_id] = [], []
        return seq_id

    def read(self, seq_id: int, token_id: int) -> None:
        self.held[seq_id].append(token_id)
        self.cells[seq_id].append(self.next_cell)
        self.holders[self.next_cell] += 1
        self.next_cell += 1

    def truncate(self, seq_id: int, n: int) -> None:
        self.context.kv_cache_seq_rm(seq_id, n, -1)
        self._release(self.cells[seq_id][n:])
        del self.held[seq_id][n:], self.cells[seq_id][n:]

    def drop(self, seq_id: int) -> None:
        self.truncate(seq_id, 0)
        self.parked.pop(seq_id, None)
        del self.held[seq_id], self.cells[seq_id]
        self.free_ids.append(seq_id)

    def _release(self, cells: list[int]) -> None:
        for cell in cells:
            self.holders[cell] -= 1
            if not self.holders[cell]:
                del self.holders[cell]

    @property
    def used(self) -> int:
        return len(self.holders)

    def attach(self, prompt_ids: list[int]) -> tuple[int, int]:
        """A sequence id for a new prompt, holding the longest prefix of it found in the cache (all but its last
        token at most, which must be read for the logits), and that prefix's length."""
        prompt = np.asarray(prompt_ids, dtype=np.int64)
        source, n = max(((seq_id, _common_prefix(prompt, held)) for seq_id, held in self.held.items()),
                        key=lambda found: found[1], default=(-1, 0))
        n = min(n, len(prompt_ids) - 1)
        # no minimum length: seq_cp only walks the cells' metadata (~30 us for 16k cells on 2 cores) while reading
        # a prompt token costs over a millisecond, so even the shared system prompt of two chats is worth taking
        if n == 0:
            return self.new_id(), 0
        if source in self.parked and len(self.held[source]) - n < KEEP_TAIL:
            del self.parked[source]  # a conversation's next turn: it goes on in the same sequence id
            self.truncate(source, n)
            return source, n
        # the source is not marked as used: the new sequence holds the shared cells too, so they outlive the source
        seq_id = self.new_id(keep=source)
        self.context.kv_cache_seq_cp(source, seq_id, 0, n)
        self.held[seq_id], self.cells[seq_id] = self.held[source][:n], self.cells[source][:n]
        self.holders.update(self.cells[seq_id])
        return seq_id, n

    def evict(self, limit: int, running: list[int], parked_cells: int) -> None:
        """Drop parked sequences, least recently used first, until at most `limit` cells are in use and at most
        `parked_cells` of them are held by parked sequences alone (not shared with a `running` sequence id)."""
        if not self.parked or self.used <= min(limit, parked_cells):
            return  # within both bounds whatever the running rows share: no need to count their cells (every step)
        live = set().union(*(self.cells[seq_id] for seq_id in running))
        while self.parked and (self.used > limit or self.used - len(live) > parked_cells):
            self.drop(next(iter(self.parked)))


class LlamaCppBatch:
    """Sequences decoding together in one llama.cpp context (see the module docstring)."""

    def __init__(self, backend: LlamaCppBackend):
        self.context, self.n_vocab = backend.context, backend.n_vocab
        self.batch = backend.llama_batch
        self.prefix_reuse, self.max_batch = backend.prefix_reuse, backend.max_batch
        self.parked_cells = backend.parked_cells
        self.cache = _Cache(self.context, backend.n_seq)
        self.sequences: dict[int, _Sequence] = {}
        self.last_row = -1

    def add(self, prompt_ids: list[int], sampling: Sampling, top_logprobs: int | None = None) -> int:
        assert prompt_ids and len(self.sequences) < self.max_batch, "an empty prompt, or more rows than max_batch"
        self.last_row += 1
        picker = TokenPicker(sampling, prompt_ids=prompt_ids)
        if top_logprobs is not None:
            picker = NotingPicker(picker, top_logprobs)
        self.sequences[self.last_row] = _Sequence(-1, picker, [], end=len(prompt_ids) + sampling.max_new_tokens)
        self._join(self.sequences[self.last_row], prompt_ids)
        return self.last_row

    def _join(self, sequence: _Sequence, prompt_ids: list[int]) -> None:
        """Give the row a sequence id and the prompt tokens it has to read. With reuse, a row whose prompt another
        row is still reading (OpenAI's `n`: the same prompt joins n times at once) waits for it, then copies its KV
        and reads only the last token: one prompt read for all of them, for a one-token step of delay."""
        if self.prefix_reuse and any(len(other.pending) > 1 and self.cache.held[other.seq_id] + other.pending
                                     == prompt_ids for other in self.sequences.values() if other.seq_id >= 0):
            sequence.waiting = prompt_ids
            return
        seq_id, reused = self.cache.attach(prompt_ids) if self.prefix_reuse else (self.cache.new_id(), 0)
        sequence.seq_id, sequence.pending, sequence.position, sequence.reused = (
            seq_id, list(prompt_ids[reused:]), reused, reused)

    def reused(self, row: int) -> int:
        """Prompt tokens of the row that were not read because their KV was already in the cache."""
        return self.sequences[row].reused

    def take_logprobs(self, row: int) -> list[TokenLogprob]:
        picker = self.sequences[row].picker
        return picker.take() if isinstance(picker, NotingPicker) else []

    def remove(self, row: int) -> None:
        """The row leaves; with prefix reuse its KV stays parked for a later prompt that starts the same way
        (the conversation's next turn) until its cells or its sequence id are needed."""
        seq_id = self.sequences.pop(row).seq_id
        if seq_id < 0:  # it was still waiting for another row's prompt
            return
        if self.prefix_reuse:
            self.cache.parked[seq_id] = None
            self._evict()
        else:
            self.cache.drop(seq_id)

    def _evict(self) -> None:
        """Parked KV gives way to what the running rows may still write, so llama_decode always finds cells, and
        stays within the backend's `parked_cells`."""
        self.cache.evict(self.context.n_ctx() - sum(s.end - s.position for s in self.sequences.values()),
                         [s.seq_id for s in self.sequences.values() if s.seq_id >= 0], self.parked_cells)

    def step(self) -> dict[int, int]:
        """One llama_decode: every running row's last token first, then prompt chunks while room is left."""
        for sequence in self.sequences.values():
            if sequence.waiting is not None:
                prompt_ids, sequence.waiting = sequence.waiting, None
                self._join(sequence, prompt_ids)
        self._evict()
        batch, reads = self.batch.batch, []  # reads: (row, batch index) of rows whose next token is due
        batch.n_tokens = 0
        running = sorted(self.sequences.items(), key=lambda item: len(item[1].pending))  # decoding rows first
        decoding = any(len(sequence.pending) == 1 for sequence in self.sequences.values())
        budget = max(CHUNK_TOKENS, len(self.sequences)) if decoding else BATCH_TOKENS
        for row, sequence in running:
            take = sequence.pending[: budget - batch.n_tokens]
            for token_id in take:
                i = batch.n_tokens
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token_id, sequence.position, 1, 0
                batch.seq_id[i][0] = sequence.seq_id
                batch.n_tokens, sequence.position = i + 1, sequence.position + 1
                self.cache.read(sequence.seq_id, token_id)
            del sequence.pending[: len(take)]
            if take and not sequence.pending:
                batch.logits[batch.n_tokens - 1] = 1
                reads.append((row, batch.n_tokens - 1))
        if batch.n_tokens:
            self.context.decode(self.batch)
        tokens = {}
        for row, index in reads:
            logits = np.ctypeslib.as_array(self.context.get_logits_ith(index), shape=(self.n_vocab,))
            tokens[row] = self.sequences[row].picker(torch.from_numpy(logits.copy()))
            self.sequences[row].pending.append(tokens[row])
        return tokens


class LlamaCppBackend:
    def __init__(self, gguf: str | Path, tokenizer, system_prompt: str | None = None, max_batch: int = MAX_BATCH,
                 kv_tokens: int = KV_TOKENS, threads: int | None = None, prefix_reuse: bool = True,
                 parked_cells: int | None = None):
        """`gguf`: the model file (see `gguf_path`); `tokenizer`: the HF tokenizer it was exported with;
        `prefix_reuse`: start each prompt from the longest prefix whose KV is still in the cache; `parked_cells`:
        most cells finished sequences keep for that (None: PARKED_CELLS)."""
        llama_cpp, internals = _llama_cpp()
        self.prompt = ChatPrompt(tokenizer, system_prompt)
        self.stop_ids = self.prompt.stop_ids
        self.max_batch, self.kv_tokens, self.prefix_reuse = max_batch, kv_tokens, prefix_reuse
        self.parked_cells = PARKED_CELLS if parked_cells is None else parked_cells
        self.kept_batch: LlamaCppBatch | None = None  # `generate`'s, from call to call
        # sequence ids: the running rows', then those of parked ones (llama.cpp allows 256 in all)
        self.n_seq = min(max_batch + PARKED, LLAMA_MAX_SEQ) if prefix_reuse else max_batch
        self.context_length = min(CONTEXT_TOKENS, kv_tokens)
        self.model = internals.LlamaModel(path_model=str(gguf), params=llama_cpp.llama_model_default_params(),
                                          verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = kv_tokens, BATCH_TOKENS, BATCH_TOKENS
        params.n_seq_max = self.n_seq
        # one pool of cells for all sequences: the KV budget is shared, so a long chat and a short one fit together
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = threads or os.cpu_count()
        # flash attention: time to first token for a 200-token prompt 370 -> 280 ms on 2 cores (q8_0)
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self.context = internals.LlamaContext(model=self.model, params=params, verbose=False)
        self.llama_batch = internals.LlamaBatch(n_tokens=BATCH_TOKENS, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = self.model.n_vocab()

    @classmethod
    def load(cls, name: str, quant: str = "q8_0", threads: int | None = None, max_batch: int | None = None,
             kv_tokens: int | None = None, prefix_reuse: bool = True, parked_cells: int | None = None
             ) -> LlamaCppBackend:
        """A run folder (with its system prompt) or a model, exported to GGUF on first use."""
        from chattune.models import load_tokenizer

        run = Run.open(name) if Run.is_run(name) else None
        tokenizer = load_tokenizer(str(run.tokenizer_dir) if run else name)
        return cls(gguf_path(name, quant), tokenizer, run.config.system_prompt if run else None,
                   max_batch or MAX_BATCH, kv_tokens or KV_TOKENS, threads, prefix_reuse, parked_cells)

    def prompt_ids(self, messages: Conversation) -> list[int]:
        return self.prompt.ids(messages)

    def decode(self, token_ids: list[int]) -> str:
        return self.prompt.decode(token_ids)

    def new_batch(self) -> LlamaCppBatch:
        self.context.kv_cache_clear()  # a batch owns the whole context
        self.kept_batch = None  # so the one `generate` kept holds nothing any more
        return LlamaCppBatch(self)

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        """Call `on_token` for each new token (the stop token included, as the HF backend does). One batch is kept
        from call to call, so with prefix reuse the next turn of a terminal chat reads only its new part."""
        if self.kept_batch is None:
            self.kept_batch = self.new_batch()
        decode_together(self, [prompt_ids], [sampling], [on_token], batch=self.kept_batch)

    def close(self) -> None:
        self.llama_batch.close()
        self.context.close()
        self.model.close()
