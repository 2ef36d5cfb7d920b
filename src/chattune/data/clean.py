"""Clean conversations: repair text, drop what cannot be trained on, count everything in the report.

    kept = clean_conversations(conversations, report, max_turn_chars=4000)

Per turn, in this order (each counted in report.changed when it changed the turn):
  1. line breaks \\r\\n, \\r, U+2028/2029 -> \\n                         ("whitespace collapsed")
  2. ftfy: mojibake ("cafÃ©" -> "café"), HTML entities, terminal escapes, NFC   ("mojibake/unicode fixed")
  3. control characters other than \\n and \\t removed, and U+FEFF     ("control characters removed")
  4. runs of spaces/tabs inside a line -> one space, trailing spaces cut, 3+ newlines -> 2, strip
                                                                     ("whitespace collapsed")
     Leading indentation of a line is kept: chat data holds code (chatterbot's coding.yml).
Per conversation, then:
  - empty turns dropped ("empty turn"); same-role neighbours merged with "\\n", or the `joiner` given
    ("same-role turns merged")
  - leading assistant turns dropped ("leading assistant turn"): chat templates and the loss expect the user to
    speak first, and a greeting with no prompt teaches nothing; trailing user turns dropped ("trailing user turn"):
    they carry no loss and would make eval prompts with no reference answer
  - cut to `max_turns` turns ("turns over max_turns"), conversation dropped when a turn is longer than
    `max_turn_chars` ("too long"), when all its text is shorter than `min_chars` ("too short"), when no assistant
    turn is left ("no assistant turn"), or when it repeats an earlier conversation exactly ("duplicate")
"""

import hashlib
import re
from collections.abc import Iterable, Iterator

import ftfy

from chattune.data.conversation import DEFAULT_JOINER, Conversation, append_turn
from chattune.data.report import DataReport

# Curly quotes and full-width letters are correct text, not damage: keep them (ftfy's defaults would change them).
# Control characters are removed in our own step so that they are counted under their own name.
FTFY_CONFIG = ftfy.TextFixerConfig(
    uncurl_quotes=False, fix_character_width=False, remove_control_chars=False, explain=False
)
LINE_BREAKS = re.compile(r"\r\n?|[\u2028\u2029]")
CONTROL_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")  # Unicode category Cc except \t \n, and the BOM
INNER_SPACES = re.compile(r"(?<=\S)[^\S\n]+")  # after a non-space: leading indentation is left alone
TRAILING_SPACES = re.compile(r"[^\S\n]+(?=\n)")
BLANK_LINES = re.compile(r"\n{3,}")


def _collapse_spaces(text: str) -> str:
    """Step 4. Each regex runs only where it can match: a plain substring test is ~20x cheaper than a scan with
    look-arounds, and most turns of real logs need none of them. In ASCII
    text the whitespace left after steps 1-3 is only space, tab and newline, so the tests are exact there."""
    if not text.isascii() or "  " in text or "\t" in text:
        text = INNER_SPACES.sub(" ", text)
    if not text.isascii() or " \n" in text or "\t\n" in text:
        text = TRAILING_SPACES.sub("", text)
    if "\n\n\n" in text:
        text = BLANK_LINES.sub("\n\n", text)
    return text.strip()


def clean_text(text: str, report: DataReport) -> str:
    """The repaired text of one turn; see the module docstring for the steps."""
    needs_breaks = "\r" in text or not text.isascii()  # U+2028/2029 are not ASCII
    fixed = LINE_BREAKS.sub("\n", text) if needs_breaks else text
    # In ASCII text ftfy only fixes HTML entities and terminal escapes; skipping the rest makes chitchat ~5x faster.
    needs_ftfy = not fixed.isascii() or "&" in fixed or "\x1b" in fixed
    repaired = ftfy.fix_text(fixed, FTFY_CONFIG) if needs_ftfy else fixed
    if repaired != fixed:
        report.change("mojibake/unicode fixed")
    no_controls = repaired if repaired.isprintable() else CONTROL_CHARS.sub("", repaired)
    if no_controls != repaired:
        report.change("control characters removed")
    collapsed = _collapse_spaces(no_controls)
    if collapsed != no_controls or fixed != text:
        report.change("whitespace collapsed")
    return collapsed


def _repair_turns(conversation: Conversation, report: DataReport, joiner: str) -> Conversation:
    """Repaired turns, empty ones dropped, same-role neighbours merged."""
    repaired: Conversation = []
    for turn in conversation:
        content = clean_text(turn["content"], report)
        if not content:
            report.drop("empty turn")
        elif repaired and repaired[-1]["role"] == turn["role"]:
            report.change("same-role turns merged")
            append_turn(repaired, turn["role"], content, joiner)
        else:
            repaired.append({"role": turn["role"], "content": content})
    return repaired


def _drop_reason(conversation: Conversation, min_chars: int, max_turn_chars: int | None) -> str | None:
    roles = [turn["role"] for turn in conversation]
    if not any(first == "user" and second == "assistant" for first, second in zip(roles, roles[1:])):
        return "no assistant turn"  # none that answers a user turn
    if max_turn_chars is not None and any(len(turn["content"]) > max_turn_chars for turn in conversation):
        return "too long"
    if sum(len(turn["content"]) for turn in conversation) < min_chars:
        return "too short"
    return None


def _trim(conversation: Conversation, report: DataReport) -> Conversation:
    """Without leading assistant turns (after the system turn) and trailing user turns; see the module docstring."""
    start = 1 if conversation[0]["role"] == "system" else 0
    leading = next(index for index in range(start, len(conversation)) if conversation[index]["role"] == "user") - start
    end = max(index for index, turn in enumerate(conversation) if turn["role"] == "assistant") + 1
    if leading:
        report.drop("leading assistant turn", leading)
    if end < len(conversation):
        report.drop("trailing user turn", len(conversation) - end)
    return conversation[:start] + conversation[start + leading : end]


def _fingerprint(conversation: Conversation) -> bytes:
    """16 bytes that stand for the whole conversation: duplicates are found without keeping every text twice
    (a million conversations cost ~100 MB of digests instead of a second copy of the data)."""
    text = "\x1f".join(f"{turn['role']}\x1e{turn['content']}" for turn in conversation)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def clean_stream(
    conversations: Iterable[Conversation],
    report: DataReport,
    *,
    min_chars: int = 1,  # a conversation with fewer characters in all its turns together is dropped ("too short")
    max_turn_chars: int | None = None,  # a conversation with a longer turn is dropped ("too long"); None: no limit
    max_turns: int | None = None,  # conversations are cut to their first max_turns turns; None: no limit
    joiner: str = DEFAULT_JOINER,  # joins same-role neighbours (one speaker's consecutive messages) into one turn
) -> Iterator[Conversation]:
    """The conversations worth training on, cleaned, one at a time; counts report.conversations and report.turns
    as they pass."""
    seen: set[bytes] = set()
    for conversation in conversations:
        if max_turns is not None and len(conversation) > max_turns:
            report.drop("turns over max_turns", len(conversation) - max_turns)
            conversation = conversation[:max_turns]
        cleaned = _repair_turns(conversation, report, joiner)
        reason = _drop_reason(cleaned, min_chars, max_turn_chars)
        if reason is None:
            cleaned = _trim(cleaned, report)
            key = _fingerprint(cleaned)
            if key in seen:
                reason = "duplicate"
        if reason is not None:
            report.drop(reason)
            continue
        seen.add(key)
        report.conversations += 1
        report.turns += len(cleaned)
        yield cleaned


def clean_conversations(conversations: Iterable[Conversation], report: DataReport, **limits) -> list[Conversation]:
    """The conversations worth training on, cleaned (see clean_stream for the keyword arguments)."""
    report.conversations = report.turns = 0
    return list(clean_stream(conversations, report, **limits))
