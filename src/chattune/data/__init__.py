"""Read conversation data into the one normalised form, clean it, split it.

    from chattune.data import load_conversations, split_conversations, write_jsonl
    conversations, report = load_conversations("chats.csv")
    train, eval = split_conversations(conversations, eval_fraction=0.2, seed=42)
"""

from chattune.data.clean import clean_conversations
from chattune.data.conversation import Conversation
from chattune.data.load import load_conversations, write_jsonl
from chattune.data.readers.corpora import CORPORA
from chattune.data.report import DataReport
from chattune.data.split import split_conversations

__all__ = [
    "CORPORA",
    "Conversation",
    "DataReport",
    "clean_conversations",
    "load_conversations",
    "split_conversations",
    "write_jsonl",
]
