"""Check an export against its run: greedy replies to 3 held-out prompts, from the run and from the exported model.

    prompts = held_out_prompts(run)                               # contexts the run's evaluation replied to
    check = verify(reference, HFExport(folder, system_prompt), prompts, "transformers", TOLERANCE["hf"])
    check.passed, check.share, check.lines(reference.decode)

`reference` is the run as `chattune chat` loads it (its LoRA merged into the base weights, in transformers). For each
prompt the exported model
1. tokenizes the prompt itself: a GGUF is read by llama.cpp and Ollama, which split text with the GGUF's own
   tokenizer, so it must give the run's prompt tokens (the failure behind most "my GGUF talks nonsense" reports);
2. replies greedily, and the reply is compared with the run's;
3. picks its likeliest next token at every position of the run's reply, given the run's tokens before it, and so
   does the run. The share of equal picks is 1.0 exactly when the models agree everywhere. A quantized model picks
   another token now and then, after which free-running replies go apart, so the tolerance for quantized formats is
   stated on this share, where one different pick counts once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from chattune.data.chat import render
from chattune.data.conversation import Conversation, with_system
from chattune.errors import InputError
from chattune.generate.hf import HFBackend
from chattune.generate.sampling import Sampling
from chattune.runs import Run

PROMPTS = 3  # held-out prompts replied to; each costs one greedy reply from each model
MAX_NEW_TOKENS = 32  # tokens per reply: a chit-chat reply, and enough positions for the share to mean something
# Least share of equal picks per format (1.0: every token, and the same greedy replies). Measured on SmolLM2-135M
# LoRA runs (12 chit-chat prompts each, README "Export"): f16 99.3%, q8_0 93.8-96.1%, q4_1 96.7%, q4_k_m 84.1%; the
# picks that differ are near-ties (first-token logits 0.06 apart flip under q8_0). A broken export (a wrong tensor
# layout, another tokenizer) agrees on a few percent, far below every bar.
TOLERANCE = {"hf": 1.0, "f16": 0.95, "q8_0": 0.90, "q4_1": 0.70, "q4_k_m": 0.70}


@dataclass
class PromptCheck:
    context: Conversation
    same_prompt: bool  # the export tokenized the prompt into the run's tokens
    run_reply: list[int]  # the run's greedy reply
    export_reply: list[int]  # the export's greedy reply
    run_picks: list[int]  # each model's likeliest token at every position of the run's reply
    export_picks: list[int]

    @property
    def equal(self) -> int:
        return sum(a == b for a, b in zip(self.run_picks, self.export_picks, strict=True))


@dataclass
class Verification:
    target: str  # what read the export: "transformers", "llama.cpp q8_0"
    tolerance: float
    checks: list[PromptCheck]

    @property
    def share(self) -> float:
        return sum(c.equal for c in self.checks) / max(1, sum(len(c.run_picks) for c in self.checks))

    @property
    def same_replies(self) -> int:
        return sum(c.run_reply == c.export_reply for c in self.checks)

    @property
    def passed(self) -> bool:
        exact = self.tolerance < 1.0 or self.same_replies == len(self.checks)
        return bool(self.checks) and all(c.same_prompt for c in self.checks) and exact and \
            self.share >= self.tolerance

    def summary(self) -> str:
        tokens = sum(len(c.run_picks) for c in self.checks)
        return (f"{self.target}: {self.same_replies}/{len(self.checks)} greedy replies equal to the run's, "
                f"{sum(c.equal for c in self.checks)}/{tokens} equal tokens ({self.share:.1%}; tolerance "
                f"{self.tolerance:.0%}): {'passed' if self.passed else 'FAILED'}")

    def lines(self, decode) -> list[str]:
        out = [f"verification on {len(self.checks)} held-out prompts (greedy, up to {MAX_NEW_TOKENS} tokens):"]
        for number, check in enumerate(self.checks, start=1):
            out.append(f"  {number}. user: {_short(check.context[-1]['content'])}")
            out.append(f"     run:    {_short(decode(check.run_reply))}")
            out.append(f"     export: {_short(decode(check.export_reply))}  [{check.equal}/{len(check.run_picks)}"
                       f" equal tokens{'' if check.same_prompt else '; PROMPT TOKENIZED DIFFERENTLY'}]")
        return out + [f"  {self.summary()}"]

    def to_dict(self, decode) -> dict:
        return {"target": self.target, "prompts": len(self.checks), "max_new_tokens": MAX_NEW_TOKENS,
                "equal_tokens": sum(c.equal for c in self.checks),
                "tokens": sum(len(c.run_picks) for c in self.checks), "share": self.share,
                "tolerance": self.tolerance, "same_replies": self.same_replies, "passed": self.passed,
                "examples": [{"context": c.context, "run": decode(c.run_reply), "export": decode(c.export_reply),
                              "equal_tokens": c.equal, "tokens": len(c.run_picks), "same_prompt": c.same_prompt}
                             for c in self.checks]}


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= width else text[: width - 1] + "…")


def held_out_prompts(run: Run, count: int = PROMPTS) -> list[Conversation]:
    """The first contexts the run's evaluation replied to (eval.json), else its first held-out conversations up to
    their first reply (the same read, cleaning and seeded split as training)."""
    if run.eval_path.is_file():
        contexts = [example["context"] for example in run.evaluation()["examples"][:count]]
        if contexts:
            return contexts
    from chattune.data.load import load_chat_split

    _, held_out, _ = load_chat_split(run.config)
    return [conversation[: [m["role"] for m in conversation].index("assistant")] for conversation in held_out[:count]]


def greedy_reply(backend, prompt_ids: list[int]) -> list[int]:
    tokens: list[int] = []
    backend.generate(prompt_ids, Sampling(temperature=0, max_new_tokens=MAX_NEW_TOKENS),
                     lambda token: tokens.append(token) or True)
    return tokens


@torch.no_grad()
def hf_picks(model, prompt_ids: list[int], reply: list[int]) -> list[int]:
    """The likeliest token at each position of `reply`, given the prompt and the reply's tokens before it."""
    ids = torch.tensor([prompt_ids + reply[:-1]], device=model.device)
    return model(input_ids=ids).logits[0, len(prompt_ids) - 1:].argmax(-1).tolist()


def verify(reference: HFBackend, exported, prompts: list[Conversation], target: str,
           tolerance: float) -> Verification:
    """`exported` has prompt_ids(messages), greedy(prompt_ids) and picks(prompt_ids, reply) (HFExport, GGUFExport)."""
    checks = []
    for context in prompts:
        run_prompt, prompt = reference.prompt_ids(context), exported.prompt_ids(context)
        run_reply = greedy_reply(reference, run_prompt)
        checks.append(PromptCheck(context, prompt == run_prompt, run_reply, exported.greedy(prompt),
                                  hf_picks(reference.model, run_prompt, run_reply), exported.picks(prompt, run_reply)))
    return Verification(target, tolerance, checks)


class HFExport:
    """An exported folder loaded the way a user loads it: plain AutoModelForCausalLM and AutoTokenizer."""

    def __init__(self, folder: Path, system_prompt: str | None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(folder)
        self.backend = HFBackend(model, AutoTokenizer.from_pretrained(folder), system_prompt)

    def prompt_ids(self, messages: Conversation) -> list[int]:
        return self.backend.prompt_ids(messages)

    def greedy(self, prompt_ids: list[int]) -> list[int]:
        return greedy_reply(self.backend, prompt_ids)

    def picks(self, prompt_ids: list[int], reply: list[int]) -> list[int]:
        return hf_picks(self.backend.model, prompt_ids, reply)


class GGUFExport:
    """An exported GGUF in llama.cpp, which tokenizes the rendered prompt with the GGUF's own tokenizer, as llama.cpp's
    tools and Ollama do."""

    def __init__(self, path: Path, tokenizer, system_prompt: str | None, context_tokens: int):
        try:
            from llama_cpp import Llama
        except ImportError:
            raise InputError("verifying a GGUF export needs llama-cpp-python: pip install llama-cpp-python "
                             "(builds llama.cpp from source, a few minutes)") from None
        from chattune.generate.llamacpp import LlamaCppBackend

        # logits_all: the picks at every reply position come from one evaluation of prompt + reply
        self.llm = Llama(model_path=str(path), n_ctx=context_tokens, n_threads=os.cpu_count(), logits_all=True,
                         verbose=False)
        self.backend = LlamaCppBackend(path, tokenizer, system_prompt, max_batch=1, kv_tokens=context_tokens)
        self.tokenizer, self.system_prompt = tokenizer, system_prompt

    def prompt_ids(self, messages: Conversation) -> list[int]:
        text = render(self.tokenizer, with_system(messages, self.system_prompt), add_generation_prompt=True)
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def greedy(self, prompt_ids: list[int]) -> list[int]:
        return greedy_reply(self.backend, prompt_ids)

    def picks(self, prompt_ids: list[int], reply: list[int]) -> list[int]:
        self.llm.reset()
        self.llm.eval(prompt_ids + reply[:-1])
        start = len(prompt_ids) - 1
        return self.llm.scores[start : start + len(reply)].argmax(-1).tolist()

    def close(self) -> None:
        """Free llama.cpp's model now (left to interpreter exit, llama-cpp-python's finalizer fails noisily)."""
        self.llm.close()
        self.backend.close()
