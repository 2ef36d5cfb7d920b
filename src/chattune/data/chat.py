"""Render conversations with the model's chat template and mark which tokens are trained.

    example = tokenize_conversation(tokenizer, messages, end_of_turn_token(tokenizer), max_length=512)
    example["input_ids"], example["labels"]   # labels are -100 outside the loss
    examples, counts = tokenize_conversations(tokenizer, conversations, max_length=512, long_conversations="split")

The trained tokens of a conversation are each assistant turn's text plus the end-of-turn token that closes it
(so the model learns to stop); data/template.py says how the replies are found, data/masks.py how that is done fast
for many conversations. Character spans are mapped to tokens with the fast tokenizer's offsets, so the tokens
trained are exactly the tokens the model sees, whatever the template.
"""

from __future__ import annotations

from chattune.data.masks import ChatTokenizer, tokenize_many
from chattune.data.template import IGNORE_INDEX, end_of_turn_token, render

__all__ = ["IGNORE_INDEX", "end_of_turn_token", "marked_example", "render", "token_stats",
           "tokenize_conversation", "tokenize_conversations"]


def tokenize_conversation(
    tokenizer, messages: list[dict], end_token: str, max_length: int, loss_on: str = "assistant"
) -> dict | None:
    """Token ids and labels for one conversation, cut at `max_length`; None if no trained token survives the cut."""
    chat = ChatTokenizer.for_model(tokenizer, max_length, loss_on, end_token)
    examples, _ = tokenize_many(chat, [messages])
    return examples[0] if examples else None


def tokenize_conversations(tokenizer, conversations, max_length: int, loss_on: str = "assistant",
                           long_conversations: str = "cut") -> tuple[list[dict], dict[str, int]]:
    """(examples, counts) for many conversations; see masks.tokenize_many for the counts."""
    return tokenize_many(ChatTokenizer.for_model(tokenizer, max_length, loss_on), conversations, long_conversations)


def marked_example(tokenizer, example: dict) -> list[tuple[str, bool]]:
    """Pieces of the decoded example as (text, trained) runs, for showing users what the loss sees."""
    pieces: list[tuple[str, bool]] = []
    for token, label in zip(example["input_ids"], example["labels"]):
        trained = label != IGNORE_INDEX
        piece = tokenizer.decode([token])
        if pieces and pieces[-1][1] == trained:
            pieces[-1] = (pieces[-1][0] + piece, trained)
        else:
            pieces.append((piece, trained))
    return pieces


def token_stats(examples: list[dict]) -> dict[str, float]:
    """Length statistics (tokens per conversation, and trained tokens) for data reports."""
    import statistics

    lengths = sorted(len(example["input_ids"]) for example in examples)
    trained = [sum(label != IGNORE_INDEX for label in example["labels"]) for example in examples]
    return {
        "conversations": len(lengths),
        "min": lengths[0],
        "mean": round(statistics.fmean(lengths), 1),
        "p50": lengths[len(lengths) // 2],
        "p95": lengths[min(len(lengths) - 1, int(len(lengths) * 0.95))],
        "max": lengths[-1],
        "total": sum(lengths),
        "trained_total": sum(trained),
    }
