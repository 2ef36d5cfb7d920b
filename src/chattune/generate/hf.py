"""Decode with transformers: a left-padded batch over a KV cache, greedy or sampled, one random generator per request.

    backend = load_hf_backend("runs/demo")          # a run folder (its LoRA merged at load) or any model
    backend.replies([[{"role": "user", "content": "hi!"}]], Sampling(temperature=0))    # [Reply(text, ended)]
    backend.generate(backend.prompt_ids(messages), Sampling(), on_token)               # token by token (chat, serve)

Not `model.generate`: it cannot stop one row while the others go on (a client that left, a stop string), and it
samples from the global torch RNG. This loop warps logits as generate does (repetition penalty, temperature, top_k,
top_p), draws from the request's own generator, and its greedy replies are generate's tokens
(tests/test_generate_hf.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from chattune.data.conversation import Conversation
from chattune.generate.prompt import ChatPrompt
from chattune.generate.sampling import Sampling, batch_key
from chattune.generate.text import Reply
from chattune.runs import Run

MAX_BATCH = 8  # rows decoded at once by `generate_batch`: the 8 concurrent streams serving is sized for


def logits_warpers(sampling: Sampling):
    """transformers' processors for a reply, in the order `model.generate` applies them: the repetition penalty,
    then (sampled replies only) temperature, top_k and top_p."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    warpers = LogitsProcessorList()
    if sampling.repetition_penalty != 1:
        warpers.append(RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty))
    if sampling.greedy:
        return warpers
    warpers.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


class HFBackend:
    """A transformers causal LM behind the decode interface (`chattune.generate.backend.DecodeBackend`)."""

    max_batch = MAX_BATCH

    def __init__(self, model: torch.nn.Module, tokenizer, system_prompt: str | None = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.prompt = ChatPrompt(tokenizer, system_prompt)
        self.stop_ids = self.prompt.stop_ids
        self.context_length = model.config.max_position_embeddings

    def prompt_ids(self, messages: Conversation) -> list[int]:
        return self.prompt.ids(messages)

    def decode(self, token_ids: list[int]) -> str:
        return self.prompt.decode(token_ids)

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        self._decode([prompt_ids], sampling, [sampling.max_new_tokens], [on_token])

    def generate_batch(self, prompts: list[list[int]], samplings: list[Sampling],
                       on_tokens: list[Callable[[int], bool]]) -> None:
        assert 0 < len(prompts) <= self.max_batch and len(prompts) == len(samplings) == len(on_tokens)
        assert len({batch_key(s) for s in samplings}) == 1 and batch_key(samplings[0]) is not None, samplings
        self._decode(prompts, samplings[0], [s.max_new_tokens for s in samplings], on_tokens)

    def replies(self, conversations: list[Conversation], sampling: Sampling) -> list[Reply]:
        """Whole replies to every conversation, decoded as one batch (sampled ones share one generator, so a seed
        reproduces the same batch)."""
        tokens: list[list[int]] = [[] for _ in conversations]
        self._decode([self.prompt_ids(c) for c in conversations], sampling, [sampling.max_new_tokens] * len(tokens),
                     [lambda token_id, row=row: tokens[row].append(token_id) or True for row in range(len(tokens))])
        return [Reply(self.decode(row).strip(), bool(row) and row[-1] in self.stop_ids) for row in tokens]

    @torch.no_grad()
    def _decode(self, prompts: list[list[int]], sampling: Sampling, max_new_tokens: list[int],
                on_tokens: list[Callable[[int], bool]]) -> None:
        """Each row calls its `on_token` and stops on its own: at a stop id, at its `max_new_tokens`, or when its
        `on_token` returns False. A finished row stays in the batch, its tokens dropped, until all have ended."""
        input_ids, attention_mask, position_ids = self._left_padded(prompts)
        pick = self._token_picker(sampling)
        live, counts, cache, seen = [True] * len(prompts), [0] * len(prompts), None, input_ids
        while any(live):
            output = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True)
            cache, next_ids = output.past_key_values, pick(seen, output.logits[:, -1, :].float())
            seen = torch.cat([seen, next_ids[:, None]], dim=-1)  # what the repetition penalty counts
            for row, token_id in enumerate(next_ids.tolist()):
                if live[row]:
                    counts[row] += 1
                    keep = on_tokens[row](token_id)
                    live[row] = keep and token_id not in self.stop_ids and counts[row] < max_new_tokens[row]
            input_ids, position_ids = next_ids[:, None], position_ids[:, -1:] + 1
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(prompts), 1))], dim=-1)

    def _left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input ids, attention mask and position ids of prompts padded on the left, where generation cannot see
        the padding (the tokenizer's `padding_side` is left alone: training pads on the right)."""
        assert prompts, "nothing to decode"
        width, device = max(len(p) for p in prompts), self.model.device
        pad_id = self.stop_ids[0]  # any id: padding is masked out of attention
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # each row counts from its first real token
        return input_ids, attention_mask, position_ids

    def _token_picker(self, sampling: Sampling) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Next token ids from last-position logits: the likeliest, or drawn from the warped distribution with the
        request's own generator (the global torch RNG is never used)."""
        warpers = logits_warpers(sampling)
        if sampling.greedy:
            return lambda seen, logits: warpers(seen, logits).argmax(dim=-1)
        generator = sampling.generator(self.model.device)
        return lambda seen, logits: torch.multinomial(warpers(seen, logits).softmax(-1), 1, generator=generator)[:, 0]


def load_hf_backend(name: str) -> HFBackend:
    """A chattune run folder (with its system prompt), or any model name or folder that `load_model` accepts."""
    from chattune.models import load_model, load_tokenizer

    if not Run.is_run(name):
        return HFBackend(*load_model(name))
    run = Run.open(name)
    tokenizer = load_tokenizer(str(run.tokenizer_dir))  # carries the chat template training used
    if run.is_adapter:
        from peft import PeftModel

        base, _ = load_model(run.config.model)
        # merged once at load: decoding is then as fast as a plain model
        model = PeftModel.from_pretrained(base, run.weights).merge_and_unload()
    else:
        model, _ = load_model(str(run.weights))
    return HFBackend(model, tokenizer, run.config.system_prompt)
