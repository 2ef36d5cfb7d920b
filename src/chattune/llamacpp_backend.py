"""Decode with llama.cpp (llama-cpp-python) instead of transformers: the fast path for chat and serving on a CPU.

    backend = LlamaCppBackend.load("runs/demo", quant="q8_0")     # exports RUN/model-q8_0.gguf once
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0), on_token)

The run's LoRA is merged into the base weights and written to GGUF once (`chattune.export_gguf`); the packaged
SmolLM2 GGUF is used as it is for the base model at q4_1. Prompts are rendered and tokenized by the run's own HF
tokenizer and chat template and handed to llama.cpp as token ids, so both backends see exactly the same tokens, and
replies are decoded by the same tokenizer. Same interface as `chattune.decode.HFGenerateBackend`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from chattune.data.chat import end_of_turn_token
from chattune.errors import InputError
from chattune.inference import Sampling

CONTEXT_TOKENS = 4096  # llama.cpp's KV cache is allocated up front; chat prompts + replies fit well within this


def _llama_class():
    try:
        from llama_cpp import Llama
    except ImportError:
        raise InputError("--backend llamacpp needs llama-cpp-python: pip install llama-cpp-python "
                         "(builds llama.cpp from source, a few minutes)") from None
    return Llama


def gguf_path(name: str, quant: str) -> Path:
    """The GGUF for a run or model, exported on first use (merged LoRA for runs)."""
    from chattune.export_gguf import export_gguf
    from chattune.models import ALIASES, cache_dir

    run = Path(name)
    if (run / "config.yaml").is_file():
        target = run / f"model-{quant}.gguf"
    elif name in ALIASES:
        package, file = ALIASES[name]
        if quant == "q4_1":  # the packaged file is exactly this quantisation of the base model
            from importlib.util import find_spec

            return Path(find_spec(package).submodule_search_locations[0]) / file
        target = cache_dir() / "gguf" / f"{name}-{quant}.gguf"
    else:
        target = run / f"model-{quant}.gguf" if run.is_dir() else cache_dir() / "gguf" / f"{name}-{quant}.gguf"
    if not target.is_file():
        from chattune.inference import load_chatbot

        chatbot = load_chatbot(name)  # merges a run's adapter into the base weights
        export_gguf(chatbot.model, chatbot.tokenizer, target, quant)
    return target


class LlamaCppBackend:
    def __init__(self, gguf: Path, tokenizer, system_prompt: str | None, threads: int | None = None):
        Llama = _llama_class()
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        # flash attention: time to first token for a 200-token prompt 370 -> 280 ms on 2 cores (q8_0)
        self.llm = Llama(model_path=str(gguf), n_ctx=CONTEXT_TOKENS, n_threads=threads or os.cpu_count(),
                         n_batch=512, flash_attn=True, verbose=False)
        self.stop_ids = sorted({tokenizer.convert_tokens_to_ids(end_of_turn_token(tokenizer)), tokenizer.eos_token_id})
        self.context_length = CONTEXT_TOKENS
        self.max_batch = 1  # llama-cpp-python's high-level `Llama` decodes one sequence at a time
        self._tokenizer_lock = threading.Lock()  # the event loop encodes while the worker decodes

    @classmethod
    def load(cls, name: str, quant: str = "q8_0") -> LlamaCppBackend:
        from chattune.config import load_config
        from chattune.models import load_tokenizer

        run = Path(name)
        is_run = (run / "config.yaml").is_file()
        system_prompt = load_config(run / "config.yaml").system_prompt if is_run else None
        tokenizer_source = name
        if is_run:
            tokenizer_source = str(run / ("model" if (run / "model").is_dir() else "adapter"))
        return cls(gguf_path(name, quant), load_tokenizer(tokenizer_source), system_prompt)

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        if self.system_prompt and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.system_prompt}, *messages]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        with self._tokenizer_lock:
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        with self._tokenizer_lock:
            return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def generate(self, prompt_ids: list[int], sampling: Sampling, on_token: Callable[[int], bool]) -> None:
        """Call `on_token` for each new token (the stop token included, as transformers' streamer does)."""
        if sampling.seed is not None:
            self.llm.set_seed(sampling.seed)
        # temperature 0 is greedy in llama.cpp; top_k=0 and min_p=0 leave top-p as the only filter, like HF
        tokens = self.llm.generate(prompt_ids, temp=sampling.temperature, top_p=sampling.top_p, top_k=0,
                                   min_p=0.0, repeat_penalty=1.0, reset=True)
        for count, token in enumerate(tokens, start=1):
            if not on_token(token) or token in self.stop_ids or count >= sampling.max_new_tokens:
                return

    def generate_batch(self, prompts: list[list[int]], samplings: list[Sampling],
                       on_tokens: list[Callable[[int], bool]]) -> None:
        """One prompt after another (`max_batch` is 1, so the engine never asks for more than one)."""
        for prompt_ids, sampling, on_token in zip(prompts, samplings, on_tokens, strict=True):
            self.generate(prompt_ids, sampling, on_token)
