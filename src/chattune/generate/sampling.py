"""How a reply is sampled: the one place its defaults live (CLI flags, server requests and both backends use them).

    sampling = Sampling(temperature=0)                  # greedy
    sampling = Sampling(seed=1)                         # reproducible sampling
    draw(probs, sampling.generator())                   # generate.pick.draw

Seeding is per request: `generator()` hands out a `torch.Generator`, so a seeded reply never touches (or depends on)
the global torch RNG that training, dropout or another request may be using.

A run folder carries its decoding defaults in generation_config.json beside its weights (written at the end of
training), so `chat`, `generate`, `serve`, `eval` and plain transformers' `model.generate` decode alike:

    sampling = run_sampling("runs/demo")                # the run's defaults (Sampling() for anything else)
    generation_config(tokenizer, sampling).save_pretrained(folder)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from chattune.errors import InputError


@dataclass
class Sampling:
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 0.9  # nucleus sampling: keep the smallest token set with this much probability
    # keep the 50 likeliest tokens before top_p: transformers' generate() default, so replies keep the numbers
    # chattune measured with it; 0 turns it off
    top_k: int = 50
    # >1 makes every token already in the prompt or the reply less likely (transformers' repetition_penalty, the
    # CTRL rule: positive logits divided by it, negative ones multiplied); 1 turns it off. Off by default: at 1.2 it
    # also stopped the demo run's loops, but its replies drifted off topic (relevance to the reference 0.265 ->
    # 0.202 on the held-out conversations, interval below 0) and fewer ended on unseen ones (78% -> 50%)
    repetition_penalty: float = 1.0
    # >0 bans any token that would complete an n-gram of this many tokens already in the prompt or the reply
    # (transformers' no_repeat_ngram_size); 0 turns it off. 3, measured on the demo run, greedy, 40 tokens
    # (benchmarks/decoding_defaults.py): loop rate 22% -> 0 on 32 unseen chitchat conversations and 41% -> 0 on the
    # 32 held-out ones, replies that end 56% -> 75% there, ROUGE-L and relevance unchanged within their intervals;
    # 4 and 5 let some loops through (6% and 25% held out)
    no_repeat_ngram_size: int = 3
    max_new_tokens: int = 128  # a reply is cut here (finish reason "length")
    seed: int | None = None  # fixes sampling for reproducible replies

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise InputError("top_k must be >= 0 (0 keeps every token)")
        if self.repetition_penalty <= 0:
            raise InputError("repetition_penalty must be > 0 (1 turns it off)")
        if self.no_repeat_ngram_size < 0:
            raise InputError("no_repeat_ngram_size must be >= 0 (0 turns it off)")
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device="cpu"):
        """A random generator for this request alone: seeded with `seed`, else from fresh entropy."""
        import torch  # here, not at the top: the CLI builds its flags from this module and must start fast

        generator = torch.Generator(device=device)
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def generation_config(tokenizer, sampling: Sampling):
    """`model.generate()` defaults that decode as chattune does with `sampling` and stop where its replies stop."""
    from transformers import GenerationConfig

    from chattune.generate.prompt import stop_ids

    sampled = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
    return GenerationConfig(do_sample=not sampling.greedy, **(sampled if not sampling.greedy else {}),
                            repetition_penalty=sampling.repetition_penalty,
                            no_repeat_ngram_size=sampling.no_repeat_ngram_size, max_new_tokens=sampling.max_new_tokens,
                            eos_token_id=stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id)


# generation_config.json keys that are Sampling fields; a key the file leaves out keeps chattune's default, so the
# bare file a base model comes with (token ids only) changes nothing
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "no_repeat_ngram_size", "max_new_tokens")


def run_sampling(name: str | Path) -> Sampling:
    """The decoding defaults of a run folder (its generation_config.json over `Sampling()`); `Sampling()` for a
    model name or folder that is not a run, and for runs trained before the file was written."""
    from chattune.runs import Run

    if not Run.is_run(name) or not Run(Path(name)).generation_config_path.is_file():
        return Sampling()
    path = Run(Path(name)).generation_config_path
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not valid JSON ({error}); delete it to decode with chattune's defaults") from None
    values = {key: saved[key] for key in SAMPLING_KEYS if saved.get(key) is not None}
    if saved.get("do_sample") is False:  # transformers' greedy decoding
        values["temperature"] = 0
    return Sampling(**values)
