"""`chattune data inspect` at scale: exact counts over every row, token statistics from a seeded sample."""

from __future__ import annotations

import json
import time

from chattune.cli import main
from chattune.data.clean import BLANK_LINES, INNER_SPACES, TRAILING_SPACES, _collapse_spaces
from chattune.data.inspect import reservoir_sample

ROWS = 200_000


def support_log(path, rows: int) -> str:
    """Every 10th row repeats the row before it; every 1,000th (i % 1000 == 500) has an empty reply."""
    lines = ["prompt,response\n"]
    for i in range(rows):
        source = i - 1 if i % 10 == 9 else i
        reply = "" if i % 1000 == 500 else f"answer {source}: reset it in settings, then log in again"
        lines.append(f"question {source} about my account password,{reply}\n")
    path.write_text("".join(lines))
    return str(path)


def inspect_json(capsys, *args) -> dict:
    assert main(["data", "inspect", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_200k_rows_exact_counts_in_bounded_time(tmp_path, capsys, tiny_llama):
    path = support_log(tmp_path / "support.csv", ROWS)
    started = time.perf_counter()
    result = inspect_json(capsys, path, "--model", tiny_llama)
    seconds = time.perf_counter() - started
    assert seconds < 60, f"{seconds:.1f} s"  # ~10 s on 2 busy cores
    duplicates, empty = ROWS // 10, ROWS // 1000
    assert result["conversations_read"] == ROWS
    assert result["dropped"] == {"duplicate": duplicates, "empty turn": empty, "no assistant turn": empty}
    assert result["conversations"] == ROWS - duplicates - empty
    assert result["turns"] == 2 * result["conversations"]
    assert result["token_sample"] == {"conversations": 2000, "of": result["conversations"], "seed": 0, "full": False}
    assert result["tokens"]["conversations"] == 2000


def test_sample_is_seeded_and_full_reads_every_conversation(tmp_path, capsys, tiny_llama):
    path = support_log(tmp_path / "support.csv", 3000)
    first = inspect_json(capsys, path, "--model", tiny_llama, "--sample", "100")
    again = inspect_json(capsys, path, "--model", tiny_llama, "--sample", "100")
    other = inspect_json(capsys, path, "--model", tiny_llama, "--sample", "100", "--seed", "1")
    assert first["tokens"] == again["tokens"] and first["tokens"] != other["tokens"]
    assert (first["token_sample"]["seed"], other["token_sample"]["seed"]) == (0, 1)
    full = inspect_json(capsys, path, "--model", tiny_llama, "--full")
    kept = full["conversations"]
    assert full["token_sample"] == {"conversations": kept, "of": kept, "seed": None, "full": True}
    assert full["tokens"]["conversations"] == kept
    assert main(["data", "inspect", path, "--model", tiny_llama, "--sample", "50"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the terminal width
    assert "random sample of 50 of 2697 conversations (seed 0; --full for all)" in text


def test_reservoir_sample_is_uniform_and_keeps_the_first():
    counts = [0] * 10
    for seed in range(2000):
        sample, first = reservoir_sample(range(10), 3, seed)
        assert first == 0 and len(set(sample)) == 3
        for item in sample:
            counts[item] += 1
    assert all(abs(count - 600) < 90 for count in counts), counts  # each item in 3/10 of the samples


def test_space_collapsing_shortcuts_equal_the_regexes():
    """The substring tests that skip a regex (clean._collapse_spaces) change no result."""
    import itertools

    for pieces in itertools.product(["a", " ", "\t", "\n", "é", "\u00a0"], repeat=5):
        text = "".join(pieces)
        expected = BLANK_LINES.sub("\n\n", TRAILING_SPACES.sub("", INNER_SPACES.sub(" ", text))).strip()
        assert _collapse_spaces(text) == expected, repr(text)
