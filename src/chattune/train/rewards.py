"""Reward functions for GRPO and RLOO: small named scorers of a reply in its context, weighted in the config.

    rewards = load_rewards({"toxicity": 1.0, "relevance": 0.5}, tokenizer, cfg)   # [(trl_function, weight), ...]
    toxicity_reward(["have a nice day", "shut up you idiot"])                       # [0.98, 0.02]

Built in, each in [-1, 1] with higher better:
    toxicity   1 - p(toxic) from alt-profanity-check (chattune.evaluate.safety)
    relevance  MiniLM cosine between the reply and the conversation so far (chattune.evaluate.relevance)
    ending     1 when the reply ended with its end-of-turn token before the token limit, else 0
    length     0 inside [length_min_words, length_max_words] words, down to -1 far outside

A reward given as "package.module:function" is imported and called as TRL calls its reward functions:
`function(prompts=..., completions=..., completion_ids=..., **columns) -> list[float]`, so one written for TRL works
here unchanged. TRL logs each function's mean under its name (`rewards/<name>/mean`) and the weighted sum (`reward`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from chattune.errors import InputError
from chattune.evaluate.relevance import SentenceEncoder, context_text, cosine_similarities
from chattune.evaluate.safety import toxicity

RewardFunction = Callable[..., list[float]]


def toxicity_reward(replies: list[str]) -> list[float]:
    return [1.0 - p for p in toxicity(replies)]


def relevance_reward(encoder: SentenceEncoder, contexts: list[list[dict]], replies: list[str]) -> list[float]:
    # an empty reply embeds as the [CLS]/[SEP] tokens alone, which is close to many texts: score it 0, not ~0.2
    scores = cosine_similarities(encoder, replies, [context_text(context) for context in contexts])
    return [score if reply.strip() else 0.0 for score, reply in zip(scores, replies)]


def ending_reward(completion_ids: list[list[int]], stop_ids: list[int], max_new_tokens: int) -> list[float]:
    return [float(bool(ids) and ids[-1] in stop_ids and len(ids) <= max_new_tokens) for ids in completion_ids]


def length_reward(replies: list[str], min_words: int, max_words: int) -> list[float]:
    """0 inside the range; below it the missing share of min_words, above it the excess share of max_words, as a
    penalty capped at 1 (an empty reply scores -1)."""
    scores = []
    for reply in replies:
        words = len(reply.split())
        short, long = max(0, min_words - words) / min_words, max(0, words - max_words) / max_words
        scores.append(-min(1.0, short + long))
    return scores


def reply_texts(completions: list) -> list[str]:
    """Reply text of each TRL completion: conversational ([{"role": "assistant", "content": ...}]) or plain text."""
    return [completion[-1]["content"] if isinstance(completion, list) else completion for completion in completions]


def _named(name: str, function: RewardFunction) -> RewardFunction:
    function.__name__ = name  # TRL logs a reward under its function's name
    return function


def builtin_reward(name: str, tokenizer, cfg) -> RewardFunction:
    """The built-in reward `name` with TRL's signature (prompts, completions, completion_ids, **columns)."""
    from chattune.generate.prompt import stop_ids

    if name == "toxicity":
        return _named(name, lambda completions, **_: toxicity_reward(reply_texts(completions)))
    if name == "relevance":
        encoder = SentenceEncoder.load()
        return _named(name, lambda prompts, completions, **_: relevance_reward(encoder, prompts,
                                                                               reply_texts(completions)))
    if name == "ending":
        ends = stop_ids(tokenizer)
        return _named(name, lambda completion_ids, **_: ending_reward(completion_ids, ends, cfg.max_new_tokens))
    assert name == "length", name
    return _named(name, lambda completions, **_: length_reward(reply_texts(completions), cfg.length_min_words,
                                                               cfg.length_max_words))


def imported_reward(spec: str) -> RewardFunction:
    """`package.module:function` imported; InputError naming what is missing."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise InputError(f"config: rewards: cannot import {module_name!r} for {spec!r} ({error}); "
                         "is the module on PYTHONPATH?") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise InputError(f"config: rewards: {module_name} has no function {function_name!r}; give module:function")
    return _named(spec, lambda **arguments: function(**arguments))  # the user's function keeps its own name


def load_rewards(weights: dict[str, float], tokenizer, cfg) -> list[tuple[RewardFunction, float]]:
    """(TRL reward function, weight) for each reward of the config, in its order."""
    return [(imported_reward(name) if ":" in name else builtin_reward(name, tokenizer, cfg), weight)
            for name, weight in weights.items()]
