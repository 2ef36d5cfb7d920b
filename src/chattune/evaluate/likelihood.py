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
from chattune.models import unwrap_peft
from chattune.train.fast import supports_target_only_loss


LOGITS_BYTES = 128 * 2**20  # rows of a batch go through the model together while their logits fit this


@torch.no_grad()
def conversation_likelihoods(model, examples: list[dict], collator, batch_size: int = 8) -> list[dict]:
    """Summed NLL, target token count and correct argmax predictions of each example, in input order. A batch is
    run a few rows at a time, as many as keep the logits within LOGITS_BYTES: 8 rows of 256 tokens over SmolLM2's
    49,152-token vocabulary are 400 MB of logits and as much again for their log-softmax, which made scoring after
    training the peak of `make demo`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().out_features
    rows = []
    for first in range(0, len(examples), batch_size):
        batch = {key: value.to(device) for key, value in collator(examples[first : first + batch_size]).items()}
        step = max(1, LOGITS_BYTES // (batch["input_ids"].shape[1] * vocab * 4))
        for part in range(0, batch["input_ids"].shape[0], step):
            rows += _likelihood_rows({key: value[part : part + step] for key, value in batch.items()}, model)
    model.train(was_training)
    return _per_conversation(rows, [example.get("conversation", index) for index, example in enumerate(examples)])


def _per_conversation(rows: list[dict], conversations: list[int]) -> list[dict]:
    """The rows of one conversation's windows (`long_conversations: split`) summed into one: the bootstrap resamples
    conversations, and windows of one conversation are not independent."""
    merged: dict[int, dict] = {}
    for row, conversation in zip(rows, conversations):
        if conversation in merged:
            merged[conversation] = {key: merged[conversation][key] + row[key] for key in row}
        else:
            merged[conversation] = dict(row)
    return list(merged.values())


def _likelihood_rows(batch: dict, model) -> list[dict]:
    labels = batch["labels"][:, 1:]  # token t is predicted from position t-1
    targets = labels != IGNORE_INDEX
    if supports_target_only_loss(model):
        # the LM head only where a token is scored, as training's loss runs it (the human turns are not)
        inner = unwrap_peft(model)
        hidden = inner.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).last_hidden_state[:, :-1]
        logits, scored = inner.get_output_embeddings()(hidden[targets]).float(), labels[targets]
        rows, zeros = targets.nonzero()[:, 0], torch.zeros(labels.shape[0], device=labels.device)
        nll = zeros.clone().index_add_(0, rows, F.cross_entropy(logits, scored, reduction="none"))
        correct = zeros.index_add_(0, rows, (logits.argmax(-1) == scored).float())
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none").sum(1)
        correct = ((logits.argmax(-1) == labels) & targets).sum(1)
    return [{"nll": nll[row].item(), "tokens": int(targets[row].sum()), "correct": int(correct[row])}
            for row in range(labels.shape[0])]


def summarize_likelihoods(rows: list[dict]) -> dict[str, float]:
    """Token-weighted loss, perplexity and token accuracy of per-example rows."""
    count = sum(row["tokens"] for row in rows)
    loss = sum(row["nll"] for row in rows) / max(count, 1)
    accuracy = sum(row["correct"] for row in rows) / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "token_accuracy": accuracy, "tokens": count}


def likelihood(model, examples: list[dict], collator, batch_size: int = 8) -> dict[str, float]:
    return summarize_likelihoods(conversation_likelihoods(model, examples, collator, batch_size))
