"""Decode with transformers: continuous batching over a KV cache whose rows join and leave between decode steps.

    backend = load_hf_backend("runs/demo")          # a run folder (its LoRA merged at load) or any model
    backend.replies([[{"role": "user", "content": "hi!"}]], Sampling(temperature=0))    # [Reply(text, ended)]
    backend.generate(backend.prompt_ids(messages), Sampling(), on_token)               # token by token (chat)
    batch = backend.new_batch()                                                        # the server's engine

Not `model.generate`: it cannot stop one row while the others go on (a client that left, a stop string), nor take a
new row mid-generation, and it samples from the global torch RNG. Not transformers' own continuous batching
(`generation/continuous_batching`, behind `transformers serve`) either: it decides greedy vs sampled once for the
whole manager (so a greedy and a sampled request cannot share a step), draws from the global torch RNG (so a seed
does not make one request reproducible) and needs a paged attention implementation built for CUDA graphs. Here each
prompt is prefilled alone (once for rows that join with the same prompt), its KV merged into the batch's left-padded
cache, and dropped from it when the row leaves; the tokens are those of `model.generate` (tests/test_generate_hf.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache, DynamicLayer

from chattune.data.conversation import Conversation
from chattune.generate.logprobs import NotingPicker, TokenLogprob
from chattune.generate.packed import pack_linears
from chattune.generate.pick import TokenPicker
from chattune.generate.together import decode_together, tokens_together
from chattune.generate.prompt import ChatPrompt
from chattune.generate.sampling import Sampling
from chattune.generate.text import Reply
from chattune.models import unwrap_peft
from chattune.precision import use_bf16
from chattune.runs import Run

MAX_BATCH = 8  # rows decoded at once: the 8 concurrent streams serving is sized for
# KV budget in tokens (prompt + reply, all rows): 8 rows of a 1k-token chat. SmolLM2-135M keeps 46 KB of fp32 keys
# and values per token (30 layers x 192 x 2 x 4 bytes), so ~380 MB when full.
KV_TOKENS = 8 * 1024


class HFBatch:
    """Rows decoding together over one left-padded KV cache (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, prompt_bf16: bool = False):
        self.model, self.prompt_bf16 = model, prompt_bf16
        # transformers renamed the KV cache argument and output field `past_key_values` -> `cache` within 5.x (the old
        # name warns, and goes in 5.40): the name this model's forward takes (a PEFT wrapper's passes it on as is)
        forward = unwrap_peft(model).forward
        self.cache_name = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
        self.rows: list[int] = []  # row ids in cache order
        self.pickers: list[TokenPicker] = []
        self.next_ids: list[int] = []  # each row's last token, the input of the next step
        self.positions: list[int] = []  # each row's position of that token (rows count from their own start)
        # per layer: keys, values [rows, heads, room, dim], columns :width filled (`_BufferLayer` says why)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.width = 0
        self.mask: torch.Tensor | None = None  # [rows, width]: 0 where a row is left-padded
        self.waiting: list[tuple[int, list[int], TokenPicker]] = []
        # free KV columns kept after the filled ones: ROOM, or less where no row may decode that many tokens (a
        # 40-token eval reply with 128 columns of room held 30% more KV than it could use)
        self.room = 1
        self.noting: dict[int, NotingPicker] = {}  # rows that asked for log-probabilities
        self.last_row = -1

    def add(self, prompt_ids: list[int], sampling: Sampling, top_logprobs: int | None = None) -> int:
        assert prompt_ids, "an empty prompt"
        self.last_row += 1
        picker = TokenPicker(sampling, self.model.device, prompt_ids)
        if top_logprobs is not None:
            picker = self.noting[self.last_row] = NotingPicker(picker, top_logprobs)
        self.waiting.append((self.last_row, prompt_ids, picker))
        self.room = max(self.room, min(ROOM, sampling.max_new_tokens))
        return self.last_row

    def take_logprobs(self, row: int) -> list[TokenLogprob]:
        return self.noting[row].take() if row in self.noting else []

    def remove(self, row: int) -> None:
        self.noting.pop(row, None)
        if row not in self.rows:
            self.waiting = [w for w in self.waiting if w[0] != row]
            return
        index, last = self.rows.index(row), len(self.rows) - 1
        # the last row moves into the leaving row's place and the batch shrinks by one: one row's KV is copied, not
        # the whole cache's (a full copy per leaving row: a 16-row GRPO rollout took 4.68 s, now 4.23 s)
        columns = (self.rows, self.pickers, self.next_ids, self.positions)
        if index != last:  # the last row leaving moves nothing
            for column in columns:
                column[index] = column[last]
            for keys, values in self.kv:
                keys[index], values[index] = keys[last], values[last]
            self.mask[index] = self.mask[last]
        for column in columns:
            del column[last]
        if not self.rows:
            self.kv, self.mask, self.width = [], None, 0
            return
        self.kv = [(keys[:last], values[:last]) for keys, values in self.kv]
        self.mask = self.mask[:last]
        first = int(self.mask.any(0).nonzero()[0])  # left columns that only rows gone used
        if first * 4 >= self.width:  # dropped once they are a quarter of the width: attention stops paying for them
            self.mask = self.mask[:, first:]
            self.kv = [(_with_room(k[:, :, first : self.width], self.room),
                        _with_room(v[:, :, first : self.width], self.room)) for k, v in self.kv]
            self.width -= first

    @torch.no_grad()
    def step(self) -> dict[int, int]:
        tokens = self._decode() if self.rows else {}
        if not self.waiting:
            return tokens
        # rows joining with the same prompt (k samples of one context, OpenAI's n) read it once and share its KV
        read, joining = {}, []
        for row, prompt_ids, picker in self.waiting:
            if (key := tuple(prompt_ids)) not in read:
                read[key] = self._read(prompt_ids)
            row_kv, logits = read[key]
            joining.append(row_kv)
            tokens[row] = picker(logits)
            for column, value in ((self.rows, row), (self.pickers, picker), (self.next_ids, tokens[row]),
                                  (self.positions, len(prompt_ids))):
                column.append(value)
        self._merge(joining)
        self.waiting.clear()
        return tokens

    def _decode(self) -> dict[int, int]:
        device = self.model.device
        if self.width == self.kv[0][0].shape[2]:
            self.kv = [(_with_room(k, self.room), _with_room(v, self.room)) for k, v in self.kv]
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        cache = Cache(layers=[_BufferLayer(k, v, self.width) for k, v in self.kv])
        output = self.model(input_ids=torch.tensor(self.next_ids, device=device)[:, None],
                            position_ids=torch.tensor(self.positions, device=device)[:, None],
                            attention_mask=self.mask, use_cache=True, **{self.cache_name: cache})
        self.width += 1
        logits = output.logits[:, -1]
        self.next_ids = [picker(logits[i]) for i, picker in enumerate(self.pickers)]
        self.positions = [position + 1 for position in self.positions]
        return dict(zip(self.rows, self.next_ids))

    def _read(self, prompt_ids: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """The prompt's KV per layer, read alone, and the logits of its last position."""
        # logits at the last position only: the LM head over every prompt position was ~10% of a 200-token prefill
        # (49k-word vocabulary) and a 40 MB tensor
        with torch.autocast(self.model.device.type, torch.bfloat16, enabled=self.prompt_bf16):
            output = self.model(input_ids=torch.tensor([prompt_ids], device=self.model.device), use_cache=True,
                                logits_to_keep=1)
        # a bf16 read still leaves fp32 KV and logits: decode steps stay fp32 (and crowd-independent, see packed.py)
        layers = getattr(output, self.cache_name).layers
        return [(layer.keys.float(), layer.values.float()) for layer in layers], output.logits[0, -1].float()

    def _merge(self, joining: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
        """The joining rows' KV (per row, per layer) stacked under the batch's in one copy, all left-padded to the
        longest. Each layer's parts are let go once copied, so the prompts' KV and the batch's are not both held
        whole (32 eval rows of ~300 tokens: ~0.5 GB less at the peak)."""
        lengths = [row_kv[0][0].shape[2] for row_kv in joining]
        width = max(self.width, *lengths)
        ones = [torch.ones((1, length), dtype=torch.long, device=self.model.device) for length in lengths]
        self.mask = torch.cat([_left_pad(mask, width) for mask in [*([self.mask] if self.kv else []), *ones]])
        ours = [[(k[:, :, : self.width], v[:, :, : self.width])] for k, v in self.kv] or [[] for _ in joining[0]]
        self.kv = []
        for layer, batch_part in enumerate(ours):
            parts = [*batch_part, *(row_kv[layer] for row_kv in joining)]
            self.kv.append(tuple(_with_room(torch.cat([_left_pad(kv[i], width) for kv in parts]), self.room)
                                 for i in (0, 1)))
            ours[layer] = parts = None
            for row_kv in joining:  # rows sharing a prompt share this list: it is cleared once copied
                row_kv[layer] = None
        self.width = width


ROOM = 128  # free KV columns kept after the filled ones, at most: a default reply decodes without reallocating


def _with_room(tensor: torch.Tensor, room: int) -> torch.Tensor:
    """A fresh buffer [rows, heads, width + room, dim] holding `tensor` [rows, heads, width, dim] on the left."""
    rows, heads, width, dim = tensor.shape
    buffer = tensor.new_zeros((rows, heads, width + room, dim))
    buffer[:, :, :width] = tensor
    return buffer


class _BufferLayer(DynamicLayer):
    """One layer's keys and values written in place into a buffer with room: a decode step's column goes into the
    next free one. transformers' DynamicLayer concatenates instead, allocating a new [rows, heads, width, dim] tensor
    per layer per step; with 8 rows of ~260 tokens that was 68% of a decode step on 2 cores (torch profiler:
    aten::cat, 60 fresh ~1.6 MB tensors a step)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, width: int):
        super().__init__()
        self.buffer_keys, self.buffer_values, self.width = keys, values, width
        self.keys, self.values, self.is_initialized = keys[:, :, :width], values[:, :, :width], True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.width + key_states.shape[-2]
        self.buffer_keys[:, :, self.width : end] = key_states
        self.buffer_values[:, :, self.width : end] = value_states
        self.keys, self.values, self.width = self.buffer_keys[:, :, :end], self.buffer_values[:, :, :end], end
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.width


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence dimension (-2 for KV [rows, heads, seq, dim], -1 for a 2-D mask)."""
    if tensor.dim() == 2:
        return F.pad(tensor, (width - tensor.shape[1], 0))
    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))


class HFBackend:
    """A transformers causal LM behind the decode interface (`chattune.generate.backend.DecodeBackend`)."""

    def __init__(self, model: torch.nn.Module, tokenizer, system_prompt: str | None = None,
                 max_batch: int = MAX_BATCH, kv_tokens: int = KV_TOKENS, prompt_bf16: bool = False):
        """`prompt_bf16`: read prompts under bf16 autocast (where bf16 is native: see `load_hf_backend`)."""
        self.model, self.tokenizer, self.prompt_bf16 = model.eval(), tokenizer, prompt_bf16
        self.prompt = ChatPrompt(tokenizer, system_prompt)
        self.stop_ids = self.prompt.stop_ids
        self.context_length = model.config.max_position_embeddings
        self.max_batch, self.kv_tokens = max_batch, kv_tokens

    def prompt_ids(self, messages: Conversation) -> list[int]:
        return self.prompt.ids(messages)

    def decode(self, token_ids: list[int]) -> str:
        return self.prompt.decode(token_ids)

    def new_batch(self) -> HFBatch:
        return HFBatch(self.model, self.prompt_bf16)

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        decode_together(self, [prompt_ids], [sampling], [on_token])

    def replies(self, conversations: list[Conversation], sampling: Sampling) -> list[Reply]:
        """Whole replies to every conversation, decoded as one batch, each row with its own generator. A seed reproduces
        every reply: row i is seeded with `sampling.seed + i`, so equal conversations (k samples of one context, n
        dialogues on one topic) still get different replies."""
        tokens = tokens_together(self, [self.prompt_ids(c) for c in conversations], sampling)
        return [Reply(self.decode(row).strip(), bool(row) and row[-1] in self.stop_ids) for row in tokens]


def load_hf_backend(name: str, packed: bool = False, prompt_precision: str = "fp32") -> HFBackend:
    """A chattune run folder (with its system prompt), or any model name or folder that `load_model` accepts.
    `packed`: for callers that only decode (chat, serve, generate, the alignment eval): the linear weights are
    reordered for oneDNN (generate/packed.py: 1.4-2x faster decode steps on CPU), after which they cannot be read
    or trained, so exporters keep the default.
    `prompt_precision` (auto, fp32, bf16): how prompts are read. bf16 (auto picks it where bf16 is native) read a
    200-token prompt in 190 instead of 300 ms (SmolLM2, packed, 2 Zen 4 cores), at the cost of replies that may
    differ from fp32 ones after a few tokens (last-position logits within ~0.2, the same greedy token in the probe)
    and, packed, a bf16 copy of the weights. Decode steps stay fp32 either way. Chat and serve use auto; evaluation
    keeps fp32, so its figures do not depend on the CPU."""
    model, tokenizer, system_prompt = _load_model(name)
    bf16 = use_bf16(prompt_precision, model.device, "--prompt-precision ")
    return HFBackend(pack_linears(model, bf16) if packed else model, tokenizer, system_prompt, prompt_bf16=bf16)


def _load_model(name: str) -> tuple[torch.nn.Module, object, str | None]:
    """The model (a run's LoRA merged), its tokenizer and its system prompt (None outside a run folder)."""
    from chattune.models import load_model, load_tokenizer

    if not Run.is_run(name):
        return *load_model(name), None
    run = Run.open(name)
    tokenizer = load_tokenizer(str(run.tokenizer_dir))  # carries the chat template training used
    if run.is_adapter:
        from peft import PeftModel

        base, _ = load_model(run.config.model)
        # merged once at load: decoding is then as fast as a plain model
        model = PeftModel.from_pretrained(base, run.weights).merge_and_unload()
    else:
        model, _ = load_model(str(run.weights))
    return model, tokenizer, run.config.system_prompt
