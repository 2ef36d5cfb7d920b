"""Summarisation pairs: the readers (DialogSum-style CSV, SAMSum-style JSONL, transcripts inside a cell, column
flags), cleaning, their errors as one line with exit code 2, and the built-in aclsum corpus."""

import json

import pytest

from chattune.cli import main
from chattune.data.pairs import Pair, prompt_text, read_pairs, read_sources
from chattune.errors import InputError

DIALOGUE = "#Person1#: Hi, Mr. Smith.\n#Person2#: Hello   there.\n#Person1#: Caf\u00c3\u00a9 at ten?"


def write(path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_dialogsum_csv_keeps_the_transcript_lines_and_cleans_them(tmp_path):
    rows = ["id,dialogue,summary,topic", f'd1,"{DIALOGUE}",#Person1# invites Mr. Smith.,coffee',
            'd2,"A: x\nB: y",A and B talk.,chat']
    pairs, report = read_pairs(write(tmp_path / "dialogsum.csv", "\n".join(rows) + "\n"))
    assert pairs[0] == Pair("#Person1#: Hi, Mr. Smith.\n#Person2#: Hello there.\n#Person1#: Café at ten?",
                            "#Person1# invites Mr. Smith.")
    assert pairs[1] == Pair("A: x\nB: y", "A and B talk.")
    assert report.format == "csv" and report.conversations == 2
    assert report.changed == {"whitespace collapsed": 1, "mojibake/unicode fixed": 1}


def test_samsum_jsonl_drops_empty_and_duplicate_pairs(tmp_path):
    records = [{"id": "1", "dialogue": "Amanda: I baked cookies.\nJerry: Sure!", "summary": "Amanda baked cookies."},
               {"id": "2", "dialogue": "Tom: hi", "summary": ""},
               {"id": "3", "dialogue": "Amanda: I baked cookies.\nJerry: Sure!", "summary": "Amanda baked cookies."},
               {"id": "4", "dialogue": None, "summary": "nothing"}]
    path = write(tmp_path / "samsum.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    pairs, report = read_pairs(path)
    assert pairs == [Pair("Amanda: I baked cookies.\nJerry: Sure!", "Amanda baked cookies.")]
    assert report.format == "pairs-jsonl" and report.dropped == {"empty": 2, "duplicate": 1}
    assert report.conversations_read == 4


def test_column_flags_pick_other_columns_any_case(tmp_path):
    path = write(tmp_path / "pairs.tsv", "Notes\tSRC\tTL;DR\nx\tlong text\tshort\n")
    pairs, _ = read_pairs(path, source_column="src", summary_column="tl;dr")
    assert pairs == [Pair("long text", "short")]


def test_source_target_columns_are_found_by_name(tmp_path):
    pairs, _ = read_pairs(write(tmp_path / "p.csv", "Source,Target\nthe text,the gist\n"))
    assert pairs == [Pair("the text", "the gist")]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("no_summary.csv", "dialogue,notes\nA: hi,x\n",
     r"summaries missing: no summary/target/highlights column among: dialogue, notes; name it with "
     r"--set summary_column=NAME"),
    ("empty.csv", "dialogue,summary\n", r"empty\.csv: no rows"),
    ("bad.jsonl", '{"dialogue": "A: hi", "summary": "s"}\n{"dialogue": \n', r"bad\.jsonl:2: not valid JSON"),
    ("blank.jsonl", '{"dialogue": " ", "summary": "s"}\n', r"no pairs left after cleaning \(dropped: empty 1\)"),
    ("missing_key.jsonl", '{"dialogue": "A: hi", "summary": "s"}\n{"dialogue": "B"}\n',
     r"missing_key\.jsonl:2: no 'summary' field \(fields: dialogue\)"),
])
def test_bad_input_is_one_line_exit_2_naming_the_place(tmp_path, capsys, name, text, message):
    path = write(tmp_path / name, text)
    with pytest.raises(InputError, match=message):
        read_pairs(path)
    run = tmp_path / "run"
    assert main(["train", "--set", "task=summarize", "--data", path, "--output", str(run)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and name in error
    assert not run.exists()  # a failed start leaves no run folder


def test_wrong_column_flag_lists_the_columns(tmp_path):
    with pytest.raises(InputError, match=r"no column 'text' \(columns: dialogue, summary\); fix --set source_column"):
        read_pairs(write(tmp_path / "p.csv", "dialogue,summary\na,b\n"), source_column="text")


def test_read_sources_txt_blocks_and_jsonl_without_summaries(tmp_path):
    text = write(tmp_path / "d.txt", "#Person1#: hi\n#Person2#: hello\n\n\nAlice: bye\r\nBob: see you\n")
    assert read_sources(text) == [Pair("#Person1#: hi\n#Person2#: hello", ""), Pair("Alice: bye\nBob: see you", "")]
    rows = write(tmp_path / "d.jsonl", '{"dialogue": "A: x"}\n{"dialogue": "B: y"}\n')
    assert [pair.source for pair in read_sources(rows)] == ["A: x", "B: y"]
    with pytest.raises(InputError, match="no text to summarise"):
        read_sources(write(tmp_path / "empty.txt", "\n \n"))


def test_prompts_of_each_model_family():
    pair = Pair("A: hi\nB: hey", "They greet.", None)
    assert prompt_text(pair, "Summarize.") == "Summarize.\n\nA: hi\nB: hey"
    assert prompt_text(pair, "Summarize.", "t5") == "summarize: A: hi\nB: hey"
    assert prompt_text(pair, "Summarize.", "bart") == "A: hi\nB: hey"
    aspect = Pair("abstract", "They propose X.", "Summarize the approach.")
    assert prompt_text(aspect, "Summarize.") == "Summarize the approach.\n\nabstract"
    assert prompt_text(aspect, "Summarize.", "t5") == "summarize: Summarize the approach.\nabstract"


def test_aclsum_splits_and_one_record():
    counts = {split: len(read_pairs(f"aclsum:{split}")[0]) for split in ("train", "val", "test")}
    assert counts == {"train": 300, "val": 150, "test": 300}  # 100 / 50 / 100 papers x 3 aspects
    assert len(read_pairs("aclsum")[0]) == 300  # the bare name is the train split
    first = read_pairs("aclsum:val")[0][0]
    assert first.instruction.startswith("Summarize the challenge of this paper")
    assert first.source.startswith("Identifying named entities in written text is an essential component")
    assert first.source.count("\n") == 6  # the abstract's 7 sentences, one per line
    assert first.summary == ("The current experimental setup and evaluation for named entity recognition systems run "
                             "on complete sentences limiting the real-time applications that process texts as being "
                             "typed.")
