"""Hostile and odd input files against `chattune data inspect`, as a user runs it: each ends with exit 2 and one line
naming the file (no traceback) within seconds, or reads correctly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chattune.data import load_conversations
from chattune.data.load import stream_conversations
from chattune.data.readers.limits import ReadLimits

VALID = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
DEEP = 10_000
LONG_DIGITS = "7" * 5000


def inspect_cli(path, *flags, env=None, timeout=10):
    """(exit code, stdout, stderr lines) of `chattune data inspect PATH` in a fresh process; fails past `timeout`."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "chattune.cli", "data", "inspect", path, "--json", *flags],
                            capture_output=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert time.monotonic() - started < timeout
    return result.returncode, result.stdout, result.stderr.decode("utf-8", "replace").strip().splitlines()


def assert_refused(path, *wanted: str, flags=()):
    code, _, lines = inspect_cli(str(path), *flags)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("chattune: error: "), lines
    for text in wanted:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("line", [
    "[" * DEEP + "]" * DEEP,
    "{\"a\": " * DEEP + "1" + "}" * DEEP,
    json.dumps({"messages": [{"role": "user", "content": "PLACE"}]}).replace('"PLACE"', "[" * DEEP + "]" * DEEP),
    "[" * DEEP,
], ids=["array", "object", "inside-content", "unclosed"])
def test_deep_json_is_refused(tmp_path, line):
    path = tmp_path / "deep.jsonl"
    path.write_text(json.dumps(VALID) + "\n" + line + "\n")
    assert_refused(path, f"{path}:2:")


def test_deep_json_document_is_refused(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text("[" + json.dumps(VALID) + ", " + "[" * DEEP + "]" * DEEP + "]")
    assert_refused(path, str(path), "nested more than 64 levels")


def test_long_integer_in_a_used_key_is_refused(tmp_path):
    path = tmp_path / "int.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": ' + LONG_DIGITS + "}]}\n")
    assert_refused(path, f"{path}:1: messages[0]", "an integer of 5,000 digits")


def test_long_integer_in_an_unused_key_is_ignored(tmp_path):
    path = tmp_path / "int.jsonl"
    path.write_text(json.dumps(VALID)[:-1] + ', "ticket": ' + LONG_DIGITS + "}\n")
    conversations, report = load_conversations(str(path))
    assert conversations == [VALID["messages"]] and report.format == "messages-jsonl"


@pytest.mark.parametrize("suffix, line", [
    (".jsonl", json.dumps({"messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "x" * 5_000_000}]})),
    (".txt", "Alice: hi\nBob: " + "x" * 5_000_000),
    (".csv", "prompt,response\nhi," + "x" * 5_000_000),
])
def test_record_over_the_limit_is_refused_and_the_limit_can_be_raised(tmp_path, suffix, line):
    path = tmp_path / f"big{suffix}"
    path.write_text(line + "\n")
    assert_refused(path, str(path), "1,048,576-byte limit", "--max-record-bytes")
    stream, report = stream_conversations(str(path), limits=ReadLimits(max_record_bytes=6_000_000))
    assert [len(turn["content"]) for conversation in stream for turn in conversation][-1] == 5_000_000
    assert report.conversations_read == 1


def test_file_over_the_size_limit_is_refused(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(VALID) + "\n")
    assert_refused(path, str(path), "over the 10-byte limit", "--max-file-bytes", flags=("--max-file-bytes", "10"))


def test_fifo_is_refused_before_it_is_opened(tmp_path):
    path = tmp_path / "pipe.jsonl"
    os.mkfifo(path)  # no writer: opening it would block forever
    assert_refused(path, str(path), "a FIFO (named pipe), not a data file")


@pytest.mark.parametrize("name", ["zero.csv", "zero"])
def test_symlink_to_dev_zero_is_refused(tmp_path, name):
    path = tmp_path / name
    path.symlink_to("/dev/zero")
    assert_refused(path, str(path), "a character device, not a data file")


def test_unreadable_special_file_is_one_line(tmp_path):
    path = tmp_path / "mem.jsonl"
    path.symlink_to("/proc/self/mem")  # a regular file by stat, but reading it fails with EIO
    assert_refused(path, str(path), "cannot read it")


def test_folder_without_data_files_is_one_line(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("not data\n")
    assert_refused(tmp_path / "notes", "a folder with no data files")


def test_duplicate_csv_header_is_refused_naming_it(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("prompt,response,Response\nhi,first,second\n")
    assert_refused(path, f"{path}:1:", "'response', 'Response'")


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_csv_with_a_utf16_or_utf32_byte_order_mark_is_decoded(tmp_path, encoding):
    path = tmp_path / "excel.csv"
    text = "prompt\tresponse\nCafé?\tOui, merci\n"
    mark = "\ufeff".encode(encoding) if encoding.endswith("-be") else b""  # utf-16/utf-32 write their own
    path.write_bytes(mark + text.encode(encoding))
    conversations, report = load_conversations(str(path))
    assert report.format == "tsv" and not report.warnings
    assert conversations == [[{"role": "user", "content": "Café?"}, {"role": "assistant", "content": "Oui, merci"}]]


def test_file_name_that_is_not_utf8_still_gives_valid_json(tmp_path, tiny_llama):
    path = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.csv"))
    path.write_text("prompt,response\nhi,hello\n")
    code, stdout, lines = inspect_cli(str(path), "--model", tiny_llama, env={"PYTHONIOENCODING": "utf-8"},
                                      timeout=60)
    assert code == 0, lines
    result = json.loads(stdout.decode("utf-8"))  # strict: a lone surrogate would fail here
    assert result["source"].endswith("/caf\ufffd.csv") and result["conversations"] == 1
