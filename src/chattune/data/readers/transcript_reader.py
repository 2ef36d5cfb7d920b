"""Read a plain-text transcript: one `Speaker: utterance` per line, a blank line between conversations.

    #Person1#: Hi, how are you?
    #Person2#: Fine, thanks.
    And you?

    conversations = read_transcript(Path("dialogs.txt"), report)                 # Person1 -> user, Person2 -> assistant
    conversations = read_transcript(Path("support.txt"), report, first_speaker="assistant")   # the agent speaks first

Speakers may be written `Person1:`, `#Person1#:`, `Person 1:` or a name of up to three words (`Alice:`, `Dr. Who:`);
the colon must be followed by a space or the end of the line, so `http://...` and `10:30` are not speakers.
A line without a speaker continues the utterance above it (with a newline); consecutive `Speaker:` lines of one speaker
are one turn, their messages joined with `joiner` (the config's consecutive_messages: a space by default).
Each conversation must have exactly one or two speakers: a third one is reported with its line, because it usually
means a missing blank line between conversations or a continuation line that happens to look like `Word: ...`.
"""

import re
from collections.abc import Iterator
from pathlib import Path

from chattune.data.conversation import DEFAULT_JOINER, Conversation, append_turn
from chattune.data.readers.limits import ReadLimits, bounded_lines, open_checked
from chattune.data.readers.text import text_encoding
from chattune.data.report import DataReport
from chattune.errors import InputError

SPEAKER_LINE = re.compile(r"#?(?P<speaker>[^\W\d_][\w.'-]*(?: [\w.'-]+){0,2}?)#?\s*:(?:\s+|$)(?P<text>.*)", re.DOTALL)


def speaker_of(line: str) -> tuple[str, str] | None:
    """(speaker, text) for a `Speaker: text` line, else None."""
    match = SPEAKER_LINE.fullmatch(line.strip())
    return None if match is None else (match["speaker"], match["text"])


def _speaker_key(speaker: str) -> str:
    return re.sub(r"\s", "", speaker).lower()  # "Person 1", "person1" and "#Person1#" are one speaker


def _conversation(path: Path, lines: list[tuple[int, str]], first_speaker: str, joiner: str) -> Conversation:
    other_role = "assistant" if first_speaker == "user" else "user"
    roles: dict[str, str] = {}  # speaker key -> role, in order of appearance
    conversation: Conversation = []
    for line_number, line in lines:
        spoken = speaker_of(line)
        if spoken is None:
            if not conversation:
                raise InputError(f"{path}:{line_number}: a conversation must start with a 'Speaker: text' line")
            conversation[-1]["content"] += "\n" + line.strip()
            continue
        speaker, text = spoken
        key = _speaker_key(speaker)
        if key not in roles:
            if len(roles) == 2:
                raise InputError(
                    f"{path}:{line_number}: third speaker {speaker!r} in one conversation (two are allowed); "
                    "put a blank line between conversations"
                )
            roles[key] = other_role if roles else first_speaker
        append_turn(conversation, roles[key], text.strip(), joiner)
    return conversation


def read_transcript(path: Path, report: DataReport, *, first_speaker: str = "user",
                    limits: ReadLimits = ReadLimits(), joiner: str = DEFAULT_JOINER) -> Iterator[Conversation]:
    """One conversation per blank-line-separated block, read block by block; the first speaker of each block gets
    `first_speaker`'s role."""
    report.format = "transcript"
    block: list[tuple[int, str]] = []
    with open_checked(path, limits, text_encoding(path, limits)) as file:
        for line_number, line in bounded_lines(file, path, limits):
            line = line.rstrip("\r\n")
            if line.strip():
                block.append((line_number, line))
            elif block:
                yield _conversation(path, block, first_speaker, joiner)
                block = []
    if block:
        yield _conversation(path, block, first_speaker, joiner)
