"""Feedback store -> training data: which replies become SFT rows and DPO pairs, the CLI, and `chattune train`."""

from __future__ import annotations

import json

import pytest

from chattune.cli import main
from chattune.serve.store import Store, StoredReply


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def bot(text: str) -> dict:
    return {"role": "assistant", "content": text}


def add(store: Store, reply_id: str, messages: list[dict], content: str, rating=None, edited=None) -> None:
    store.add_reply(StoredReply(id=reply_id, conversation_id=f"c-{messages[0]['content']}", model="runs/demo",
                                messages=messages, content=content, finish_reason="stop", temperature=0.7, top_p=0.9,
                                max_tokens=64, seed=None, prompt_tokens=10, completion_tokens=5))
    changes = {key: value for key, value in (("rating", rating), ("edited", edited)) if value is not None}
    if changes:
        assert store.set_feedback(reply_id, changes) is not None


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "feedback.sqlite"
    store = Store(path)
    add(store, "a", [user("hi")], "hello!", rating=1)
    add(store, "b", [user("hi"), bot("hello!"), user("how are you")], "meh", edited="great, and you?")
    add(store, "c", [user("favourite food?")], "rocks", rating=-1)
    add(store, "d", [user("favourite food?")], "pizza", rating=1)  # a regenerated reply the user liked
    add(store, "e", [user("weather?")], "sunny")  # no feedback
    add(store, "f", [user("pets?")], "no idea", rating=-1)  # disliked, nothing better offered
    store.close()
    return path


def export(db, fmt: str, tmp_path) -> list[dict]:
    out = tmp_path / f"{fmt}.jsonl"
    assert main(["feedback", "export", "--format", fmt, str(out), "--db", str(db)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_sft_rows_are_liked_or_edited_replies_without_repeats(db, tmp_path):
    assert export(db, "sft", tmp_path) == [
        # "a" is the start of "b", which trains the same reply
        {"messages": [user("hi"), bot("hello!"), user("how are you"), bot("great, and you?")]},
        {"messages": [user("favourite food?"), bot("pizza")]},
    ]


def test_dpo_rows_pair_edits_and_disliked_replies_with_liked_alternatives(db, tmp_path):
    assert export(db, "dpo", tmp_path) == [
        {"prompt": [user("hi"), bot("hello!"), user("how are you")], "chosen": [bot("great, and you?")],
         "rejected": [bot("meh")]},
        {"prompt": [user("favourite food?")], "chosen": [bot("pizza")], "rejected": [bot("rocks")]},
    ]


def test_feedback_updates_and_clears(tmp_path):
    store = Store(tmp_path / "f.sqlite")
    add(store, "x", [user("hi")], "yo")
    assert store.set_feedback("x", {"rating": -1}) == {"reply_id": "x", "rating": -1, "edited": None}
    assert store.set_feedback("x", {"edited": "hello"}) == {"reply_id": "x", "rating": -1, "edited": "hello"}
    assert store.set_feedback("x", {"rating": None}) == {"reply_id": "x", "rating": None, "edited": "hello"}
    assert store.set_feedback("nope", {"rating": 1}) is None
    store.close()


def test_stats_text_and_json(db, capsys):
    assert main(["feedback", "stats", "--db", str(db), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert {k: stats[k] for k in ("conversations", "replies", "rated_up", "rated_down", "edited", "sft_rows",
                                  "dpo_rows")} == {"conversations": 4, "replies": 6, "rated_up": 2, "rated_down": 2,
                                                   "edited": 1, "sft_rows": 2, "dpo_rows": 2}
    assert stats["models"] == {"runs/demo": 6}
    assert main(["feedback", "stats", "--db", str(db)]) == 0
    assert "rated down  2" in capsys.readouterr().out


def test_missing_database_is_one_line_exit_2(tmp_path, capsys):
    assert main(["feedback", "stats", "--db", str(tmp_path / "none.sqlite")]) == 2
    error = capsys.readouterr().err
    assert "none.sqlite" in error and "chattune serve" in error and error.count("\n") == 1


def test_sft_export_trains_with_chattune_train(tmp_path, tiny_llama):
    store = Store(tmp_path / "feedback.sqlite")
    for index in range(10):
        add(store, f"r{index}", [user(f"hello how are you {index}")], "i am fine thanks and you", rating=1)
    store.close()
    rows = export(tmp_path / "feedback.sqlite", "sft", tmp_path)
    assert len(rows) == 10
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "sft.jsonl"), "--model", tiny_llama, "--output", str(run),
                 "--set", "max_steps=1", "--set", "batch_size=4", "--set", "eval_replies=0"]) == 0
    report = json.loads((run / "data_report.json").read_text())
    assert (run / "adapter").is_dir() and "10" in json.dumps(report)
