"""Each reader on small fixture files written here, through the public entry point load_conversations."""

import json
from pathlib import Path

import pytest

from chattune.data import load_conversations, write_jsonl
from chattune.data.readers.corpora import read_corpus
from chattune.data.readers.transcript_reader import read_transcript
from chattune.data.report import DataReport
from chattune.errors import InputError


def pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return str(path)


# --- CSV / TSV ---------------------------------------------------------------------------------------------------


def test_csv_comma_with_quoted_multiline_field(tmp_path):
    source = write(tmp_path / "chats.csv", 'prompt,response\nHi,Hello!\n"Two\nlines, with comma",ok\n')
    conversations, report = load_conversations(source)
    assert conversations == [pair("Hi", "Hello!"), pair("Two\nlines, with comma", "ok")]
    assert (report.format, report.conversations_read, report.conversations, report.turns) == ("csv", 2, 2, 4)


def test_csv_semicolon_and_mixed_case_question_response(tmp_path):
    source = write(tmp_path / "export.csv", "Question;Response\nHi, you;Hello, me\nWhy?;Because.\n")
    conversations, _ = load_conversations(source)
    assert conversations == [pair("Hi, you", "Hello, me"), pair("Why?", "Because.")]


def test_tsv_with_bom_and_system_column(tmp_path):
    source = write(tmp_path / "chats.tsv", "\ufeffINPUT\tOutput\tSystem\nhi, there\tyo; ok\tBe brief.\n")
    conversations, report = load_conversations(source)
    assert report.format == "tsv"
    assert conversations == [[{"role": "system", "content": "Be brief."}] + pair("hi, there", "yo; ok")]


def test_csv_cp1252_fallback_warns(tmp_path):
    source = write(tmp_path / "excel.csv", "question,answer\nUn caf\xe9?,Oui \u201cmerci\u201d\n", encoding="cp1252")
    conversations, report = load_conversations(source)
    assert conversations == [pair("Un café?", "Oui \u201cmerci\u201d")]
    assert report.warnings == [
        f"{source}:2: byte 0xe9 at offset 22 is not UTF-8; read the file as cp1252 (Windows Latin-1) instead"
    ]


def test_csv_explicit_columns(tmp_path):
    source = write(tmp_path / "chats.csv", "id,q,a,prompt,response\n1,asked,answered,ignored,ignored\n")
    conversations, _ = load_conversations(source, prompt_column="Q", response_column="a")
    assert conversations == [pair("asked", "answered")]


def test_csv_instruction_input_output_joins_input(tmp_path):
    source = write(tmp_path / "alpaca.csv", "instruction,input,output\nTranslate,chat,Katze\nSay hi,,hi\n")
    conversations, _ = load_conversations(source)
    assert conversations == [pair("Translate\n\nchat", "Katze"), pair("Say hi", "hi")]


def test_csv_wrong_columns_lists_columns_and_flags(tmp_path):
    source = write(tmp_path / "chats.csv", "foo,bar\nx,y\n")
    with pytest.raises(InputError, match=r"chats\.csv: no prompt/response columns among: foo, bar .*--prompt-column"):
        load_conversations(source)


def test_csv_missing_named_column(tmp_path):
    source = write(tmp_path / "chats.csv", "prompt,response\nx,y\n")
    expected = r"chats\.csv: no column 'reply' \(columns: prompt, response\); .*--response-column"
    with pytest.raises(InputError, match=expected):
        load_conversations(source, response_column="reply")


def test_csv_short_row_names_line(tmp_path):
    source = write(tmp_path / "chats.csv", "prompt,response\nx,y\njust one field\n")
    with pytest.raises(InputError, match=r"chats\.csv:3: row has 1 fields"):
        load_conversations(source)


def test_csv_neither_utf8_nor_cp1252(tmp_path):
    source = tmp_path / "bad.csv"
    source.write_bytes(b"prompt,response\nx\xe9,\x81\n")
    with pytest.raises(InputError, match=r"bad\.csv:2: byte 0x81 at offset 19 is neither UTF-8 nor cp1252"):
        load_conversations(str(source))


# --- JSON Lines / JSON -------------------------------------------------------------------------------------------


def jsonl(path, records) -> str:
    return write(path, "".join(json.dumps(record) + "\n" for record in records))


def test_messages_jsonl(tmp_path):
    system = {"role": "system", "content": "Be kind."}
    records = [{"messages": [system] + pair("Hi", "Hello")}, {"messages": pair("a", "b") + pair("c", "d")}]
    conversations, report = load_conversations(jsonl(tmp_path / "chats.jsonl", records))
    assert conversations == [record["messages"] for record in records]
    assert (report.format, report.conversations, report.turns) == ("messages-jsonl", 2, 7)


def test_sharegpt_json_list(tmp_path):
    turns = [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]
    other_names = [{"from": "user", "value": "Q2"}, {"from": "bot", "value": "A2"}]
    records = [{"id": 7, "conversations": turns}, {"conversations": other_names}]
    conversations, report = load_conversations(write(tmp_path / "share.json", json.dumps(records)))
    assert conversations == [[{"role": "system", "content": "S"}] + pair("Q", "A"), pair("Q2", "A2")]
    assert report.format == "sharegpt-json"


def test_json_object_holding_a_list_of_prompt_completion(tmp_path):
    document = {"version": 1, "data": [{"prompt": "2+2?", "completion": 4}]}
    conversations, report = load_conversations(write(tmp_path / "data.json", json.dumps(document)))
    assert conversations == [pair("2+2?", "4")]
    assert report.format == "prompt-response-json"


def test_json_extension_holding_json_lines(tmp_path):
    conversations, report = load_conversations(jsonl(tmp_path / "lines.json", [{"messages": pair("a", "b")}] * 2))
    assert conversations == [pair("a", "b")]  # the second is a duplicate
    assert (report.format, report.dropped) == ("messages-jsonl", {"duplicate": 1})


def test_malformed_jsonl_line(tmp_path):
    source = write(tmp_path / "chats.jsonl", '{"messages": []}\n\n{"messages": [}\n')
    with pytest.raises(InputError, match=r"chats\.jsonl:3: not valid JSON \(Expecting value: line 1 column 15"):
        load_conversations(source)


def test_unknown_role(tmp_path):
    source = jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "tool", "content": "x"}]}])
    expected = r"chats\.jsonl:1: messages\[0\]: unknown role 'tool'; use system, user or assistant"
    with pytest.raises(InputError, match=expected):
        load_conversations(source)


def test_record_without_known_keys(tmp_path):
    source = jsonl(tmp_path / "chats.jsonl", [{"text": "x"}])
    expected = r'chats\.jsonl:1: expected a "messages" list.* got keys: text; .*--prompt-column'
    with pytest.raises(InputError, match=expected):
        load_conversations(source)


def test_jsonl_not_utf8(tmp_path):
    source = tmp_path / "chats.jsonl"
    source.write_bytes(b'{"messages": []}\n{"prompt": "caf\xe9"}\n')
    expected = r"chats\.jsonl:2: byte 0xe9 at offset 32 is not UTF-8; re-save the file as UTF-8"
    with pytest.raises(InputError, match=expected):
        load_conversations(str(source))


def test_write_jsonl_round_trips(tmp_path):
    conversations = [pair("héllo", "wörld"), [{"role": "system", "content": "s"}] + pair("a", "b\nc")]
    path = write_jsonl(conversations, tmp_path / "out" / "train.jsonl")
    assert load_conversations(str(path))[0] == conversations
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp file left behind


# --- transcripts -------------------------------------------------------------------------------------------------

TRANSCRIPT = """\
#Person1#: Hi, how are you?
#Person2#: Fine, thanks.
#Person2#: And you?
#Person1#: Good.
See you at 10:30.

Person 1: Ping
Person 2: Pong

Customer: My printer is broken.
Agent: Did you plug it in?
"""


def test_transcript_speakers_merges_and_continuations(tmp_path):
    conversations, report = load_conversations(write(tmp_path / "dialogs.txt", TRANSCRIPT))
    assert conversations == [
        pair("Hi, how are you?", "Fine, thanks. And you?"),  # the trailing user turn answers nothing: dropped
        pair("Ping", "Pong"),
        pair("My printer is broken.", "Did you plug it in?"),
    ]
    assert report.format == "transcript"
    assert report.dropped == {"trailing user turn": 1}


def test_transcript_first_speaker_assistant(tmp_path):
    source = write(tmp_path / "support.txt", "Agent: How can I help?\nAlice: Reset my password.\nAgent: Done.\n")
    conversations, _ = load_conversations(source, first_speaker="assistant")
    assert conversations == [pair("Reset my password.", "Done.")]  # the opening greeting answers nobody: dropped


def test_transcript_reader_keeps_raw_turns(tmp_path):
    conversations = list(read_transcript(Path(write(tmp_path / "t.txt", TRANSCRIPT)), DataReport("", "")))
    assert conversations[0][-1] == {"role": "user", "content": "Good.\nSee you at 10:30."}
    assert [len(conversation) for conversation in conversations] == [3, 2, 2]


def test_transcript_third_speaker(tmp_path):
    source = write(tmp_path / "t.txt", "Alice: hi\nBob: hey\nCarol: me too\n")
    with pytest.raises(InputError, match=r"t\.txt:3: third speaker 'Carol' in one conversation"):
        load_conversations(source)


def test_transcript_block_starting_without_speaker(tmp_path):
    source = write(tmp_path / "t.txt", "Alice: hi\nBob: hey\n\njust text\n")
    with pytest.raises(InputError, match=r"t\.txt:4: a conversation must start with a 'Speaker: text' line"):
        load_conversations(source)


def test_file_without_extension_is_sniffed(tmp_path):
    conversations, report = load_conversations(write(tmp_path / "chatlog", "A: hi\nB: hello\n"))
    assert (conversations, report.format) == ([pair("hi", "hello")], "transcript")
    records = [{"messages": pair("x", "y")}, {"messages": pair("z", "w")}]
    conversations, report = load_conversations(jsonl(tmp_path / "records", records))
    assert (conversations, report.format) == ([pair("x", "y"), pair("z", "w")], "messages-jsonl")


# --- datasets (parquet / save_to_disk) ---------------------------------------------------------------------------


def test_parquet_and_saved_dataset(tmp_path):
    import datasets

    rows = [{"question": "Q1", "answer": "A1"}, {"question": "Q2", "answer": None}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    conversations, report = load_conversations(str(tmp_path / "pairs.parquet"))
    assert conversations == [pair("Q1", "A1")]
    assert (report.format, report.dropped) == ("prompt-response-hf", {"empty turn": 1, "no assistant turn": 1})

    datasets.Dataset.from_list([{"messages": pair("hi", "yo")}]).save_to_disk(str(tmp_path / "saved"))
    conversations, report = load_conversations(str(tmp_path / "saved"))
    assert (conversations, report.format) == ([pair("hi", "yo")], "messages-hf")


# --- corpora -----------------------------------------------------------------------------------------------------


def test_chitchat_reads_every_conversation_in_file_order():
    conversations = read_corpus("chitchat", DataReport("", "chitchat"))
    assert len(conversations) == 7168
    assert conversations[0][0] == {"role": "user", "content": "Hello How are you doing today?"}
    assert conversations[0][1]["content"] == "whats up MD im doing good how are you doing?"
    lines = read_corpus("chitchat", DataReport("", "chitchat"), joiner="\n")
    assert lines[0][1]["content"] == "whats up MD\nim doing good\nhow are you doing?"


def test_chitchat_limit_roles_alternate():
    conversations, report = load_conversations("chitchat", limit=200)
    assert report.conversations_read == 200
    assert 0 < report.conversations == len(conversations) < 200  # one-sided chats have no assistant turn
    for conversation in conversations:
        roles = [turn["role"] for turn in conversation]
        assert roles == ["user", "assistant"] * (len(roles) // 2)


def test_chatterbot_loads():
    conversations, report = load_conversations("chatterbot")
    assert report.conversations_read == 2026
    assert report.conversations == len(conversations) > 800
    assert report.dropped["duplicate"] > 0  # tech_support.yml repeats the same pair ~100 times
    assert conversations[0] == pair(
        "What is AI?",
        "Artificial Intelligence is the branch of engineering and science devoted to constructing machines that think.",
    )


# --- errors from dispatch ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.csv")
    expected = r"nope\.csv: no such file or directory; give a path or one of the corpora: chitchat, chatterbot"
    with pytest.raises(InputError, match=expected):
        load_conversations(missing)


def test_unknown_format(tmp_path):
    source = write(tmp_path / "notes.md", "# Title\n\nsome text\n")
    with pytest.raises(InputError, match=r"notes\.md: unknown format; use one of: \.csv, \.tsv, \.jsonl"):
        load_conversations(source)


def test_empty_after_cleaning(tmp_path):
    source = write(tmp_path / "chats.csv", "prompt,response\nhello,\n   ,\x00\n")
    expected = r"chats\.csv: no conversations left after cleaning \(dropped: empty turn 3, no assistant turn 2\)"
    with pytest.raises(InputError, match=expected):
        load_conversations(source)


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match=r"empty\.jsonl: no conversations found"):
        load_conversations(write(tmp_path / "empty.jsonl", "\n"))
