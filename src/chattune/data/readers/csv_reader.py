"""Read a CSV/TSV file with one prompt/response pair per row, row by row.

    conversations = read_csv(Path("chats.csv"), report)                       # columns found by name
    conversations = read_csv(Path("chats.csv"), report, prompt_column="q", response_column="a")

The delimiter (comma, semicolon or tab) is detected, so Excel exports from any locale work; quoted fields may span
lines; UTF-8, UTF-16/32 with a byte-order mark and cp1252 are decoded. Each row becomes [system?, user, assistant];
see records.COLUMN_PAIRS for the column names recognised. A header that names a column twice is refused: which of
the two was meant cannot be guessed. Rows are read one at a time, so memory does not grow with the file.
"""

import csv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.data.readers.limits import ReadLimits, bounded_lines, open_checked, read_error, record_too_long
from chattune.data.readers.records import by_lower, find_columns, pair_to_conversation
from chattune.data.readers.text import text_encoding
from chattune.data.report import DataReport
from chattune.errors import InputError

DELIMITERS = ",;\t"
SNIFF_CHARS = 64 * 1024  # enough rows for csv.Sniffer to see a consistent delimiter count


def _delimiter(path: Path, encoding: str) -> str:
    try:
        with open_checked(path, ReadLimits(), encoding) as file:
            text = file.read(SNIFF_CHARS)
    except OSError as error:
        raise read_error(path, error) from None
    try:
        return csv.Sniffer().sniff(text, delimiters=DELIMITERS).delimiter
    except csv.Error:
        # The sniffer gives up on files with one data row or ragged rows; the header line alone is a fair guess.
        header = text.split("\n", 1)[0]
        return max(DELIMITERS, key=header.count)


def _check_header(path: Path, header: list[str]) -> None:
    counts = Counter(name.strip().lower() for name in header)
    repeated = [name for name in header if name.strip() and counts[name.strip().lower()] > 1]
    if repeated:
        names = ", ".join(dict.fromkeys(repr(name) for name in repeated))
        raise InputError(f"{path}:1: the header names a column more than once ({names}); rename or remove one so "
                         "that it is clear which column holds the text")


def csv_records(path: Path, report: DataReport, pick_columns, limits: ReadLimits = ReadLimits()
                ) -> Iterator[tuple[str, dict]]:
    """(where, record) per data row, the header naming the fields; `pick_columns(header)` returns the columns the
    caller reads, which every row must reach (a short row usually means a wrong delimiter or a broken quote)."""
    encoding = text_encoding(path, limits, report)
    delimiter = _delimiter(path, encoding)
    report.format = "tsv" if delimiter == "\t" else "csv"
    csv.field_size_limit(limits.max_record_bytes)  # a quoted field spanning many lines is bounded too
    with open_checked(path, limits, encoding) as file:
        lines = (line for _, line in bounded_lines(file, path, limits))
        rows = csv.reader(lines, delimiter=delimiter)  # newline="" on open: quoted fields keep their \r\n
        try:
            header = next(rows, [])
            _check_header(path, header)
            columns = pick_columns(header)
            needed = max(header.index(column) for column in columns) + 1
            for row in rows:
                if not row:  # blank line
                    continue
                if len(row) < needed:
                    raise InputError(
                        f"{path}:{rows.line_num}: row has {len(row)} fields but {columns[-1]!r} is field {needed} "
                        f"of {len(header)}; check the delimiter {delimiter!r} and the quoting on that line"
                    )
                yield f"{path}:{rows.line_num}", dict(zip(header, row))
        except csv.Error as error:
            if "field larger than field limit" in str(error):
                raise record_too_long(f"{path}:{rows.line_num}", limits) from None
            raise InputError(f"{path}:{rows.line_num}: not valid CSV ({error}); fix the quoting on that line") from None
        except UnicodeDecodeError as error:
            raise InputError(f"{path}:{rows.line_num + 1}: not valid {encoding} ({error.reason}); re-save the file "
                             "as UTF-8") from None


def read_csv(path: Path, report: DataReport, *, prompt_column: str | None = None,
             response_column: str | None = None, limits: ReadLimits = ReadLimits()) -> Iterator[Conversation]:
    """One conversation per data row; the header names the columns."""
    columns: tuple[str, str] = ("", "")
    lower: dict[str, str] = {}

    def pick(header: list[str]) -> tuple[str, str]:
        nonlocal columns, lower
        columns = find_columns(header, prompt_column, response_column, str(path))
        lower = by_lower(header)
        return columns

    for where, record in csv_records(path, report, pick, limits):
        yield pair_to_conversation(record, *columns, where, lower)
