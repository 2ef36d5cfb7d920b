"""Open input files safely: refuse what is not a regular file, files over a size limit and lines over a size limit,
each with one line that says what to change, before the file can cost unbounded time or memory.

    limits = ReadLimits(max_record_bytes=4 * MIB)            # from --max-record-bytes / the config key
    size = checked_file(path, limits)                        # InputError for a FIFO, a device, a huge file
    for line_number, line in bounded_lines(file, path, limits):   # a 50 MB line is refused after 1 MB
        ...

A FIFO with no writer would block `open` forever and /dev/zero never ends, so the type is checked with os.stat
(which follows symlinks) before anything is opened.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chattune.errors import InputError

MIB = 1024 * 1024
# A support log of a million rows is ~300 MB; 8 GiB leaves room for years of logs while still refusing a wrong path
# (a disk image, a database dump) before minutes are spent reading it.
MAX_FILE_BYTES = 8 * 1024 * MIB
# One JSON line, transcript line or CSV row. A long chat reply is ~10 KB; 1 MiB is a hundred of them, and bounds
# the memory one record can take (json.loads of a 50 MB line used 3.9 GB).
MAX_RECORD_BYTES = 1 * MIB
# A .json document (not JSON Lines) is parsed whole, at ~10x its size in memory; bigger data should be JSONL.
MAX_JSON_DOCUMENT_BYTES = 256 * MIB
# Chat records nest 3 deep ({"messages": [{"role": ...}]}); anything past 64 is an attack or a broken export.
MAX_JSON_DEPTH = 64
# Python refuses int("1" * 5000) (the int/str conversion limit); an integer that long is never chat data.
MAX_INT_DIGITS = 4300
READ_CHUNK = 4 * MIB


@dataclass(frozen=True)
class ReadLimits:
    max_file_bytes: int = MAX_FILE_BYTES  # --max-file-bytes / config key max_file_bytes
    max_record_bytes: int = MAX_RECORD_BYTES  # --max-record-bytes / config key max_record_bytes

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_record_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"{name} must be a positive number of bytes, got {value!r}")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def checked_file(path: Path, limits: ReadLimits) -> int:
    """The size of `path`, a regular file within the size limit; InputError for anything else."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror}); check the path and its permissions") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path}: {_kind(info.st_mode)}, not a data file; give a regular file or a dataset folder")
    if info.st_size > limits.max_file_bytes:
        raise InputError(f"{path}: {info.st_size:,} bytes, over the {limits.max_file_bytes:,}-byte limit; "
                         "raise it with --max-file-bytes N (config: max_file_bytes) or give a smaller file")
    return info.st_size


def open_checked(path: Path, limits: ReadLimits, encoding: str | None = None) -> IO:
    """`path` opened for reading (binary without an encoding, text with newline="" otherwise), once checked."""
    checked_file(path, limits)
    try:
        if encoding is None:
            return open(path, "rb")  # noqa: SIM115 - the caller closes it
        return open(path, encoding=encoding, newline="")  # noqa: SIM115
    except OSError as error:
        raise InputError(f"{path}: cannot read it ({error.strerror}); check the path and its permissions") from None


def read_error(path: Path, error: OSError) -> InputError:
    """The one-line error for an OSError met while reading (an unreadable special file such as /proc/self/mem)."""
    return InputError(f"{path}: cannot read it ({error.strerror or error}); give a regular data file")


def record_too_long(where: str, limits: ReadLimits) -> InputError:
    return InputError(f"{where}: record longer than the {limits.max_record_bytes:,}-byte limit; raise it with "
                      "--max-record-bytes N (config: max_record_bytes) or fix the file there")


def bounded_lines(file: IO, path: Path, limits: ReadLimits) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) for each line of a text file; never reads more than the record limit
    into one line. A limit in bytes is applied to characters here: a line of at most N characters holds at least
    N bytes, so nothing within the limit is refused."""
    line_number = 0
    try:
        while True:
            line = file.readline(limits.max_record_bytes + 1)
            if not line:
                return
            line_number += 1
            if len(line) > limits.max_record_bytes:
                raise record_too_long(f"{path}:{line_number}", limits)
            yield line_number, line
    except OSError as error:
        raise read_error(path, error) from None


def read_all_bytes(path: Path, limits: ReadLimits, cap: int | None = None) -> bytes:
    """The whole file, refused when it is bigger than `cap` (or the file limit)."""
    size = checked_file(path, limits)
    if cap is not None and size > cap:
        raise InputError(f"{path}: a {size:,}-byte JSON document is parsed whole and the limit is {cap:,} bytes; "
                         "write it as JSON Lines (one record per line), which is read line by line")
    try:
        with open(path, "rb") as file:
            data = file.read((size or cap or limits.max_file_bytes) + 1)  # /proc files report size 0
    except OSError as error:
        raise read_error(path, error) from None
    if len(data) > (size or cap or limits.max_file_bytes):  # it grew while read, or its size is not reported
        raise InputError(f"{path}: it changed size while being read; give a file that is not being written")
    return data
