"""Read JSON Lines (one record per line, streamed) or a JSON document (a list of records, or an object holding one).

    conversations = read_json_records(Path("chats.jsonl"), report)   # report.format == "messages-jsonl"

Records are OpenAI `{"messages": [...]}`, ShareGPT `{"conversations": [...]}` or prompt/response objects
(see records.py). Hostile input is refused with one line: a line over the record limit, nesting deeper than
MAX_JSON_DEPTH (without Python's RecursionError), an integer too long for Python in a turn (one in a key nobody
reads is kept as text and ignored).
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.data.readers.limits import (MAX_INT_DIGITS, MAX_JSON_DEPTH, MAX_JSON_DOCUMENT_BYTES, ReadLimits,
                                          bounded_lines, checked_file, open_checked, read_all_bytes,
                                          record_too_long)
from chattune.data.readers.records import LongInteger, record_to_conversation
from chattune.data.readers.text import text_encoding
from chattune.data.report import DataReport
from chattune.errors import InputError


def _parse_int(digits: str) -> int | str:
    return int(digits) if len(digits) <= MAX_INT_DIGITS else LongInteger(digits)


def _deeper_than(value: object, limit: int) -> bool:
    """Whether `value` nests more than `limit` lists/objects deep; iterative, so any depth is safe to check."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _too_deep(where: str) -> InputError:
    return InputError(f"{where}: JSON nested more than {MAX_JSON_DEPTH} levels deep; chat records nest 3 levels, "
                      "fix or remove that record")


def parse_json(text: str, where: str) -> object:
    """One JSON value; InputError (not RecursionError or ValueError) for hostile or broken input."""
    try:
        value = json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise _too_deep(where) from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
        raise _too_deep(where)
    return value


def _jsonl_records(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[str, object]]:
    for line_number, line in lines:
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            yield where, parse_json(line, where)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not valid JSON ({error}); fix or remove that line") from None


def _streamed_jsonl(path: Path, limits: ReadLimits) -> Iterator[tuple[str, object]]:
    encoding = text_encoding(path, limits)
    with open_checked(path, limits, encoding) as file:
        yield from _jsonl_records(path, bounded_lines(file, path, limits))


def _split_lines(path: Path, text: str, limits: ReadLimits) -> Iterator[tuple[int, str]]:
    for line_number, line in enumerate(text.split("\n"), start=1):
        if len(line) > limits.max_record_bytes:
            raise record_too_long(f"{path}:{line_number}", limits)
        yield line_number, line


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


def _first_line_is_a_record(path: Path, limits: ReadLimits) -> bool:
    """Whether a .json file too big to parse whole holds JSON Lines: its first line is a whole JSON value."""
    with open_checked(path, limits, text_encoding(path, limits)) as file:
        first = next(iter(bounded_lines(file, path, limits)), (1, ""))[1]
    try:
        parse_json(first, f"{path}:1")
    except json.JSONDecodeError:
        return False
    return bool(first.strip())


def json_records(path: Path, limits: ReadLimits = ReadLimits()) -> tuple[str, Iterator[tuple[str, object]]]:
    """("jsonl" or "json", (where, record) per record); a .json file holding JSON Lines is read as JSON Lines.
    JSON Lines are streamed; a JSON document is parsed whole, so it must fit MAX_JSON_DOCUMENT_BYTES."""
    if path.suffix.lower() == ".jsonl":
        return "jsonl", _streamed_jsonl(path, limits)
    if checked_file(path, limits) > MAX_JSON_DOCUMENT_BYTES and _first_line_is_a_record(path, limits):
        return "jsonl", _streamed_jsonl(path, limits)
    data = read_all_bytes(path, limits, cap=MAX_JSON_DOCUMENT_BYTES)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text_encoding(path, limits)  # raises, naming the line and byte
        raise
    del data
    try:
        return "json", iter(_document_records(path, parse_json(text, str(path))))
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # a complete value, then more: one record per line
            return "jsonl", _jsonl_records(path, _split_lines(path, text, limits))
        where = f"{path}:{error.lineno}:{error.colno}"
        raise InputError(f"{where}: not valid JSON ({error.msg}); fix the file there") from None


def read_json_records(path: Path, report: DataReport, *, prompt_column: str | None = None,
                      response_column: str | None = None, limits: ReadLimits = ReadLimits()
                      ) -> Iterator[Conversation]:
    """One conversation per record; report.format is "<kind>-<jsonl|json>", e.g. "sharegpt-jsonl" (set once every
    record is read; the kinds seen so far while streaming)."""
    container, records = json_records(path, limits)
    kinds: set[str] = set()
    report.format = "empty-" + container
    for where, record in records:
        kind, conversation = record_to_conversation(record, where, prompt_column, response_column)
        if kind not in kinds:
            kinds.add(kind)
            report.format = "+".join(sorted(kinds)) + "-" + container
        yield conversation
