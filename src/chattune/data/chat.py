"""Render conversations with the model's chat template and mark which tokens are trained.

    example = tokenize_conversation(tokenizer, messages, end_of_turn_token(tokenizer), max_length=512)
    example["input_ids"], example["labels"]   # labels are -100 outside the loss

The trained tokens of a conversation are each assistant turn's text plus the end-of-turn token that closes it
(so the model learns to stop). They are found by rendering the conversation prefix by prefix: for assistant
turn i, the text after `render(messages[:i], add_generation_prompt=True)` up to and including the next
end-of-turn token is the reply. Character spans are mapped to tokens with the fast tokenizer's offsets, so the
tokens trained are exactly the tokens the model sees, whatever the template.
"""

from __future__ import annotations

from chattune.errors import InputError

IGNORE_INDEX = -100  # label value that cross-entropy skips (the PyTorch / transformers convention)
_PROBE = "chattune-probe-reply"


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def end_of_turn_token(tokenizer) -> str:
    """The special token the chat template writes right after an assistant reply (<|im_end|>, <|eot_id|>, EOS)."""
    text = render(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}])
    after = text[text.index(_PROBE) + len(_PROBE) :]
    candidates = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    for token in sorted(candidates, key=len, reverse=True):
        if token and after.startswith(token):
            return token
    raise InputError(
        f"model {tokenizer.name_or_path}: its chat template does not close assistant replies with a special token "
        f"(found {after[:20]!r}); the model could not learn to stop"
    )


def assistant_spans(tokenizer, messages: list[dict], end_token: str) -> tuple[str, list[tuple[int, int]]]:
    """Return the rendered text and the character spans of each assistant reply plus its end-of-turn token."""
    text = render(tokenizer, messages)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:index], add_generation_prompt=True)
        if not text.startswith(prefix):
            raise InputError(
                f"model {tokenizer.name_or_path}: its chat template renders earlier turns differently once a reply "
                "follows, so reply tokens cannot be located; use a model with a prefix-stable template"
            )
        end = text.index(end_token, len(prefix)) + len(end_token)
        spans.append((len(prefix), end))
    return text, spans


def tokenize_conversation(
    tokenizer, messages: list[dict], end_token: str, max_length: int, loss_on: str = "assistant"
) -> dict | None:
    """Token ids and labels for one conversation, cut at `max_length`; None if no trained token survives the cut."""
    text, spans = assistant_spans(tokenizer, messages, end_token)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = encoded["input_ids"][:max_length]
    offsets = encoded["offset_mapping"][:max_length]
    labels = [
        token if loss_on == "all" or any(start <= offset[0] < end for start, end in spans) else IGNORE_INDEX
        for token, offset in zip(input_ids, offsets)
    ]
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def tokenize_conversations(tokenizer, conversations, max_length: int, loss_on: str = "assistant"):
    """Tokenize many conversations; returns (examples, number dropped because no reply fit in max_length)."""
    examples, dropped = [], 0
    end_token = end_of_turn_token(tokenizer)
    for messages in conversations:
        example = tokenize_conversation(tokenizer, messages, end_token, max_length, loss_on)
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    return examples, dropped


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
