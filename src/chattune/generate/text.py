"""Reply text from generated token ids: a whole reply (`Reply`), or one streamed piece by piece (`ReplyText`).

    reply = ReplyText(backend.decode, stop=["\\nUser:"])
    backend.generate(backend.prompt_ids(messages), Sampling(), lambda t: print(reply.add(t), end="") or True)

Everything about text (incremental decoding, stop strings, whitespace) is here, so a backend only has to produce
token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Reply:
    text: str  # decoded without special tokens, stripped
    ended: bool  # the reply ended with a stop token (end of turn), rather than being cut at max_new_tokens


class ReplyText:
    """Turn generated token ids into reply text, piece by piece, cut before the first stop string.

        reply = ReplyText(backend.decode, stop=["\\nUser:"])
        piece = reply.add(token_id)   # "" while the new text may still change
        rest = reply.finish()         # reply.text == all pieces joined, and equals the reply decoded at once

    Held back until it settles: an incomplete UTF-8 character (decoded as U+FFFD), trailing whitespace (the reply is
    stripped, like `Reply.text`) and a tail that could be the start of a stop string.
    """

    def __init__(self, decode: Callable[[list[int]], str], stop: list[str]):
        self.decode, self.stop = decode, stop
        self.token_ids: list[int] = []
        self.text = ""  # what has been handed out so far
        self.stopped = False  # a stop string was found

    def add(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.token_ids.append(token_id)
        decoded = self.decode(self.token_ids).lstrip()
        cut = min((decoded.find(s) for s in self.stop if s in decoded), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._advance(decoded[:cut].rstrip())
        settled = decoded.rstrip("\ufffd").rstrip()
        return self._advance(settled[: len(settled) - self._stop_prefix_length(settled)])

    def finish(self) -> str:
        if self.stopped:
            return ""
        return self._advance(self.decode(self.token_ids).strip())

    def _stop_prefix_length(self, text: str) -> int:
        """Length of the longest end of `text` that a stop string starts with."""
        return max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.text):
            return ""  # decoding more tokens rewrote earlier text (rare); what was sent stands
        piece, self.text = text[len(self.text) :], text
        return piece
