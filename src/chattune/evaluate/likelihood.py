"""Loss, perplexity and token accuracy on the trained (assistant) tokens of held-out conversations.

    scores = likelihood(model, examples, PadCollator(tokenizer.pad_token_id), batch_size=8)
    scores["perplexity"]
    rows = conversation_likelihoods(model, examples, collator)   # [{"nll", "tokens", "correct"}, ...] per conversation

The mean is over target tokens, not over batches, so the numbers do not depend on the batch size and
perplexity is exactly exp(mean token negative log-likelihood). The per-conversation sums are what the paired
bootstrap in `chattune eval` resamples.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from chattune.data.chat import IGNORE_INDEX


@torch.no_grad()
def conversation_likelihoods(model, examples: list[dict], collator, batch_size: int = 8) -> list[dict]:
    """Summed NLL, target token count and correct argmax predictions of each example, in input order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for first in range(0, len(examples), batch_size):
        batch = {key: value.to(device) for key, value in collator(examples[first : first + batch_size]).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # token t is predicted from position t-1
        logits, labels = logits[:, :-1].float(), batch["labels"][:, 1:]
        targets = labels != IGNORE_INDEX
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        correct = (logits.argmax(-1) == labels) & targets
        for row in range(labels.shape[0]):
            rows.append({"nll": nll[row].sum().item(), "tokens": int(targets[row].sum()),
                         "correct": int(correct[row].sum())})
    model.train(was_training)
    return rows


def summarize_likelihoods(rows: list[dict]) -> dict[str, float]:
    """Token-weighted loss, perplexity and token accuracy of per-example rows."""
    count = sum(row["tokens"] for row in rows)
    loss = sum(row["nll"] for row in rows) / max(count, 1)
    accuracy = sum(row["correct"] for row in rows) / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": accuracy, "tokens": count}


def likelihood(model, examples: list[dict], collator, batch_size: int = 8) -> dict[str, float]:
    return summarize_likelihoods(conversation_likelihoods(model, examples, collator, batch_size))
