"""The speed of chattune's trainer: packing, a loss computed only where there are targets, bf16 where it is native.

Each trick computes the same thing as the plain path (tests/test_train_fast.py checks it):

- `pack_examples`: conversations are packed first-fit-decreasing into rows of at most `max_length` tokens, with
  position ids restarting at 0 for each conversation. With `attention_mask=None`, transformers derives a
  block-causal mask from those position ids, so no token attends across conversations and no compute is spent on
  padding (chat data is often 30-300 tokens per conversation: padding a batch to its longest wastes 30-60%).
- `target_only_loss`: the LM head (49k x 576 for SmolLM2, ~20% of a forward pass) and the cross-entropy run only at
  positions whose next token is trained, in checkpointed chunks, instead of materialising logits for every token.
- bf16 autocast on CUDA and on CPUs with native bf16 dot products (`chattune.precision`), where it runs the matmuls
  ~3-5x faster than fp32; fp32 everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Trainer

from chattune.data.chat import IGNORE_INDEX
from chattune.models import unwrap_peft

# Architectures whose logits are exactly `lm_head(final hidden state)`: no soft-capping or logit scaling, so the
# target-only head computes the model's own loss. Others use the model's forward.
PLAIN_HEAD_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gpt2", "smollm3", "phi3"}
LOSS_CHUNK_TOKENS = 1024  # target positions per LM-head chunk: bounds the live logits to 1024 x vocab floats


def pack_examples(examples: list[dict], max_length: int) -> list[dict]:
    """Pack tokenized conversations into rows of <= max_length tokens (first-fit decreasing).

    >>> rows = pack_examples([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}], 4)
    >>> rows[0]["input_ids"], rows[0]["labels"], rows[0]["position_ids"]
    ([1, 2, 3], [-100, 2, -100], [0, 1, 0])

    The first label of each conversation is masked: in a packed row it would be predicted from the previous
    conversation's last token, which the unpacked path never does.
    """
    rows: list[dict] = []
    free: list[int] = []  # tokens left in each row
    for example in sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True):
        length = len(example["input_ids"])
        row = next((index for index, space in enumerate(free) if space >= length), None)
        if row is None:
            rows.append({"input_ids": [], "labels": [], "position_ids": []})
            free.append(max_length)
            row = len(rows) - 1
        rows[row]["input_ids"] += example["input_ids"]
        rows[row]["labels"] += [IGNORE_INDEX] + example["labels"][1:]
        rows[row]["position_ids"] += list(range(length))
        free[row] -= length
    return rows


@dataclass
class PackedCollator:
    """Pad packed rows to the longest row (or to `width`, for the fixed shapes compiled code wants); padding gets
    positions of its own and -100 labels."""

    pad_token_id: int
    width: int | None = None

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = self.width or max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        # Padding continues as one more "conversation" starting at position 0: it attends only to itself.
        position_ids = torch.arange(width).repeat(len(rows), 1)
        for index, row in enumerate(rows):
            length = len(row["input_ids"])
            input_ids[index, :length] = torch.tensor(row["input_ids"])
            labels[index, :length] = torch.tensor(row["labels"])
            position_ids[index, :length] = torch.tensor(row["position_ids"])
            position_ids[index, length:] -= length
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def _chunk_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def target_only_loss(model, batch: dict, num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss over trained positions, running the LM head only there.

    `model` is a causal LM (optionally wrapped by PEFT) whose type is in PLAIN_HEAD_MODEL_TYPES. `num_items`, when
    given, is the number of trained tokens across all gradient-accumulation micro-batches (so the sum is
    normalised once, exactly as transformers does for its own loss).
    """
    inner = unwrap_peft(model)
    hidden = inner.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        position_ids=batch.get("position_ids"),
        use_cache=False,  # a cache would disable the packed-sequence mask and waste memory in training
    ).last_hidden_state
    labels = batch["labels"][:, 1:]
    targets = labels != IGNORE_INDEX
    hidden, labels = hidden[:, :-1][targets], labels[targets]
    head = inner.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for first in range(0, labels.numel(), LOSS_CHUNK_TOKENS):
        chunk = slice(first, first + LOSS_CHUNK_TOKENS)
        # Checkpointing recomputes each chunk's logits in backward instead of keeping them all alive.
        total = total + checkpoint(_chunk_nll, head, hidden[chunk], labels[chunk], use_reentrant=False)
    return total / (num_items if num_items is not None else max(labels.numel(), 1))


def compile_decoder_layers(model) -> None:
    """torch.compile each decoder layer (one compiled graph serves all of them, ~1 min on 2 CPU cores): it fuses
    the norms, activations, rotary and LoRA elementwise work that eager bf16 spends most of its time on."""
    inner = unwrap_peft(model)
    decoder = inner.get_decoder()
    for layer in decoder.h if inner.config.model_type == "gpt2" else decoder.layers:
        layer.compile()


def supports_target_only_loss(model) -> bool:
    return model.config.model_type in PLAIN_HEAD_MODEL_TYPES


class FastTrainer(Trainer):
    """transformers' Trainer with the target-only loss; everything else (schedule, checkpoints, eval) is the same."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # target_only_loss divides by the token count of the whole accumulated batch itself; this stops the
        # Trainer from dividing again by the number of accumulation steps.
        self.model_accepts_loss_kwargs = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.accelerator.num_processes > 1:
            # target_only_loss calls the decoder inside the model, past the DDP/FSDP wrapper whose forward does the
            # gradient sync and parameter gathering; the model's own loss over the same labels is the same number
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # accelerate applies bf16 autocast by wrapping model.forward; the decoder is called directly here, so the
        # autocast has to be entered explicitly (without it this path silently ran in fp32)
        with self.accelerator.autocast():
            loss = target_only_loss(model, inputs, num_items_in_batch)
        return (loss, {"loss": loss}) if return_outputs else loss
