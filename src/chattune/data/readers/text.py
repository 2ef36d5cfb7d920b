"""Find a text file's encoding without loading it, with errors that point at the byte that is wrong.

    encoding = text_encoding(path, limits)              # "utf-8-sig", "utf-16", "utf-32"; InputError naming the byte
    encoding = text_encoding(path, limits, report)      # may also be "cp1252" (Excel on Windows), with a warning
    text = read_utf8(Path("notes.txt"))                 # small files read whole

UTF-16 and UTF-32 are recognised by their byte-order mark (Excel's "Unicode text" export writes one); without a
mark the file must be UTF-8. The check streams the file in chunks, so memory does not grow with its size.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from chattune.data.readers.limits import READ_CHUNK, ReadLimits, open_checked, read_all_bytes, read_error
from chattune.data.report import DataReport
from chattune.errors import InputError

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
)


def _first_bad_byte(path: Path, limits: ReadLimits, encoding: str) -> str | None:
    """"PATH:LINE: byte 0xNN at offset N" for the first byte that does not decode, else None."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, lines = 0, 0
    try:
        with open_checked(path, limits) as file:
            while True:
                chunk = file.read(READ_CHUNK)
                pending = len(decoder.getstate()[0])
                try:
                    decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as error:
                    bad = offset - pending + error.start
                    line = lines + error.object.count(b"\n", 0, error.start) + 1
                    return f"{path}:{line}: byte 0x{error.object[error.start]:02x} at offset {bad}"
                if not chunk:
                    return None
                offset += len(chunk)
                lines += chunk.count(b"\n")
    except OSError as error:
        raise read_error(path, error) from None


def _byte_order_mark(path: Path, limits: ReadLimits) -> str | None:
    try:
        with open_checked(path, limits) as file:
            head = file.read(4)
    except OSError as error:
        raise read_error(path, error) from None
    return next((encoding for mark, encoding in BYTE_ORDER_MARKS if head.startswith(mark)), None)


def text_encoding(path: Path, limits: ReadLimits, report: DataReport | None = None) -> str:
    """The codec to read `path` with; with a report, cp1252 (Windows Latin-1) is accepted with a warning."""
    marked = _byte_order_mark(path, limits)
    if marked is not None and marked != "utf-8-sig":
        bad = _first_bad_byte(path, limits, marked)
        if bad:
            raise InputError(f"{bad} is not valid {marked.upper()}; re-save the file as UTF-8")
        return marked
    bad = _first_bad_byte(path, limits, "utf-8")
    if bad is None:
        return "utf-8-sig"
    if report is None:
        raise InputError(f"{bad} is not UTF-8; re-save the file as UTF-8")
    cp1252_bad = _first_bad_byte(path, limits, "cp1252")
    if cp1252_bad:
        raise InputError(f"{cp1252_bad} is neither UTF-8 nor cp1252; re-save the file as UTF-8")
    report.warnings.append(f"{bad} is not UTF-8; read the file as cp1252 (Windows Latin-1) instead")
    return "cp1252"


def read_utf8(path: Path, limits: ReadLimits | None = None) -> str:
    """A small file as text (UTF-8, BOM or not); InputError naming line and byte offset otherwise."""
    data = read_all_bytes(path, limits or ReadLimits())
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        where = f"{path}:{line}: byte 0x{data[error.start]:02x} at offset {error.start}"
        raise InputError(f"{where} is not UTF-8; re-save the file as UTF-8") from None
