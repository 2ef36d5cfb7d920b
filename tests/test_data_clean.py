"""clean_conversations: text repairs and drops, each counted in the report."""

from chattune.data import DataReport, clean_conversations


def pair(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def clean(conversations, **limits):
    report = DataReport(format="test", source="test")
    return clean_conversations(conversations, report, **limits), report


def test_mojibake_repaired():
    kept, report = clean([pair("cafÃ©?", "Ã¼ber &amp; more")])
    assert kept == [pair("café?", "über & more")]
    assert report.changed == {"mojibake/unicode fixed": 2}


def test_nfc_and_curly_quotes_kept():
    kept, report = clean([pair("cafe\u0301", "\u201cquoted\u201d")])
    assert kept == [pair("caf\u00e9", "\u201cquoted\u201d")]  # NFC composes; curly quotes are text, not damage
    assert report.changed == {"mojibake/unicode fixed": 1}


def test_whitespace_collapsed_indentation_kept():
    text = "  Hello   there\t\tyou  \r\n\n\n\nnext\n    indented  code\n"
    kept, report = clean([pair(text, "ok")])
    assert kept[0][0]["content"] == "Hello there you\n\nnext\n    indented code"
    assert report.changed == {"whitespace collapsed": 1}


def test_control_characters_removed():
    kept, report = clean([pair("bell\x07 and\x00 nul", "\ufeffbom\x7f")])
    assert kept == [pair("bell and nul", "bom")]
    assert report.changed == {"control characters removed": 2}


def test_terminal_escapes_removed_in_ascii_too():
    kept, report = clean([pair("\x1b[1mbold\x1b[0m", "caf\u00e9 \x1b[0m")])
    assert kept == [pair("bold", "caf\u00e9")]
    assert report.changed == {"mojibake/unicode fixed": 2, "whitespace collapsed": 1}


def test_duplicates_dropped_after_cleaning():
    kept, report = clean([pair("Hi", "Hello"), pair(" Hi ", "Hello"), pair("Hi", "Hello there")])
    assert kept == [pair("Hi", "Hello"), pair("Hi", "Hello there")]
    assert report.dropped == {"duplicate": 1}
    assert (report.conversations, report.turns) == (2, 4)


def test_no_assistant_turn_dropped():
    only_user = [{"role": "user", "content": "anyone?"}]
    empty_reply = pair("question", "   ")
    only_assistant = [{"role": "assistant", "content": "Welcome!"}]
    kept, report = clean([only_user, empty_reply, only_assistant, pair("q", "a")])
    assert kept == [pair("q", "a")]
    assert report.dropped == {"no assistant turn": 3, "empty turn": 1}


def test_empty_turns_dropped_and_neighbours_merged():
    conversation = pair("one", "") + pair("two", "answer")
    kept, report = clean([conversation])
    assert kept == [pair("one two", "answer")]  # one speaker's messages: one paragraph, as consecutive_messages
    assert report.dropped == {"empty turn": 1}
    assert report.changed == {"same-role turns merged": 1}


def test_leading_assistant_and_trailing_user_turns_dropped_system_kept():
    system = {"role": "system", "content": "Be brief."}
    conversation = [system, {"role": "assistant", "content": "Hi, I am a bot."}] + pair("q", "a") + [
        {"role": "user", "content": "thanks"}
    ]
    kept, report = clean([conversation])
    assert kept == [[system] + pair("q", "a")]
    assert report.dropped == {"leading assistant turn": 1, "trailing user turn": 1}


def test_length_limits():
    conversations = [pair("short", "fine"), pair("q", "x" * 50), pair("a", "b"), pair("one", "two") + pair("3", "4")]
    kept, report = clean(conversations, min_chars=3, max_turn_chars=20, max_turns=2)
    assert kept == [pair("short", "fine"), pair("one", "two")]
    assert report.dropped == {"too long": 1, "too short": 1, "turns over max_turns": 2}


def test_input_is_not_modified():
    conversation = pair("  spaced  ", "ok")
    clean([conversation])
    assert conversation == pair("  spaced  ", "ok")
