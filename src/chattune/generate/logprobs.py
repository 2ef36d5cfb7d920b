"""Log-probabilities of the tokens a reply picked (the OpenAI API's `logprobs` / `top_logprobs`), for both backends.

    picker = NotingPicker(TokenPicker(sampling), top=2)
    token_id = picker(logits)            # the same token the plain picker gives
    picker.take()                        # [TokenLogprob(token_id, logprob, top=[(id, logprob), (id, logprob)])]

The log-probabilities are the model's own (log-softmax of the raw logits), before temperature, top-k/top-p and the
repetition penalty: what the model thinks of each token, whichever way the request samples (vLLM reports the same).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 5  # alternatives per token a request may ask for (the cap; OpenAI allows 20)


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # the `top` likeliest tokens and their log-probabilities, likeliest first


class NotingPicker:
    """Wraps a token picker: picks exactly as it does, and notes each picked token's log-probability."""

    def __init__(self, picker, top: int):
        assert 0 <= top <= MAX_TOP_LOGPROBS, f"top_logprobs {top} outside 0..{MAX_TOP_LOGPROBS}"
        self.picker, self.top, self.noted = picker, top, []

    def __call__(self, logits: torch.Tensor) -> int:
        token_id = self.picker(logits)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        values, ids = logprobs.topk(self.top) if self.top else (logprobs[:0], logprobs[:0].long())
        self.noted.append(TokenLogprob(token_id, float(logprobs[token_id]), list(zip(ids.tolist(), values.tolist()))))
        return token_id

    def take(self) -> list[TokenLogprob]:
        """The entries noted since the last call."""
        noted, self.noted = self.noted, []
        return noted
