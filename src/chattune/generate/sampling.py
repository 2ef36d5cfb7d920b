"""How a reply is sampled: the one place its defaults live (CLI flags, server requests and both backends use them).

    sampling = Sampling(temperature=0)                  # greedy
    sampling = Sampling(seed=1)                         # reproducible sampling
    torch.multinomial(probs, 1, generator=sampling.generator())

Seeding is per request: `generator()` hands out a `torch.Generator`, so a seeded reply never touches (or depends on)
the global torch RNG that training, dropout or another request may be using.
"""

from __future__ import annotations

from dataclasses import dataclass

from chattune.errors import InputError


@dataclass
class Sampling:
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 0.9  # nucleus sampling: keep the smallest token set with this much probability
    # keep the 50 likeliest tokens before top_p: transformers' generate() default, so replies keep the numbers
    # chattune measured with it; 0 turns it off
    top_k: int = 50
    # >1 makes every token already in the prompt or the reply less likely (transformers' repetition_penalty, the
    # CTRL rule: positive logits divided by it, negative ones multiplied); 1 turns it off
    repetition_penalty: float = 1.0
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
