"""Split a conversation longer than max_length into windows of whole turns (`long_conversations: split`), or cut a
context to its latest whole turns (`latest_turns`, the prompts of `chattune align`).

    windows = split_windows(conversation, token_lengths, max_length=512)   # [[system?, user, assistant, ...], ...]

`token_lengths(conversations)` gives each rendered conversation's length in tokens (data/masks.py passes its own).
Each window keeps the system turn and holds whole exchanges (a user turn and the replies that follow it), as many
as fit in max_length tokens by the sum of their lengths. What the template writes once per conversation (a system
turn, a default system prompt) is measured once and counted once per window, so a window rarely runs over (one
that does is cut like any long conversation). An exchange longer than max_length on its own is a window by itself.
"""

from __future__ import annotations

from collections.abc import Callable


def _exchanges(turns: list[dict]) -> list[list[dict]]:
    exchanges: list[list[dict]] = []
    for turn in turns:
        if turn["role"] == "user" or not exchanges:
            exchanges.append([])
        exchanges[-1].append(turn)
    return exchanges


def split_windows(conversation: list[dict], token_lengths: Callable[[list[list[dict]]], list[int]],
                  max_length: int) -> list[list[dict]]:
    system = conversation[:1] if conversation and conversation[0]["role"] == "system" else []
    exchanges = _exchanges(conversation[len(system):])
    alone = token_lengths([system + exchange for exchange in exchanges])
    # Rendering an exchange twice tells its own cost from what every window pays once. Lengths past max_length are
    # not measured exactly, so the shortest exchange is doubled, and a double that does not fit counts nothing shared.
    shortest = min(range(len(exchanges)), key=alone.__getitem__)
    twice = token_lengths([system + exchanges[shortest] + exchanges[shortest]])[0]
    shared = max(0, 2 * alone[shortest] - twice) if twice <= max_length else 0
    windows: list[list[dict]] = []
    used = max_length + 1  # start a window at the first exchange
    for exchange, length in zip(exchanges, alone):
        if used + length - shared > max_length:
            windows.append(list(system))
            used = shared
        windows[-1] += exchange
        used += length - shared
    return windows


def latest_turns(context: list[dict], token_length: Callable[[list[dict]], int], max_tokens: int) -> list[dict]:
    """A context cut to its system turn and its latest whole exchanges whose rendering fits `max_tokens`: what a
    reply depends on most, and a prompt that starts at a user turn, as chat templates expect. The last exchange
    stays even when it alone is longer."""
    system = context[:1] if context and context[0]["role"] == "system" else []
    exchanges = _exchanges(context[len(system):])
    first = 0
    while first < len(exchanges) - 1 and token_length(system + sum(exchanges[first:], [])) > max_tokens:
        first += 1
    return system + sum(exchanges[first:], [])
