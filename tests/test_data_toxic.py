"""`max_reply_toxicity`: training conversations are cut before their first toxic reply (data/toxic.py); the
held-out side stays as read."""

from __future__ import annotations

import json

import pytest

from chattune.config import ChatConfig
from chattune.data.load import load_chat_split
from chattune.data.toxic import cut_toxic_replies
from chattune.errors import InputError

TOXIC = "shut up you stupid idiot, fuck off"


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": role, "content": content} for role, content in pairs]


def test_a_conversation_keeps_the_turns_before_its_first_toxic_reply_and_goes_when_none_is_left():
    clean = turns(("user", "hi"), ("assistant", "hello, how can I help?"))
    late = turns(("user", "hi"), ("assistant", "hello there"), ("user", "what do you think of me"),
                 ("assistant", TOXIC), ("user", "rude"), ("assistant", "sorry, that was uncalled for"))
    first = turns(("user", "hi"), ("assistant", TOXIC), ("user", "why"), ("assistant", "have a nice day"))
    kept, report = cut_toxic_replies([clean, late, first], max_toxicity=0.5)
    assert kept == [clean, late[:2]]  # the later clean reply goes with the cut: its context held the insult
    assert report == {"max_reply_toxicity": 0.5, "replies_scored": 6, "replies_over": 2, "conversations_cut": 2,
                      "conversations_dropped": 1}


def test_only_the_training_side_is_cut_and_the_report_says_how_much(tmp_path):
    path = tmp_path / "chats.jsonl"
    rows = [turns(("user", f"question {i}"), ("assistant", TOXIC if i % 2 else f"a kind answer {i}"))
            for i in range(40)]
    path.write_text("".join(json.dumps({"messages": row}) + "\n" for row in rows))
    cfg = ChatConfig(data=str(path), max_reply_toxicity=0.5)
    train, held_out, report = load_chat_split(cfg)
    plain_train, plain_held_out, _ = load_chat_split(ChatConfig(data=str(path)))
    assert held_out == plain_held_out and any(c[-1]["content"] == TOXIC for c in held_out)
    assert train == [c for c in plain_train if c[-1]["content"] != TOXIC]
    assert report["toxic_replies"]["conversations_dropped"] == len(plain_train) - len(train) > 0
    assert report["train_conversations"] == len(train)


def test_a_threshold_out_of_range_or_one_that_leaves_nothing_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="max_reply_toxicity=1.5 is not allowed"):
        ChatConfig(max_reply_toxicity=1.5)
    path = tmp_path / "rude.jsonl"
    path.write_text("".join(json.dumps({"messages": turns(("user", f"q {i}"), ("assistant", TOXIC))}) + "\n"
                            for i in range(10)))
    with pytest.raises(InputError, match="every training conversation's first reply is over max_reply_toxicity"):
        load_chat_split(ChatConfig(data=str(path), max_reply_toxicity=0.5))
