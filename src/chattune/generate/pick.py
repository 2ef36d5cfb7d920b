"""The next token of one request from its last-position logits, the same way for both backends.

    picker = TokenPicker(Sampling(temperature=0.7, seed=1))
    token_id = picker(logits)          # logits: a float tensor over the vocabulary

Every request has its own picker (its warpers and its own random generator), so requests with different sampling
settings share a decode step, and a seeded request draws the same tokens alone or in a crowd: no other row touches
its generator, and the global torch RNG is never used.
"""

from __future__ import annotations

import torch

from chattune.generate.sampling import Sampling


def logits_warpers(sampling: Sampling):
    """transformers' warpers for a sampled reply, in the order `model.generate` applies them."""
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
    if sampling.top_k > 0:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    return warpers


def draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One token from the distribution `probs` by its inverse CDF: one uniform draw. torch.multinomial draws one
    exponential per vocabulary entry for a single sample (49k on SmolLM2): ~1.5 ms a token on 2 cores, 11% of a
    16-row GRPO rollout. A token of probability 0 (cut by top-k/top-p) has an empty interval and is never drawn."""
    cdf = probs.double().cumsum(-1)  # double: 49k partial sums keep the resolution of the smallest probabilities
    u = torch.rand((), dtype=torch.float64, generator=generator, device=probs.device) * cdf[-1]
    return int(torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1))


class TokenPicker:
    """The likeliest token (greedy), or one drawn from the warped distribution with the request's own generator.
    Before that, over the prompt and the reply so far (the sequence `model.generate` sees), transformers' two
    loop guards in its order: the repetition penalty (`RepetitionPenaltyLogitsProcessor`: the logit of every token
    already seen divided by it when positive, multiplied when negative), then no-repeat n-grams
    (`NoRepeatNGramLogitsProcessor`: a token that would complete an n-gram already in the sequence is banned)."""

    def __init__(self, sampling: Sampling, device="cpu", prompt_ids: list[int] = ()):
        self.greedy, self.penalty, self.seen = sampling.greedy, sampling.repetition_penalty, set(prompt_ids)
        self.ngram, self.ids = sampling.no_repeat_ngram_size, []
        self.followers: dict[tuple[int, ...], set[int]] = {}  # (n-1)-token prefix -> tokens seen right after it
        for token_id in prompt_ids:
            self._extend(token_id)
        if not self.greedy:
            self.warpers, self.generator = logits_warpers(sampling), sampling.generator(device)

    def __call__(self, logits: torch.Tensor) -> int:
        logits = self._without_repeated_ngrams(self._penalized(logits.float()))
        if self.greedy:
            token_id = int(logits.argmax())
        else:
            scores = self.warpers(None, logits[None])  # the warpers read scores only, never input ids
            token_id = draw(scores[0].softmax(-1), self.generator)
        self.seen.add(token_id)
        self._extend(token_id)
        return token_id

    def _extend(self, token_id: int) -> None:
        if not self.ngram:
            return
        self.ids.append(token_id)
        if len(self.ids) >= self.ngram:
            gram = self.ids[len(self.ids) - self.ngram :]
            self.followers.setdefault(tuple(gram[:-1]), set()).add(gram[-1])

    def _penalized(self, logits: torch.Tensor) -> torch.Tensor:
        if self.penalty == 1 or not self.seen:
            return logits
        ids = torch.tensor(sorted(self.seen), device=logits.device)
        picked = logits[ids]
        logits = logits.clone()
        logits[ids] = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
        return logits

    def _without_repeated_ngrams(self, logits: torch.Tensor) -> torch.Tensor:
        banned = self.ngram and self.followers.get(tuple(self.ids[len(self.ids) - self.ngram + 1 :]))
        if not banned:
            return logits
        logits = logits.clone()
        logits[torch.tensor(sorted(banned), device=logits.device)] = -float("inf")
        return logits
