"""Loss, perplexity and token accuracy on the trained (assistant) tokens of held-out conversations.

    scores = likelihood(model, examples, PadCollator(tokenizer.pad_token_id), batch_size=8)
    scores["perplexity"]

The mean is over target tokens, not over batches, so the numbers do not depend on the batch size and
perplexity is exactly exp(mean token negative log-likelihood).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from chattune.data.chat import IGNORE_INDEX


@torch.no_grad()
def likelihood(model, examples: list[dict], collator, batch_size: int = 8) -> dict[str, float]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, correct, count = 0.0, 0, 0
    for first in range(0, len(examples), batch_size):
        batch = {key: value.to(device) for key, value in collator(examples[first : first + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # token t is predicted from position t-1
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        targets = labels != IGNORE_INDEX
        total_nll += F.cross_entropy(logits[targets], labels[targets], reduction="sum").item()
        correct += (logits[targets].argmax(-1) == labels[targets]).sum().item()
        count += targets.sum().item()
    model.train(was_training)
    loss = total_nll / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": correct / max(count, 1), "tokens": count}
