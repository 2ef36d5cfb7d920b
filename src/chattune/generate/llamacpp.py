"""Decode with llama.cpp (llama-cpp-python) instead of transformers: the fast path for chat and serving on a CPU.

    backend = LlamaCppBackend.load("runs/demo", quant="q8_0")     # exports RUN/model-q8_0.gguf once
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0), on_token)

The run's LoRA is merged into the base weights and written to GGUF once (`chattune.export.gguf`); the packaged
SmolLM2 GGUF is used as it is for the base model at q4_1. Prompts are rendered and tokenized by the run's own HF
tokenizer and chat template (`chattune.generate.prompt`) and handed to llama.cpp as token ids, so both backends see
exactly the same tokens, and replies are decoded by the same tokenizer. Same interface as `hf.HFBackend`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.errors import InputError
from chattune.generate.prompt import ChatPrompt
from chattune.generate.sampling import Sampling
from chattune.runs import Run

CONTEXT_TOKENS = 4096  # llama.cpp's KV cache is allocated up front; chat prompts + replies fit well within this
# llama.cpp's LLAMA_DEFAULT_SEED: its sampler then seeds itself from std::random_device. Set for every unseeded
# request, so one seeded request does not fix the "random" replies of all that follow it.
FRESH_SEED = 0xFFFFFFFF


def _llama_class():
    try:
        from llama_cpp import Llama
    except ImportError:
        raise InputError("--backend llamacpp needs llama-cpp-python: pip install llama-cpp-python "
                         "(builds llama.cpp from source, a few minutes)") from None
    return Llama


def gguf_path(name: str, quant: str) -> Path:
    """The GGUF for a run or model, exported on first use (merged LoRA for runs)."""
    from chattune.models import ALIASES, cache_dir

    if Run.is_run(name):
        target = Run.open(name).gguf_path(quant)
    elif name in ALIASES:
        package, file = ALIASES[name]
        if quant == "q4_1":  # the packaged file is exactly this quantisation of the base model
            from importlib.util import find_spec

            return Path(find_spec(package).submodule_search_locations[0]) / file
        target = cache_dir() / "gguf" / f"{name}-{quant}.gguf"
    elif Path(name).is_dir():
        target = Path(name) / f"model-{quant}.gguf"
    else:
        target = cache_dir() / "gguf" / f"{name}-{quant}.gguf"
    if not target.is_file():
        from chattune.export.gguf import export_gguf
        from chattune.generate.hf import load_hf_backend

        hf = load_hf_backend(name)  # merges a run's adapter into the base weights
        export_gguf(hf.model, hf.tokenizer, target, quant)
    return target


class LlamaCppBackend:
    max_batch = 1  # llama-cpp-python's high-level `Llama` decodes one sequence at a time
    context_length = CONTEXT_TOKENS

    def __init__(self, llm, tokenizer, system_prompt: str | None = None):
        """`llm`: a `llama_cpp.Llama` (see `load`); `tokenizer`: the HF tokenizer the GGUF was exported with."""
        self.llm = llm
        self.prompt = ChatPrompt(tokenizer, system_prompt)
        self.stop_ids = self.prompt.stop_ids

    @classmethod
    def load(cls, name: str, quant: str = "q8_0", threads: int | None = None) -> LlamaCppBackend:
        """A run folder (with its system prompt) or a model, exported to GGUF on first use."""
        from chattune.models import load_tokenizer

        run = Run.open(name) if Run.is_run(name) else None
        tokenizer = load_tokenizer(str(run.tokenizer_dir) if run else name)
        Llama = _llama_class()
        # flash attention: time to first token for a 200-token prompt 370 -> 280 ms on 2 cores (q8_0)
        llm = Llama(model_path=str(gguf_path(name, quant)), n_ctx=CONTEXT_TOKENS, n_threads=threads or os.cpu_count(),
                    n_batch=512, flash_attn=True, verbose=False,
                    last_n_tokens_size=CONTEXT_TOKENS)  # the repetition penalty sees the whole context, as in HF
        return cls(llm, tokenizer, run.config.system_prompt if run else None)

    def prompt_ids(self, messages: Conversation) -> list[int]:
        return self.prompt.ids(messages)

    def decode(self, token_ids: list[int]) -> str:
        return self.prompt.decode(token_ids)

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        """Call `on_token` for each new token (the stop token included, as the HF backend does)."""
        self.llm.set_seed(FRESH_SEED if sampling.seed is None else sampling.seed)
        # The same top_k, top_p, temperature and repetition penalty as the HF backend (temperature 0 is greedy in
        # llama.cpp); min_p=0 switches off a filter HF does not apply. llama.cpp applies the temperature after top_k/top_p,
        # HF before them, so the nucleus of a sampled reply can differ slightly; greedy replies are the same tokens.
        tokens = self.llm.generate(prompt_ids, temp=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                                   min_p=0.0, repeat_penalty=sampling.repetition_penalty, reset=True)
        for count, token in enumerate(tokens, start=1):
            if not on_token(token) or token in self.stop_ids or count >= sampling.max_new_tokens:
                return

    def generate_batch(self, prompts: list[list[int]], samplings: list[Sampling],
                       on_tokens: list[Callable[[int], bool]]) -> None:
        """One prompt after another (`max_batch` is 1, so the engine never asks for more than one)."""
        for prompt_ids, sampling, on_token in zip(prompts, samplings, on_tokens, strict=True):
            self.generate(prompt_ids, sampling, on_token)
