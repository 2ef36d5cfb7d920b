"""Split conversations into train and eval sets, whole conversations only.

    train, eval = split_conversations(conversations, eval_fraction=0.2, seed=42)

The same conversations, fraction and seed always give the same split, so a run can be repeated and its eval set
compared with another run's.
"""

import random

from chattune.data.conversation import Conversation
from chattune.errors import InputError


def split_conversations(
    conversations: list[Conversation], eval_fraction: float = 0.2, seed: int = 42, *, source: str = "data"
) -> tuple[list[Conversation], list[Conversation]]:
    """(train, eval): a seeded shuffle picks round(n * eval_fraction) eval conversations, at least 1 and at most n - 1.

    Both keep the input order. `source` only names the data in the error for fewer than 2 conversations.
    """
    if not 0 < eval_fraction < 1:
        raise InputError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}; 0.2 is typical")
    if len(conversations) < 2:
        raise InputError(
            f"{source}: {len(conversations)} conversation(s) after cleaning, need at least 2 to split into train "
            "and eval; add more conversations"
        )
    indices = list(range(len(conversations)))
    random.Random(seed).shuffle(indices)
    eval_count = min(max(round(len(conversations) * eval_fraction), 1), len(conversations) - 1)
    eval_indices = set(indices[:eval_count])
    train = [conversation for index, conversation in enumerate(conversations) if index not in eval_indices]
    evaluation = [conversation for index, conversation in enumerate(conversations) if index in eval_indices]
    return train, evaluation
