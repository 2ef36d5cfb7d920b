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
row is prefilled alone, its KV merged into the batch's left-padded cache, and dropped from it when the row leaves;
the tokens are those of `model.generate` (tests/test_generate_hf.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from chattune.data.conversation import Conversation
from chattune.generate.together import decode_together
from chattune.generate.pick import TokenPicker
from chattune.generate.prompt import ChatPrompt
from chattune.generate.sampling import Sampling
from chattune.generate.text import Reply
from chattune.runs import Run

MAX_BATCH = 8  # rows decoded at once: the 8 concurrent streams serving is sized for
# KV budget in tokens (prompt + reply, all rows): 8 rows of a 1k-token chat. SmolLM2-135M keeps 46 KB of fp32 keys
# and values per token (30 layers x 192 x 2 x 4 bytes), so ~380 MB when full.
KV_TOKENS = 8 * 1024


class HFBatch:
    """Rows decoding together over one left-padded KV cache (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.rows: list[int] = []  # row ids in cache order
        self.pickers: list[TokenPicker] = []
        self.next_ids: list[int] = []  # each row's last token, the input of the next step
        self.positions: list[int] = []  # each row's position of that token (rows count from their own start)
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values [rows, heads, width, dim]
        self.mask: torch.Tensor | None = None  # [rows, width]: 0 where a row is left-padded
        self.waiting: list[tuple[int, list[int], TokenPicker]] = []
        self.last_row = -1

    def add(self, prompt_ids: list[int], sampling: Sampling) -> int:
        assert prompt_ids, "an empty prompt"
        self.last_row += 1
        self.waiting.append((self.last_row, prompt_ids, TokenPicker(sampling, self.model.device, prompt_ids)))
        return self.last_row

    def remove(self, row: int) -> None:
        if row not in self.rows:
            self.waiting = [w for w in self.waiting if w[0] != row]
            return
        index = self.rows.index(row)
        keep = [i for i in range(len(self.rows)) if i != index]
        for column in (self.rows, self.pickers, self.next_ids, self.positions):
            del column[index]
        if not self.rows:
            self.kv, self.mask = [], None
            return
        first = int(self.mask[keep].any(0).nonzero()[0])  # columns that only the leaving row used go too
        self.mask = self.mask[keep, first:]
        self.kv = [(k[keep, :, first:], v[keep, :, first:]) for k, v in self.kv]

    @torch.no_grad()
    def step(self) -> dict[int, int]:
        tokens = self._decode() if self.rows else {}
        for row, prompt_ids, picker in self.waiting:
            tokens[row] = self._prefill(row, prompt_ids, picker)
        self.waiting.clear()
        return tokens

    def _decode(self) -> dict[int, int]:
        from transformers import DynamicCache

        device = self.model.device
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=-1)
        output = self.model(input_ids=torch.tensor(self.next_ids, device=device)[:, None],
                            position_ids=torch.tensor(self.positions, device=device)[:, None],
                            attention_mask=self.mask, past_key_values=DynamicCache(self.kv), use_cache=True)
        self.kv = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
        logits = output.logits[:, -1]
        self.next_ids = [picker(logits[i]) for i, picker in enumerate(self.pickers)]
        self.positions = [position + 1 for position in self.positions]
        return dict(zip(self.rows, self.next_ids))

    def _prefill(self, row: int, prompt_ids: list[int], picker: TokenPicker) -> int:
        """Read the prompt alone, then merge its KV into the batch (left-padding whichever is shorter)."""
        output = self.model(input_ids=torch.tensor([prompt_ids], device=self.model.device), use_cache=True)
        row_kv = [(layer.keys, layer.values) for layer in output.past_key_values.layers]
        row_mask = torch.ones((1, len(prompt_ids)), dtype=torch.long, device=self.model.device)
        if self.rows:
            width = max(self.mask.shape[1], len(prompt_ids))
            self.kv = [(torch.cat([_left_pad(k, width), _left_pad(rk, width)]),
                        torch.cat([_left_pad(v, width), _left_pad(rv, width)]))
                       for (k, v), (rk, rv) in zip(self.kv, row_kv)]
            self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(row_mask, width)])
        else:
            self.kv, self.mask = row_kv, row_mask
        token_id = picker(output.logits[0, -1])
        self.rows.append(row)
        self.pickers.append(picker)
        self.next_ids.append(token_id)
        self.positions.append(len(prompt_ids))
        return token_id


def _left_pad(tensor: torch.Tensor, width: int) -> torch.Tensor:
    """Zeros on the left of the sequence dimension (-2 for KV [rows, heads, seq, dim], -1 for a 2-D mask)."""
    if tensor.dim() == 2:
        return F.pad(tensor, (width - tensor.shape[1], 0))
    return F.pad(tensor, (0, 0, width - tensor.shape[2], 0))


class HFBackend:
    """A transformers causal LM behind the decode interface (`chattune.generate.backend.DecodeBackend`)."""

    def __init__(self, model: torch.nn.Module, tokenizer, system_prompt: str | None = None,
                 max_batch: int = MAX_BATCH, kv_tokens: int = KV_TOKENS):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.prompt = ChatPrompt(tokenizer, system_prompt)
        self.stop_ids = self.prompt.stop_ids
        self.context_length = model.config.max_position_embeddings
        self.max_batch, self.kv_tokens = max_batch, kv_tokens

    def prompt_ids(self, messages: Conversation) -> list[int]:
        return self.prompt.ids(messages)

    def decode(self, token_ids: list[int]) -> str:
        return self.prompt.decode(token_ids)

    def new_batch(self) -> HFBatch:
        return HFBatch(self.model)

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        decode_together(self, [prompt_ids], [sampling], [on_token])

    def replies(self, conversations: list[Conversation], sampling: Sampling) -> list[Reply]:
        """Whole replies to every conversation, decoded as one batch, each row with its own generator. A seed reproduces
        every reply: row i is seeded with `sampling.seed + i`, so equal conversations (k samples of one context, n
        dialogues on one topic) still get different replies."""
        tokens: list[list[int]] = [[] for _ in conversations]
        samplings = [sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + row)
                     for row in range(len(conversations))]
        decode_together(self, [self.prompt_ids(c) for c in conversations], samplings,
                        [lambda token_id, row=row: tokens[row].append(token_id) or True for row in range(len(tokens))])
        return [Reply(self.decode(row).strip(), bool(row) and row[-1] in self.stop_ids) for row in tokens]


def load_hf_backend(name: str) -> HFBackend:
    """A chattune run folder (with its system prompt), or any model name or folder that `load_model` accepts."""
    from chattune.models import load_model, load_tokenizer

    if not Run.is_run(name):
        return HFBackend(*load_model(name))
    run = Run.open(name)
    tokenizer = load_tokenizer(str(run.tokenizer_dir))  # carries the chat template training used
    if run.is_adapter:
        from peft import PeftModel

        base, _ = load_model(run.config.model)
        # merged once at load: decoding is then as fast as a plain model
        model = PeftModel.from_pretrained(base, run.weights).merge_and_unload()
    else:
        model, _ = load_model(str(run.weights))
    return HFBackend(model, tokenizer, run.config.system_prompt)
