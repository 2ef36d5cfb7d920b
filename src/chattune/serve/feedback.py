"""Turn what users said about served replies into training data.

    chattune feedback stats                              # counts in feedback.sqlite (or --db PATH)
    chattune feedback export --format sft good.jsonl     # {"messages": [...]}: readable by `chattune train --data`
    chattune feedback export --format dpo pairs.jsonl    # {"prompt": [...], "chosen": [...], "rejected": [...]}

SFT rows are the conversations behind replies rated thumbs-up or edited (the edit replaces the reply). DPO rows are
TRL's conversational preference format: an edited reply (chosen: the edit, rejected: the original), and a
thumbs-down reply paired with each thumbs-up reply to the same conversation (e.g. a regenerated one).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from chattune.data.preferences import dpo_pairs
from chattune.errors import InputError
from chattune.files import atomic_write_text
from chattune.serve.store import Store


def open_store(db: str | Path) -> Store:
    if not Path(db).is_file():
        raise InputError(f"{db}: no feedback database; it is created by `chattune serve RUN --db {db}`")
    return Store(db)


def _reply(row: dict) -> str:
    return row["edited"] if row["edited"] is not None else row["content"]


def sft_rows(replies: list[dict]) -> list[dict]:
    """Conversations ending in a reply rated up or edited; a conversation that is the start of a longer exported
    one is left out, since the longer one trains the same replies."""
    kept = [r["messages"] + [{"role": "assistant", "content": _reply(r)}]
            for r in replies if (r["rating"] == 1 or r["edited"] is not None) and _reply(r).strip()]
    unique = list({json.dumps(m, sort_keys=True): m for m in kept}.values())
    return [{"messages": m} for m in unique
            if not any(len(other) > len(m) and other[: len(m)] == m for other in unique)]


def feedback_stats(db: str | Path) -> dict:
    store = open_store(db)
    replies = store.replies_with_feedback()
    stats = {
        "conversations": store.count_conversations(),
        "replies": len(replies),
        "rated_up": sum(r["rating"] == 1 for r in replies),
        "rated_down": sum(r["rating"] == -1 for r in replies),
        "edited": sum(r["edited"] is not None for r in replies),
        "sft_rows": len(sft_rows(replies)),
        "dpo_rows": len(dpo_pairs(replies)),
        "finish_reasons": dict(Counter(r["finish_reason"] for r in replies)),
        "models": dict(Counter(r["model"] for r in replies)),
    }
    store.close()
    return stats


def export_feedback(db: str | Path, fmt: str, out: str | Path) -> int:
    """Write SFT or DPO rows as JSONL to `out`; returns the number of rows."""
    if fmt not in ("sft", "dpo"):
        raise InputError(f"--format {fmt}: choose sft or dpo")
    store = open_store(db)
    replies = store.replies_with_feedback()
    store.close()
    rows = sft_rows(replies) if fmt == "sft" else dpo_pairs(replies)
    atomic_write_text(Path(out), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return len(rows)
