"""The conversation and feedback store: one SQLite file (WAL mode, so `chattune feedback` can read while the server
writes).

    store = Store("feedback.sqlite")
    store.add_reply(StoredReply(id="chatcmpl-1", conversation_id="c1", model="runs/demo", messages=[...], ...))
    store.set_feedback("chatcmpl-1", rating=-1, edited="the reply I wanted")
    store.replies_with_feedback()   # every reply joined with its feedback, oldest first

Every reply the server generates is recorded with the conversation it answers (as the client sent it), its sampling
settings and the model id; feedback is at most one row per reply: a rating (+1/-1) and the edited reply.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS replies (
    id TEXT PRIMARY KEY,                  -- the completion id the client received (chatcmpl-...)
    conversation_id TEXT NOT NULL REFERENCES conversations(id),
    created REAL NOT NULL,
    model TEXT NOT NULL,
    messages TEXT NOT NULL,               -- JSON list of {role, content}: the conversation this reply answers
    content TEXT NOT NULL,
    finish_reason TEXT NOT NULL,          -- stop, length, or cancelled (client left or pressed stop)
    temperature REAL NOT NULL,
    top_p REAL NOT NULL,
    max_tokens INTEGER NOT NULL,
    seed INTEGER,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS replies_by_conversation ON replies(conversation_id);
CREATE TABLE IF NOT EXISTS feedback (
    reply_id TEXT PRIMARY KEY REFERENCES replies(id),
    rating INTEGER CHECK (rating IN (-1, 1)),  -- NULL: not rated
    edited TEXT,                               -- the reply the user wanted; NULL: not edited
    updated REAL NOT NULL
);
"""


@dataclass
class StoredReply:
    id: str
    conversation_id: str
    model: str
    messages: list[dict]
    content: str
    finish_reason: str
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    prompt_tokens: int
    completion_tokens: int


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop and the decode worker, serialised by a lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, ~1 ms per write
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add_reply(self, reply: StoredReply) -> None:
        row = {**asdict(reply), "messages": json.dumps(reply.messages, ensure_ascii=False), "created": time.time()}
        with self._lock, self._db:
            self._db.execute("INSERT OR IGNORE INTO conversations (id, created) VALUES (?, ?)",
                             (reply.conversation_id, row["created"]))
            columns = ", ".join(row)
            self._db.execute(f"INSERT INTO replies ({columns}) VALUES ({', '.join('?' * len(row))})",
                             tuple(row.values()))

    def set_feedback(self, reply_id: str, changes: dict) -> dict | None:
        """Update the rating and/or edited reply given in `changes`; None if there is no such reply."""
        with self._lock, self._db:
            if self._db.execute("SELECT 1 FROM replies WHERE id = ?", (reply_id,)).fetchone() is None:
                return None
            self._db.execute("INSERT OR IGNORE INTO feedback (reply_id, updated) VALUES (?, ?)", (reply_id, 0))
            for column in ("rating", "edited"):
                if column in changes:
                    self._db.execute(f"UPDATE feedback SET {column} = ? WHERE reply_id = ?",
                                     (changes[column], reply_id))
            self._db.execute("UPDATE feedback SET updated = ? WHERE reply_id = ?", (time.time(), reply_id))
            row = self._db.execute("SELECT reply_id, rating, edited FROM feedback WHERE reply_id = ?",
                                   (reply_id,)).fetchone()
        return dict(row)

    def replies_with_feedback(self) -> list[dict]:
        """Every reply with `rating` and `edited` (None where absent) and `messages` parsed, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.*, f.rating, f.edited FROM replies r LEFT JOIN feedback f ON f.reply_id = r.id "
                "ORDER BY r.created, r.rowid").fetchall()
        return [{**dict(row), "messages": json.loads(row["messages"])} for row in rows]

    def count_conversations(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]
