"""`chattune summarize`: summaries from a summarize run (or any seq2seq or causal model), batched, greedy or beam search.

    summarizer = load_summarizer("runs/summarize")       # its LoRA merged at load; its request and decoding
    summarizer.summaries([Pair(dialogue, "")], max_new_tokens=64, num_beams=4)    # [Summary(text, ended)]

A source is formatted exactly as training formatted it (chattune.data.pairs.prompt_text): a causal LM reads it as
the user's turn of its chat template, after the request; a seq2seq model reads it as the encoder input. Decoding is
transformers' `generate` (beam search is its job; the chat decode loop in hf.py samples one beam).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from chattune.config import SummarizeConfig
from chattune.data.pairs import Pair, prompt_text
from chattune.errors import InputError
from chattune.generate.prompt import ChatPrompt
from chattune.runs import Run


@dataclass
class Summary:
    text: str  # decoded without special tokens, stripped
    ended: bool  # the model ended it (end-of-sequence / end-of-turn), rather than the max_new_tokens limit


class Summarizer:
    def __init__(self, model, tokenizer, cfg: SummarizeConfig | None = None):
        """`cfg`: the run's config, whose request, source length and decoding it keeps; None: the defaults."""
        cfg = cfg or SummarizeConfig()
        self.model, self.tokenizer, self.instruction = model.eval(), tokenizer, cfg.instruction
        self.seq2seq_type = model.config.model_type if model.config.is_encoder_decoder else None
        self.max_length = cfg.max_length  # seq2seq sources are cut here, as long as training allowed
        self.max_new_tokens, self.num_beams = cfg.max_new_tokens, cfg.num_beams
        self.chat = None if self.seq2seq_type else ChatPrompt(tokenizer)
        self.stop_ids = [tokenizer.eos_token_id] if self.seq2seq_type else self.chat.stop_ids

    def summaries(self, pairs: list[Pair], max_new_tokens: int | None = None, num_beams: int | None = None,
                  batch_size: int = 8) -> list[Summary]:
        """One summary per pair (its summary is not read), `batch_size` decoded together, in order; decoding as
        the run's config says unless given."""
        max_new_tokens, num_beams = max_new_tokens or self.max_new_tokens, num_beams or self.num_beams
        if max_new_tokens < 1 or num_beams < 1 or batch_size < 1:
            raise InputError("summarize: --max-new-tokens, --num-beams and --batch-size must be at least 1")
        results = []
        for first in range(0, len(pairs), batch_size):
            results += self._batch(pairs[first : first + batch_size], max_new_tokens, num_beams)
        return results

    @torch.no_grad()
    def _batch(self, pairs: list[Pair], max_new_tokens: int, num_beams: int) -> list[Summary]:
        inputs = self._inputs([prompt_text(pair, self.instruction, self.seq2seq_type) for pair in pairs])
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                                     eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id)
        # a causal LM's output starts with the prompt; a seq2seq decoder's with its start token, skipped in decoding
        new_tokens = output[:, 0 if self.seq2seq_type else inputs["input_ids"].shape[1]:].tolist()
        if self.seq2seq_type:
            new_tokens = [row[1:] for row in new_tokens]
        return [Summary(self.tokenizer.decode(row, skip_special_tokens=True).strip(),
                        any(token in self.stop_ids for token in row)) for row in new_tokens]

    def _inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        device = self.model.device
        if self.seq2seq_type:
            encoded = self.tokenizer(texts, padding=True, truncation=self.max_length is not None,
                                     max_length=self.max_length, return_tensors="pt")
            return {key: value.to(device) for key, value in encoded.items()}
        # left-padded by hand, as the chat decode loop does: the tokenizer's padding side stays as training set it
        prompts = [self.chat.ids([{"role": "user", "content": text}]) for text in texts]
        width, pad_id = max(len(p) for p in prompts), self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def load_summarizer(name: str) -> Summarizer:
    """A run folder (its LoRA merged at load; a summarize run's instruction and max_length), or any seq2seq or
    causal model name or folder."""
    from chattune.models import load_any_model, load_tokenizer

    if not Run.is_run(name):
        return Summarizer(*load_any_model(name))
    run = Run.open(name)
    cfg = run.config
    if run.is_adapter:
        from peft import PeftModel

        base, tokenizer = load_any_model(cfg.model)
        model = PeftModel.from_pretrained(base, run.weights).merge_and_unload()  # decoding as fast as a plain model
    else:
        model, tokenizer = load_any_model(str(run.weights))
    if not model.config.is_encoder_decoder:
        tokenizer = load_tokenizer(str(run.tokenizer_dir))  # carries the chat template training used
    # a chat run summarises through its chat template, with the default request
    return Summarizer(model, tokenizer, cfg if cfg.task == "summarize" else None)
