"""`consecutive_messages`: one speaker's consecutive messages become one turn, joined with a newline or a space, in
every reader that meets them (chitchat, transcripts, same-role records) and in the training-data cache key."""

import inspect
import json

import pytest

from chattune.config import load_config
from chattune.data import load_conversations
from chattune.data.load import reader_options, stream_conversations
from chattune.errors import InputError

TRANSCRIPT = "A: hi\nA: anyone there?\nB: yes\nB: here\nsecond line of B's message\nA: good\n"


@pytest.mark.parametrize("joiner, name", [("\n", "newline"), (" ", "space")])
def test_transcript_and_records_join_consecutive_messages(tmp_path, joiner, name):
    transcript = tmp_path / "chat.txt"
    transcript.write_text(TRANSCRIPT)
    conversations, report = load_conversations(str(transcript), consecutive_messages=name)
    # a continuation line stays part of its message (a newline); only separate messages take the joiner
    assert conversations == [[{"role": "user", "content": f"hi{joiner}anyone there?"},
                              {"role": "assistant", "content": f"yes{joiner}here\nsecond line of B's message"}]]
    assert report.dropped == {"trailing user turn": 1}
    records = tmp_path / "chats.jsonl"
    records.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "you?"},
                                               {"role": "assistant", "content": "yes"}]}) + "\n")
    conversations, report = load_conversations(str(records), consecutive_messages=name)
    assert conversations[0][0] == {"role": "user", "content": f"hi{joiner}you?"}
    assert report.changed["same-role turns merged"] == 1


def test_chitchat_keeps_its_conversations_and_turns_whichever_the_joiner():
    pytest.importorskip("chitchat_dataset", reason="the chitchat corpus package is not installed")
    by_newline, _ = load_conversations("chitchat", limit=50, consecutive_messages="newline")
    by_space, _ = load_conversations("chitchat", limit=50, consecutive_messages="space")
    assert [len(c) for c in by_newline] == [len(c) for c in by_space]
    joined = [(a["content"], b["content"]) for x, y in zip(by_newline, by_space) for a, b in zip(x, y)
              if a["content"] != b["content"]]
    assert joined and all(" ".join(a.split("\n")) == b for a, b in joined)  # only the joiner differs
    assert not any("\n" in turn["content"] for c in by_space for turn in c)


def test_the_config_key_is_checked_and_reaches_the_readers_and_the_cache_key():
    from chattune.data.prepare import DATA_KEYS

    with pytest.raises(InputError, match="consecutive_messages='separate' is not allowed"):
        load_config(overrides=["consecutive_messages=separate"])
    cfg = load_config(overrides=["consecutive_messages=newline"])
    assert reader_options(cfg)["consecutive_messages"] == "newline" and "consecutive_messages" in DATA_KEYS
    # space by default (the demo's replies ended 100% vs 69% with newline; README Data), in configs and in the reader
    assert reader_options(load_config())["consecutive_messages"] == "space"
    assert inspect.signature(stream_conversations).parameters["consecutive_messages"].default == "space"
    with pytest.raises(InputError, match="consecutive_messages"):
        load_conversations("chitchat", limit=1, consecutive_messages="tab")
