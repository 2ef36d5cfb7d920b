"""Decode backends: chat-formatted prompt ids in, reply token ids out one at a time, and the text they make.

    backend = load_backend("runs/demo", "hf")            # or "llamacpp" (chattune.llamacpp_backend)
    reply = ReplyText(backend.decode, stop=[])
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0), lambda t: print(reply.add(t)) or True)

Serving (`serve.engine`) and terminal chat both decode through this interface, so a faster backend only has to
produce the same token ids; everything about text (incremental decoding, stop strings, whitespace) is `ReplyText`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import torch

from chattune.errors import InputError
from chattune.inference import Chatbot, Sampling

BACKENDS = ("hf", "llamacpp")
MAX_BATCH = 8  # rows the HF backend decodes at once: the 8 concurrent streams serving is sized for


def batch_key(sampling: Sampling) -> tuple | None:
    """Requests with equal keys may be decoded in one batch: all greedy, or the same temperature and top_p with no
    seed. A seeded request is reproducible only alone (`None`), since a batch shares one random generator."""
    if sampling.seed is not None:
        return None
    return ("greedy",) if sampling.temperature == 0 else ("sample", sampling.temperature, sampling.top_p)


class DecodeBackend(Protocol):
    stop_ids: list[int]  # token ids that end a reply (end-of-turn, EOS)
    context_length: int  # prompt + reply tokens the model can read
    max_batch: int  # most requests `generate_batch` decodes at once; 1 means one at a time

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The conversation rendered with the chat template (and default system prompt), ready for a reply."""

    def decode(self, token_ids: list[int]) -> str:
        """Text of generated token ids, special tokens left out."""

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        """Call `on_token(id)` for every new token; stop at a stop id, at `sampling.max_new_tokens`, or as soon as
        `on_token` returns False."""

    def generate_batch(self, prompts: list[list[int]], samplings: list[Sampling],
                       on_tokens: list[Callable[[int], bool]]) -> None:
        """`generate` for up to `max_batch` prompts whose samplings share a `batch_key`; each row calls its own
        `on_token` and stops on its own (stop id, its `max_new_tokens`, its `on_token` returning False)."""


class HFGenerateBackend:
    """Decode with transformers' `generate` (greedy or top-p sampling), exactly as `chattune chat` does."""

    def __init__(self, chatbot: Chatbot):
        self.chatbot = chatbot
        self.stop_ids = chatbot.stop_ids
        self.context_length = chatbot.model.config.max_position_embeddings
        self.max_batch = MAX_BATCH
        # A fast tokenizer raises "Already borrowed" when two threads use it at once: the event loop encodes
        # prompts while the worker decodes replies.
        self._tokenizer_lock = threading.Lock()

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        tokenizer = self.chatbot.tokenizer
        text = tokenizer.apply_chat_template(self.chatbot.with_system(messages), tokenize=False,
                                             add_generation_prompt=True)
        with self._tokenizer_lock:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.chatbot.tokenizer.decode(token_ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        keep_going = True

        class TokenSink(BaseStreamer):
            first = True  # generate() first puts the prompt, then each new token

            def put(self, value: torch.Tensor) -> None:
                nonlocal keep_going
                if self.first:
                    self.first = False
                    return
                keep_going = on_token(int(value.reshape(-1)[0])) and keep_going

            def end(self) -> None:
                pass

        class StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
                return torch.full((input_ids.shape[0],), not keep_going, dtype=torch.bool, device=input_ids.device)

        model = self.chatbot.model
        input_ids = torch.tensor([prompt_ids], device=model.device)
        model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=TokenSink(),
                       stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                       **self.chatbot.generate_kwargs(sampling))


    @torch.no_grad()
    def generate_batch(self, prompts: list[list[int]], samplings: list[Sampling],
                       on_tokens: list[Callable[[int], bool]]) -> None:
        """A greedy or sampling loop over a left-padded batch with a KV cache (not `model.generate`, which cannot
        stop one row while the others go on). A finished row stays in the batch, its tokens dropped, until all end."""
        assert 0 < len(prompts) <= self.max_batch and len(prompts) == len(samplings) == len(on_tokens)
        assert len({batch_key(s) for s in samplings}) == 1 and batch_key(samplings[0]) is not None, samplings
        model = self.chatbot.model
        width = max(len(p) for p in prompts)
        pad_id = self.stop_ids[0]  # any id: padding is masked out of attention
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=model.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        pick = self._token_picker(samplings[0])
        live, counts, cache = [True] * len(prompts), [0] * len(prompts), None
        while any(live):
            output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                           past_key_values=cache, use_cache=True)
            cache, next_ids = output.past_key_values, pick(input_ids, output.logits[:, -1, :].float())
            for row, token_id in enumerate(next_ids.tolist()):
                if live[row]:
                    counts[row] += 1
                    keep = on_tokens[row](token_id)
                    live[row] = keep and token_id not in self.stop_ids and counts[row] < samplings[row].max_new_tokens
            input_ids, position_ids = next_ids[:, None], position_ids[:, -1:] + 1
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(prompts), 1))], dim=-1)

    def _token_picker(self, sampling: Sampling) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Next token ids from last-position logits, warped as `model.generate` warps them for this sampling."""
        if sampling.temperature == 0:
            return lambda input_ids, logits: logits.argmax(dim=-1)
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
        if self.chatbot.model.generation_config.top_k:  # generate() applies its top_k (default 50) before top_p
            warpers.append(TopKLogitsWarper(self.chatbot.model.generation_config.top_k))
        warpers.append(TopPLogitsWarper(sampling.top_p))
        return lambda input_ids, logits: torch.multinomial(warpers(input_ids, logits).softmax(-1), 1)[:, 0]


class ReplyText:
    """Turn generated token ids into reply text, piece by piece, cut before the first stop string.

        reply = ReplyText(backend.decode, stop=["\\nUser:"])
        piece = reply.add(token_id)   # "" while the new text may still change
        rest = reply.finish()         # reply.text == all pieces joined, and equals the reply decoded at once

    Held back until it settles: an incomplete UTF-8 character (decoded as U+FFFD), trailing whitespace (the reply is
    stripped, like `Chatbot.replies`) and a tail that could be the start of a stop string.
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


def load_backend(name: str, backend: str = "hf", quant: str = "q8_0") -> DecodeBackend:
    """A run folder or model behind the chosen backend; llamacpp exports the run to GGUF once."""
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if backend == "llamacpp":
        from chattune.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend.load(name, quant)
    from chattune.inference import load_chatbot

    return HFGenerateBackend(load_chatbot(name))
