"""Read JSON Lines (one record per line) or a JSON document (a list of records, or an object holding one).

    conversations = read_json_records(Path("chats.jsonl"), report)   # report.format == "messages-jsonl"

Records are OpenAI `{"messages": [...]}`, ShareGPT `{"conversations": [...]}` or prompt/response objects
(see records.py).
"""

import json
from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.data.readers.records import record_to_conversation
from chattune.data.readers.text import read_utf8
from chattune.data.report import DataReport
from chattune.errors import InputError


def _jsonl_records(path: Path, text: str) -> list[tuple[str, object]]:
    records = []
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((f"{path}:{line_number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise InputError(f"{path}:{line_number}: not valid JSON ({error}); fix or remove that line") from None
    return records


def _document_records(path: Path, document: object) -> list[tuple[str, object]]:
    if isinstance(document, dict):
        conversations = document.get("conversations")
        is_sharegpt = isinstance(conversations, list) and conversations and isinstance(conversations[0], dict) and (
            "from" in conversations[0]
        )
        if "messages" in document or is_sharegpt:  # the whole document is a single record
            return [(str(path), document)]
        lists = [key for key, value in document.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise InputError(
                f"{path}: expected a list of records or an object with one list of records, got keys: "
                f"{', '.join(document)}; write one record per line as JSONL instead"
            )
        document = document[lists[0]]
    if not isinstance(document, list):
        raise InputError(f"{path}: expected a list of records, got {type(document).__name__}")
    return [(f"{path}: record {index + 1}", record) for index, record in enumerate(document)]


def json_records(path: Path, text: str) -> tuple[str, list[tuple[str, object]]]:
    """("jsonl" or "json", [(where, record), ...]); a .json file holding JSON Lines is read as JSON Lines."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl", _jsonl_records(path, text)
    try:
        return "json", _document_records(path, json.loads(text))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # a complete value, then more: one record per line
            return "jsonl", _jsonl_records(path, text)
        where = f"{path}:{error.lineno}:{error.colno}"
        raise InputError(f"{where}: not valid JSON ({error.msg}); fix the file there") from None


def read_json_records(
    path: Path, report: DataReport, *, prompt_column: str | None = None, response_column: str | None = None
) -> list[Conversation]:
    """One conversation per record; report.format is "<kind>-<jsonl|json>", e.g. "sharegpt-jsonl"."""
    container, records = json_records(path, read_utf8(path))
    kinds, conversations = set(), []
    for where, record in records:
        kind, conversation = record_to_conversation(record, where, prompt_column, response_column)
        kinds.add(kind)
        conversations.append(conversation)
    report.format = "+".join(sorted(kinds) or ["empty"]) + "-" + container
    return conversations
