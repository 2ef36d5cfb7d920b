"""Preference pairs for DPO, in TRL's conversational preference format, from a file or straight from the web chat.

    pairs = read_preferences("pairs.jsonl")        # `chattune feedback export --format dpo`, or any prompt/chosen/rejected
    pairs = read_preferences("feedback.sqlite")    # the store `chattune serve` writes: the users' thumbs and edits
    pairs[0]   # {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...]}

Files: JSONL/JSON/CSV/TSV/parquet records with prompt, chosen and rejected (case-insensitive names); each may be text
or a list of {role, content} messages (TRL's format). The SQLite store is read as a file (read-only, its schema in
chattune/serve/store.py), with the rules of `chattune feedback export --format dpo`: an edited reply makes a pair
(chosen: the edit, rejected: the original), and a thumbs-down reply makes one with each thumbs-up reply to the same
conversation. Bad data is one InputError naming the file, record and column: a missing column, an empty side, or
chosen equal to rejected (a pair that teaches nothing).
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from pathlib import Path

from chattune.data.readers.records import by_lower
from chattune.data.readers.rows import file_records
from chattune.data.report import DataReport
from chattune.errors import InputError

COLUMNS = ("prompt", "chosen", "rejected")
SQLITE_MAGIC = b"SQLite format 3\x00"


def read_preferences(source: str | Path) -> list[dict]:
    """Pairs from a preference file or a feedback store; InputError when there are none or one is malformed."""
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{source}: no such preference file; give a JSONL/CSV of prompt/chosen/rejected or the "
                         "SQLite file of `chattune serve --db`")
    with path.open("rb") as file:
        is_store = file.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    pairs = feedback_pairs(path) if is_store else _file_pairs(path)
    if not pairs:
        what = "no rated-up/rated-down replies to one conversation and no edited replies" if is_store else "no records"
        raise InputError(f"{source}: no preference pairs ({what}); DPO needs at least one")
    return pairs


def _file_pairs(path: Path) -> list[dict]:
    def pick_columns(header: list[str]) -> list[str]:
        return [_column(header, name, f"{path}:1") for name in COLUMNS]

    records = file_records(path, DataReport(format="unknown", source=str(path)), pick_columns, kind="preferences")
    pairs = []
    for where, record in records:
        columns = {name: _column(list(record), name, where) for name in COLUMNS}
        prompt = _messages(record[columns["prompt"]], "user", where, "prompt")
        chosen, rejected = (_messages(record[columns[side]], "assistant", where, side) for side in ("chosen", "rejected"))
        if chosen == rejected:
            raise InputError(f"{where}: chosen and rejected are the same reply; a pair must prefer one reply to "
                             "another (drop the record)")
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def _column(names: list[str], wanted: str, where: str) -> str:
    columns = by_lower([str(name) for name in names])
    if wanted not in columns:
        raise InputError(f"{where}: no {wanted!r} column (found: {', '.join(map(str, names)) or 'none'}); preference "
                         "data needs prompt, chosen and rejected")
    return columns[wanted]


def _messages(value, role: str, where: str, column: str) -> list[dict]:
    """Text becomes one turn of `role`; a list must be {role, content} messages with text. Empty is an error."""
    if isinstance(value, str):
        value = [{"role": role, "content": value}]
    ok = isinstance(value, list) and value and all(
        isinstance(turn, dict) and isinstance(turn.get("role"), str) and isinstance(turn.get("content"), str)
        for turn in value)
    if not ok:
        raise InputError(f"{where}: {column} must be text or a list of {{role, content}} messages, got "
                         f"{json.dumps(value)[:60]}")
    if not value[-1]["content"].strip():
        raise InputError(f"{where}: {column} is empty; every pair needs a prompt and two non-empty replies")
    return [{"role": turn["role"], "content": turn["content"]} for turn in value]


def _store_rows(path: Path) -> list[dict]:
    """Every reply with its rating and edit, oldest first, read-only (a running server may be writing)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT r.messages, r.content, f.rating, f.edited FROM replies r "
                              "LEFT JOIN feedback f ON f.reply_id = r.id ORDER BY r.created, r.rowid").fetchall()
    except sqlite3.Error as error:
        raise InputError(f"{path}: not a chattune feedback store ({error}); give the file of `chattune serve --db`") \
            from None
    return [{"messages": json.loads(messages), "content": content, "rating": rating, "edited": edited}
            for messages, content, rating, edited in rows]


def feedback_pairs(path: Path) -> list[dict]:
    """The pairs `chattune feedback export --format dpo` writes, read from the store itself."""
    return dpo_pairs(_store_rows(path))


def dpo_pairs(replies: list[dict]) -> list[dict]:
    """Preference pairs from rated replies (dicts with messages, content, rating, edited): an edit is preferred
    to the reply it replaced, and a reply rated up to one rated down in the same conversation."""
    pairs = []

    def pair(prompt: list[dict], chosen: str, rejected: str) -> None:
        pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})

    for row in replies:
        if row["edited"] is not None and row["edited"].strip() and row["edited"] != row["content"]:
            pair(row["messages"], row["edited"], row["content"])
    liked = defaultdict(list)  # the conversation (as JSON) -> the replies to it rated up (their edit, if any)
    for row in replies:
        if row["rating"] == 1:
            liked[json.dumps(row["messages"], sort_keys=True)].append(
                row["edited"] if row["edited"] is not None else row["content"])
    for row in replies:
        if row["rating"] == -1 and row["edited"] is None:
            for better in liked[json.dumps(row["messages"], sort_keys=True)]:
                if better != row["content"]:
                    pair(row["messages"], better, row["content"])
    return pairs
