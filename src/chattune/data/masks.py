"""Token ids and label masks for many conversations at once, in time linear in what is trained.

    chat = ChatTokenizer.for_model(tokenizer, max_length=512)
    examples, counts = tokenize_many(chat, conversations, long_conversations="cut")

This computes what template.assistant_spans and a whole-text tokenization compute (tests/test_data_masks.py checks
that they agree), faster in three ways:
  - Reply spans come from one render per conversation: each assistant reply is found after the text the template
    writes for `add_generation_prompt`, searching forward turn by turn. Rendering prefix by prefix cost O(turns²):
    208 s for 10,000 turns. Templates where the search cannot work fall back to the prefix renders, on the turns
    that fit only.
  - Only the start of the rendered text that can hold `max_length` tokens is tokenized (a 20 MB reply used to be
    tokenized whole, 3.9 GB). The cut is widened until the tokens reach max_length + CUT_MARGIN, so the first
    max_length tokens are those of the whole text unless a single word of more than CUT_MARGIN tokens crosses it.
  - The fast tokenizer encodes a batch at a time (in parallel, in Rust); labels are set a reply at a time, from
    the tokens at each reply's first and last character, not by testing every token's offsets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from chattune.data.gc_pause import gc_paused
from chattune.data.template import IGNORE_INDEX, assistant_spans, end_of_turn_token, render
from chattune.data.windows import split_windows

CHARS_PER_TOKEN = 8  # first guess of characters per token (English averages ~4); wrong guesses only cost a retry
CUT_MARGIN = 64  # tokens past max_length that a cut text must reach before its first max_length tokens are trusted
BATCH = 512  # conversations per call to the fast tokenizer
_PROBE = [
    {"role": "system", "content": "probe system"},
    {"role": "user", "content": "probe question one"},
    {"role": "assistant", "content": "probe answer one"},
    {"role": "user", "content": "probe question two"},
    {"role": "assistant", "content": "probe answer two"},
]


@dataclass
class ChatTokenizer:
    """A tokenizer with what its chat template needs found once: the end-of-turn token and the text written before
    each reply (None when the template's generation prompt is not a plain suffix: then replies are found by
    prefix renders)."""

    tokenizer: object
    end_token: str
    generation_prompt: str | None
    max_length: int
    loss_on: str = "assistant"

    @classmethod
    def for_model(cls, tokenizer, max_length: int, loss_on: str = "assistant", end_token: str | None = None):
        end_token = end_token or end_of_turn_token(tokenizer)
        chat = cls(tokenizer, end_token, _generation_prompt(tokenizer), max_length, loss_on)
        if chat.generation_prompt is not None and not _search_agrees(chat):
            chat.generation_prompt = None
        return chat


def _generation_prompt(tokenizer) -> str | None:
    question = _PROBE[:2]
    closed, opened = render(tokenizer, question), render(tokenizer, question, add_generation_prompt=True)
    return opened[len(closed):] if opened.startswith(closed) and len(opened) > len(closed) else None


def _search_agrees(chat: ChatTokenizer) -> bool:
    """Whether the forward search finds the same spans as prefix renders, with and without a system turn."""
    for probe in (_PROBE, _PROBE[1:]):
        text = render(chat.tokenizer, probe)
        if reply_spans(text, probe, chat.generation_prompt, chat.end_token) != \
                assistant_spans(chat.tokenizer, probe, chat.end_token)[1]:
            return False
    return True


def reply_spans(text: str, messages: list[dict], generation_prompt: str, end_token: str) -> list[tuple[int, int]] | None:
    """Character spans of each reply plus its end token in `text` (the rendered `messages`), found by a forward
    search; None when a turn's text is not where it should be (the template rewrote it), for the caller to fall
    back to prefix renders."""
    spans, position = [], 0
    for message in messages:
        content = message["content"]
        if message["role"] != "assistant":
            found = text.find(content, position)
            if found < 0:
                return None
            position = found + len(content)
            continue
        prompt = text.find(generation_prompt, position)
        if prompt < 0:
            return None
        start = prompt + len(generation_prompt)
        found = text.find(content, start)
        if found < 0 or text[start:found].strip():
            return None
        end = text.find(end_token, start)
        if end < 0:
            return None
        spans.append((start, end + len(end_token)))
        position = max(found + len(content), end + len(end_token))
    return spans


def _turns_within(messages: list[dict], chars: int) -> list[dict]:
    """The first turns, up to the first whose text starts past `chars` characters: all that can fit."""
    total = 0
    for index, message in enumerate(messages):
        if total > chars:
            return messages[:index]
        total += len(message["content"])
    return messages


def text_and_spans(chat: ChatTokenizer, messages: list[dict], chars: int) -> tuple[str, list[tuple[int, int]], bool]:
    """(rendered conversation, its reply spans, whether the text holds every turn): with prefix renders, only the
    turns within `chars` characters are rendered."""
    if chat.generation_prompt is not None:
        text = render(chat.tokenizer, messages)
        spans = reply_spans(text, messages, chat.generation_prompt, chat.end_token)
        if spans is not None:
            return text, spans, True
    turns = _turns_within(messages, chars)
    return *assistant_spans(chat.tokenizer, turns, chat.end_token), len(turns) == len(messages)


def _first_token_at_or_after(encoding, char: int, text_length: int, token_count: int) -> int:
    """Index of the first token whose first character is at or after `char` (token_count if none)."""
    while char < text_length:
        token = encoding.char_to_token(char)
        if token is not None:
            return token if encoding.token_to_chars(token)[0] >= char else token + 1
        char += 1  # a character no token covers (removed by the normalizer): look at the next one
    return token_count


def _labels(chat: ChatTokenizer, input_ids: list[int], encoding, text_length: int,
            spans: list[tuple[int, int]]) -> list[int]:
    """Token i is trained when its first character lies in a reply span; found per span boundary with the fast
    tokenizer's char_to_token, not per token (one lookup per reply instead of a test per token)."""
    if chat.loss_on == "all":
        return list(input_ids)
    labels = [IGNORE_INDEX] * len(input_ids)
    for start, end in spans:
        first = _first_token_at_or_after(encoding, start, text_length, len(encoding.ids))
        if first >= len(input_ids):
            break
        last = _first_token_at_or_after(encoding, end, text_length, len(encoding.ids))
        labels[first:last] = input_ids[first:last]
    return labels[: len(input_ids)]


def _encode(chat: ChatTokenizer, texts: list[str]) -> list:
    """The fast tokenizer's Encoding of each text (ids, and characters <-> tokens)."""
    return chat.tokenizer(texts, add_special_tokens=False).encodings


def _example(chat: ChatTokenizer, encoding, text_length: int, spans) -> dict | None:
    input_ids = encoding.ids[: chat.max_length]
    labels = _labels(chat, input_ids, encoding, text_length, spans)
    if all(label == IGNORE_INDEX for label in labels):
        return None
    return {"input_ids": input_ids, "labels": labels}


def _encode_enough(chat: ChatTokenizer, messages: list[dict], chars: int):
    """(Encoding, characters encoded, spans, full length in tokens or -1 when cut) of one conversation, widening the
    cut (and the turns rendered, on the prefix-render path) until max_length + CUT_MARGIN tokens are reached."""
    while True:
        text, spans, complete = text_and_spans(chat, messages, chars)
        cut = min(len(text), chars)
        encoding = _encode(chat, [text[:cut]])[0]
        if len(encoding.ids) >= chat.max_length + CUT_MARGIN or (cut == len(text) and complete):
            return encoding, cut, spans, len(encoding.ids) if cut == len(text) and complete else -1
        chars *= 4  # dense text (code, CJK, long words): fewer characters per token than guessed


def encode_conversations(chat: ChatTokenizer, conversations: list[list[dict]]) -> list[tuple[object, int, list, int]]:
    """(Encoding, characters encoded, spans, full length in tokens or -1 when cut) per conversation, each
    tokenized only as far as max_length needs; the common case in one batch call."""
    chars = (chat.max_length + CUT_MARGIN) * CHARS_PER_TOKEN
    rendered = [text_and_spans(chat, messages, chars) for messages in conversations]
    cuts = [min(len(text), chars) for text, _, _ in rendered]
    encodings = _encode(chat, [text[:cut] for (text, _, _), cut in zip(rendered, cuts)])
    results = []
    for messages, (text, spans, complete), cut, encoding in zip(conversations, rendered, cuts, encodings):
        whole = cut == len(text) and complete
        if whole or len(encoding.ids) >= chat.max_length + CUT_MARGIN:
            results.append((encoding, cut, spans, len(encoding.ids) if whole else -1))
        else:
            results.append(_encode_enough(chat, messages, chars * 4))
    return results


def _token_lengths(chat: ChatTokenizer, conversations: list[list[dict]]) -> list[int]:
    """Tokens of each rendered conversation; max_length + 1 for any longer than that (some are not tokenized
    whole, so a longer length would mean exact for some and capped for others)."""
    return [length if 0 <= length <= chat.max_length else chat.max_length + 1
            for *_, length in encode_conversations(chat, conversations)]


def _add(example: dict | None, conversation: int, examples: list[dict], counts: dict[str, int]) -> None:
    if example is None:
        counts["no_reply_within_max_length"] += 1
    else:
        example["conversation"] = conversation
        examples.append(example)


def _tokenize_batch(chat: ChatTokenizer, batch: list[list[dict]], first: int, long_conversations: str,
                    examples: list[dict], counts: dict[str, int]) -> None:
    encoded = encode_conversations(chat, batch)
    for conversation, (messages, (encoding, chars, spans, length)) in enumerate(zip(batch, encoded), first):
        if 0 <= length <= chat.max_length:
            _add(_example(chat, encoding, chars, spans), conversation, examples, counts)
            continue
        counts["over_max_length"] += 1
        if long_conversations == "cut":
            _add(_example(chat, encoding, chars, spans), conversation, examples, counts)
            continue
        windows = split_windows(messages, lambda parts: _token_lengths(chat, parts), chat.max_length)
        counts["split_windows"] += len(windows)
        for window, chars, window_spans, _ in encode_conversations(chat, windows):
            _add(_example(chat, window, chars, window_spans), conversation, examples, counts)


def tokenize_many(chat: ChatTokenizer, conversations: Iterable[list[dict]], long_conversations: str = "cut"
                  ) -> tuple[list[dict], dict[str, int]]:
    """(examples, counts): counts["no_reply_within_max_length"] conversations (or windows) dropped because no
    trained token fit, counts["over_max_length"] conversations longer than max_length (cut, or split into
    counts["split_windows"] windows of whole turns when long_conversations == "split"). Each example's
    "conversation" is the index of the conversation it came from: the windows of one conversation share it, so
    held-out scores count the conversation once, not each window (evaluate.likelihood)."""
    assert long_conversations in ("cut", "split"), long_conversations
    examples: list[dict] = []
    counts = {"no_reply_within_max_length": 0, "over_max_length": 0, "split_windows": 0}
    iterator, first = iter(conversations), 0
    with gc_paused():  # millions of token lists, none in a cycle
        while batch := list(itertools.islice(iterator, BATCH)):
            _tokenize_batch(chat, batch, first, long_conversations, examples, counts)
            first += len(batch)
    return examples, counts
