"""Tiny models built from a config in the test session (nothing is downloaded): a byte-level BPE tokenizer trained on
a few sentences, a 2-layer GPT-2 with no chat template (the fallback template applies) and a 2-layer Llama with a
ChatML template like SmolLM2's."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # tests must never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tokenized training data is cached (data/prepare.py); tests keep theirs apart from the user's, fresh each session.
os.environ["CHATTUNE_DATA_CACHE"] = tempfile.mkdtemp(prefix="chattune-test-data-cache-")
atexit.register(shutil.rmtree, os.environ["CHATTUNE_DATA_CACHE"], ignore_errors=True)  # not one left per session

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "hello how are you doing today", "i am fine thanks and you", "what is your favourite food",
    "i like pizza and pasta a lot", "do you have any pets at home", "yes i have a dog called max",
    "the weather is nice today", "user assistant system: hi hey good morning night",
] * 20


def _tokenizer(chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>"] + (["<|im_start|>", "<|im_end|>"] if chat else [])
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    eos = "<|im_end|>" if chat else "<|endoftext|>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    if chat:
        tokenizer.pad_token = "<|endoftext|>"
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """Folder of a randomly initialised 2-layer GPT-2 whose tokenizer has no chat template."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    tokenizer = _tokenizer(chat=False)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=512, vocab_size=len(tokenizer),
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Folder of a randomly initialised 2-layer Llama with a ChatML chat template (like SmolLM2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tokenizer(chat=True)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def chat_jsonl(tmp_path):
    """A small JSONL of repetitive 2-4 turn conversations (learnable by a tiny model in a few steps)."""
    import json

    rows = []
    for index in range(40):
        rows.append({"messages": [
            {"role": "user", "content": f"hello how are you {index}"},
            {"role": "assistant", "content": "i am fine thanks and you"},
            {"role": "user", "content": "what is your favourite food"},
            {"role": "assistant", "content": "i like pizza and pasta a lot"},
        ]})
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)
