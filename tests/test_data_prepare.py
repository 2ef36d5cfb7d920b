"""Training data is prepared once per (data file, tokenizer, data keys): a second run reads it back from the cache."""

from __future__ import annotations

import pytest

import chattune.data.prepare as prepare
from chattune.config import ChatConfig
from chattune.models import load_tokenizer


@pytest.fixture
def chats_csv(tmp_path):
    path = tmp_path / "chats.csv"
    path.write_text("prompt,response\n" + "".join(f"question {i} about pizza,answer {i} is pasta\n" for i in range(30)))
    return path


def test_second_run_reads_the_cache_and_a_change_tokenizes_again(chats_csv, tiny_llama, tiny_gpt2, monkeypatch):
    cfg = ChatConfig(data=str(chats_csv), model=tiny_llama, max_length=64)
    tokenizer = load_tokenizer(tiny_llama)
    calls = []
    real = prepare.tokenize_conversations
    monkeypatch.setattr(prepare, "tokenize_conversations", lambda *args: calls.append(1) or real(*args))

    first = prepare.prepare_chat_data(cfg, tokenizer)
    assert len(calls) == 2 and first.report["tokenized_cache"]["hit"] is False  # train and eval sides
    second = prepare.prepare_chat_data(cfg, tokenizer)
    assert len(calls) == 2 and second.report["tokenized_cache"]["hit"] is True  # nothing tokenized again
    assert second.report["tokenized_cache"]["path"].startswith(str(prepare.cache_root()))
    assert (second.train_examples, second.eval_examples, second.eval_set) == \
        (first.train_examples, first.eval_examples, first.eval_set)
    assert {k: v for k, v in second.report.items() if k != "tokenized_cache"} == \
        {k: v for k, v in first.report.items() if k != "tokenized_cache"}

    with chats_csv.open("a") as file:  # the same path, one more row
        file.write("one more question,one more answer\n")
    changed_file = prepare.prepare_chat_data(cfg, tokenizer)
    assert len(calls) == 4 and changed_file.report["tokenized_cache"]["hit"] is False
    assert changed_file.report["data"]["conversations"] == 31

    other = ChatConfig(data=str(chats_csv), model=tiny_gpt2, max_length=64)
    changed_tokenizer = prepare.prepare_chat_data(other, load_tokenizer(tiny_gpt2))
    assert len(calls) == 6 and changed_tokenizer.report["tokenized_cache"]["hit"] is False

    tokenizer.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    changed_template = prepare.prepare_chat_data(cfg, tokenizer)
    assert len(calls) == 8 and changed_template.report["tokenized_cache"]["hit"] is False
    assert prepare.prepare_chat_data(cfg.__class__(**{**cfg.to_dict(), "lora": cfg.lora, "learning_rate": 1e-3}),
                                     tokenizer).report["tokenized_cache"]["hit"] is True  # not a data key
