"""Read a text file, with errors that point at the byte that is wrong.

    text = read_utf8(Path("chats.jsonl"))                 # InputError "chats.jsonl:3: byte 0xe9 at offset 41 ..."
    text = read_utf8_or_cp1252(Path("chats.csv"), report) # Excel on Windows still saves CSV as cp1252
"""

from pathlib import Path

from chattune.data.report import DataReport
from chattune.errors import InputError


def _where(path: Path, data: bytes, error: UnicodeDecodeError) -> str:
    line = data.count(b"\n", 0, error.start) + 1
    return f"{path}:{line}: byte 0x{data[error.start]:02x} at offset {error.start}"


def read_utf8(path: Path) -> str:
    """The file as text; UTF-8 with or without a byte-order mark, else InputError naming line and byte offset."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{_where(path, data, error)} is not UTF-8; re-save the file as UTF-8") from None


def read_utf8_or_cp1252(path: Path, report: DataReport) -> str:
    """Like read_utf8, but falls back to cp1252 (Windows Latin-1) with a warning in the report."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as utf8_error:
        utf8_where = _where(path, data, utf8_error)
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as error:
        where = _where(path, data, error)
        raise InputError(f"{where} is neither UTF-8 nor cp1252; re-save the file as UTF-8") from None
    report.warnings.append(f"{utf8_where} is not UTF-8; read the file as cp1252 (Windows Latin-1) instead")
    return text
