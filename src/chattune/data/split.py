"""Split data into train and eval sets: whole conversations, or labelled rows stratified by label.

    train, eval = split_conversations(conversations, eval_fraction=0.2, seed=42)
    train, eval = split_by_label(rows, eval_fraction=0.2, seed=42)     # rows are (text, label)

The same input, fraction and seed always give the same split, so a run can be repeated and its eval set compared
with another run's.
"""

import random

from chattune.data.conversation import Conversation
from chattune.errors import InputError


def _eval_count(total: int, eval_fraction: float) -> int:
    """round(total * eval_fraction), but at least 1 and at most total - 1: both sides get something."""
    return min(max(round(total * eval_fraction), 1), total - 1)


def _check_fraction(eval_fraction: float) -> None:
    if not 0 < eval_fraction < 1:
        raise InputError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}; 0.2 is typical")


def split_conversations(
    conversations: list[Conversation], eval_fraction: float = 0.2, seed: int = 42, *, source: str = "data"
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, eval): a seeded shuffle picks round(n * eval_fraction) eval conversations, at least 1 and at most n - 1.

    Both keep the input order. `source` only names the data in the error for fewer than 2 conversations.
    """
    _check_fraction(eval_fraction)
    if len(conversations) < 2:
        raise InputError(
            f"{source}: {len(conversations)} conversation(s) after cleaning, need at least 2 to split into train "
            "and eval; add more conversations"
        )
    indices = list(range(len(conversations)))
    random.Random(seed).shuffle(indices)
    eval_indices = set(indices[: _eval_count(len(conversations), eval_fraction)])
    train = [conversation for index, conversation in enumerate(conversations) if index not in eval_indices]
    evaluation = [conversation for index, conversation in enumerate(conversations) if index in eval_indices]
    return train, evaluation


def split_by_label(rows: list[tuple[str, str]], eval_fraction: float = 0.2, seed: int = 42, *,
                   source: str = "data") -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, eval) with each label split in the same proportion (one row per side at least, where it has two).

    >>> split_by_label([("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")], 0.5, seed=0)[1]
    [('a', 'x'), ('c', 'y')]
    """
    _check_fraction(eval_fraction)
    if len({label for _, label in rows}) < 2:
        raise InputError(f"{source}: found only one label; classification needs at least two")
    rng = random.Random(seed)
    train, evaluation = [], []
    for label in sorted({label for _, label in rows}):
        group = [row for row in rows if row[1] == label]
        rng.shuffle(group)
        held = _eval_count(len(group), eval_fraction) if len(group) > 1 else 0
        evaluation += group[:held]
        train += group[held:]
    rng.shuffle(train)
    return train, evaluation
