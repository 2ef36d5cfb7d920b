"""Pad tokenized conversations into a batch.

    collator = PadCollator(pad_token_id=tokenizer.pad_token_id)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    batch["labels"].tolist()   # [[-100, 6, 7], [8, -100, -100]]

Padding goes on the right and is always -100 in the labels, so the pad id (often EOS) is never trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chattune.data.chat import IGNORE_INDEX


@dataclass
class PadCollator:
    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in examples)
        input_ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            length = len(example["input_ids"])
            input_ids[row, :length] = torch.tensor(example["input_ids"])
            labels[row, :length] = torch.tensor(example["labels"])
            attention_mask[row, :length] = 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
