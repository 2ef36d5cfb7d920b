"""Load a run folder (or any model) for chatting, and generate replies with the chat template used in training.

    chatbot = load_chatbot("runs/demo")
    chatbot.reply([{"role": "user", "content": "hi!"}], Sampling(temperature=0.7))

A run folder is self-describing: `config.yaml` names the base model and system prompt, `adapter/` or `model/`
holds the weights with the tokenizer and chat template. Anything else is loaded as a model name or folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from chattune.data.chat import end_of_turn_token
from chattune.errors import InputError
from chattune.models import load_model, load_tokenizer


@dataclass
class Sampling:
    temperature: float = 0.7  # 0 means greedy decoding
    top_p: float = 0.9  # nucleus sampling: keep the smallest token set with this much probability
    max_new_tokens: int = 128  # a reply is cut here (finish reason "length")
    seed: int | None = None  # fixes sampling for reproducible replies

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InputError("top_p must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1")


@dataclass
class Chatbot:
    model: torch.nn.Module
    tokenizer: object
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        self.model.eval()
        self.stop_ids = sorted({self.tokenizer.convert_tokens_to_ids(end_of_turn_token(self.tokenizer)),
                                self.tokenizer.eos_token_id})

    def with_system(self, messages: list[dict]) -> list[dict]:
        if self.system_prompt and messages[0]["role"] != "system":
            return [{"role": "system", "content": self.system_prompt}, *messages]
        return messages

    def generate_kwargs(self, sampling: Sampling) -> dict:
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        greedy = sampling.temperature == 0
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=self.stop_ids, do_sample=not greedy,
                      pad_token_id=self.tokenizer.pad_token_id)
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        return kwargs

    def encode(self, conversations: list[list[dict]]) -> dict:
        texts = [self.tokenizer.apply_chat_template(self.with_system(c), tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        self.tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
        batch = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        return batch.to(self.model.device)

    @torch.no_grad()
    def replies(self, conversations: list[list[dict]], sampling: Sampling) -> list[str]:
        batch = self.encode(conversations)
        output = self.model.generate(**batch, **self.generate_kwargs(sampling))
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [self.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new_tokens]

    def reply(self, messages: list[dict], sampling: Sampling) -> str:
        return self.replies([messages], sampling)[0]


def load_chatbot(name: str) -> Chatbot:
    """Load a chattune run folder, or any model name/folder that `load_model` accepts."""
    run = Path(name)
    if not (run / "config.yaml").is_file():
        model, tokenizer = load_model(name)
        return Chatbot(model, tokenizer)
    from chattune.config import load_config

    cfg = load_config(run / "config.yaml")
    if (run / "model").is_dir():
        model, tokenizer = load_model(str(run / "model"))
    elif (run / "adapter").is_dir():
        from peft import PeftModel

        base, _ = load_model(cfg.model)
        # merged once at load: decoding is then as fast as a plain model
        model = PeftModel.from_pretrained(base, run / "adapter").merge_and_unload()
        tokenizer = load_tokenizer(str(run / "adapter"))
    else:
        raise InputError(f"{run}: run has no trained model yet (no adapter/ or model/ folder); did training finish?")
    return Chatbot(model, tokenizer, cfg.system_prompt)
