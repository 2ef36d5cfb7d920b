"""Read a CSV/TSV file with one prompt/response pair per row.

    conversations = read_csv(Path("chats.csv"), report)                       # columns found by name
    conversations = read_csv(Path("chats.csv"), report, prompt_column="q", response_column="a")

The delimiter (comma, semicolon or tab) is detected, so Excel exports from any locale work; quoted fields may span
lines. Each row becomes [system?, user, assistant]; see records.COLUMN_PAIRS for the column names recognised.
"""

import csv
import io
from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.data.readers.records import find_columns, pair_to_conversation
from chattune.data.readers.text import read_utf8_or_cp1252
from chattune.data.report import DataReport
from chattune.errors import InputError

DELIMITERS = ",;\t"
SNIFF_CHARS = 64 * 1024  # enough rows for csv.Sniffer to see a consistent delimiter count


def _delimiter(text: str) -> str:
    try:
        return csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=DELIMITERS).delimiter
    except csv.Error:
        # The sniffer gives up on files with one data row or ragged rows; the header line alone is a fair guess.
        header = text.split("\n", 1)[0]
        return max(DELIMITERS, key=header.count)


def csv_records(path: Path, report: DataReport, pick_columns) -> list[tuple[str, dict]]:
    """(where, record) per data row, the header naming the fields; `pick_columns(header)` returns the columns the
    caller reads, which every row must reach (a short row usually means a wrong delimiter or a broken quote)."""
    text = read_utf8_or_cp1252(path, report)
    delimiter = _delimiter(text)
    report.format = "tsv" if delimiter == "\t" else "csv"
    rows = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)  # newline="": quoted fields keep their \r\n
    try:
        header = next(rows, [])
        columns = pick_columns(header)
        needed = max(header.index(column) for column in columns) + 1
        records = []
        for row in rows:
            if not row:  # blank line
                continue
            if len(row) < needed:
                raise InputError(
                    f"{path}:{rows.line_num}: row has {len(row)} fields but {columns[-1]!r} is field {needed} of "
                    f"{len(header)}; check the delimiter {delimiter!r} and the quoting on that line"
                )
            records.append((f"{path}:{rows.line_num}", dict(zip(header, row))))
    except csv.Error as error:
        raise InputError(f"{path}:{rows.line_num}: not valid CSV ({error}); fix the quoting on that line") from None
    return records


def read_csv(
    path: Path, report: DataReport, *, prompt_column: str | None = None, response_column: str | None = None
) -> list[Conversation]:
    """One conversation per data row; the header names the columns."""
    columns: tuple[str, str] = ("", "")

    def pick(header: list[str]) -> tuple[str, str]:
        nonlocal columns
        columns = find_columns(header, prompt_column, response_column, str(path))
        return columns

    records = csv_records(path, report, pick)
    return [pair_to_conversation(record, *columns, where) for where, record in records]
