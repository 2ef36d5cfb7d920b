"""What a model's chat template writes: the rendered text, the end-of-turn token, and the reference way to find
the replies in it (prefix renders).

    text = render(tokenizer, messages)
    end_token = end_of_turn_token(tokenizer)                        # "<|im_end|>", "<|eot_id|>", EOS
    text, spans = assistant_spans(tokenizer, messages, end_token)   # character spans of each reply + end token

For assistant turn i, the text after `render(messages[:i], add_generation_prompt=True)` up to and including the
next end-of-turn token is the reply. This costs a render per reply (O(turns²) in all); data/masks.py finds the same
spans with one render and falls back to this for templates where it cannot.
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
