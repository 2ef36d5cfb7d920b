"""split_conversations: seeded, whole conversations, both sides non-empty."""

import pytest

from chattune.data import split_conversations
from chattune.errors import InputError


def numbered(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": str(i)}, {"role": "assistant", "content": "ok"}] for i in range(count)]


def ids(conversations) -> list[str]:
    return [conversation[0]["content"] for conversation in conversations]


def test_split_is_seeded_disjoint_and_complete():
    conversations = numbered(100)
    train, evaluation = split_conversations(conversations, eval_fraction=0.2, seed=42)
    assert (len(train), len(evaluation)) == (80, 20)
    assert sorted(ids(train) + ids(evaluation), key=int) == ids(conversations)
    assert split_conversations(conversations, eval_fraction=0.2, seed=42) == (train, evaluation)
    assert ids(split_conversations(conversations, eval_fraction=0.2, seed=7)[1]) != ids(evaluation)
    assert ids(evaluation) != ids(conversations)[:20]  # shuffled, not the first 20


def test_split_keeps_one_on_each_side():
    assert [len(side) for side in split_conversations(numbered(2), eval_fraction=0.01)] == [1, 1]
    assert [len(side) for side in split_conversations(numbered(3), eval_fraction=0.9)] == [1, 2]


def test_split_needs_two_conversations():
    with pytest.raises(InputError, match=r"chats\.csv: 1 conversation\(s\) after cleaning, need at least 2"):
        split_conversations(numbered(1), source="chats.csv")


def test_split_rejects_fraction_outside_zero_one():
    with pytest.raises(InputError, match=r"eval_fraction must be between 0 and 1 \(exclusive\), got 1.0"):
        split_conversations(numbered(10), eval_fraction=1.0)
