"""Turn one record (a dict from a JSON line, a CSV row or a datasets row) into a conversation.

Three record shapes are understood, tried in this order:

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}   # "messages"
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}       # "sharegpt"
    {"question": "Hi", "answer": "Hello!"}                                                         # "prompt-response"

    kind, conversation = record_to_conversation(record, where="chats.jsonl:3")
"""

from chattune.data.conversation import Conversation
from chattune.errors import InputError

# Column (or key) pairs recognised without --prompt-column/--response-column, first match wins, case-insensitive.
# instruction/output comes before input/output because Alpaca-style data has all three (see pair_to_conversation).
COLUMN_PAIRS = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "response"),
    ("question", "answer"),
    ("instruction", "output"),
    ("input", "output"),
    ("user", "assistant"),
    ("context", "response"),
)

# OpenAI roles plus the ShareGPT "from" names for them.
ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
}

COLUMN_FLAGS = "name them with --prompt-column NAME --response-column NAME"


def by_lower(names: list[str]) -> dict[str, str]:
    return {name.strip().lower(): name for name in reversed(names)}  # reversed: the first of duplicate names wins


def _match_columns(names: list[str], prompt_column: str | None, response_column: str | None) -> tuple[str, str] | None:
    columns = by_lower(names)
    for prompt_name, response_name in COLUMN_PAIRS:
        prompt = (prompt_column or prompt_name).strip().lower()
        response = (response_column or response_name).strip().lower()
        if prompt in columns and response in columns and prompt != response:
            return columns[prompt], columns[response]
    return None


def find_columns(
    names: list[str], prompt_column: str | None, response_column: str | None, where: str
) -> tuple[str, str]:
    """The (prompt, response) column names as spelled in `names`; an explicit column overrides its side of each pair."""
    for wanted in (prompt_column, response_column):
        if wanted is not None and wanted.strip().lower() not in by_lower(names):
            raise InputError(f"{where}: no column {wanted!r} (columns: {', '.join(names)}); {COLUMN_FLAGS}")
    columns = _match_columns(names, prompt_column, response_column)
    if columns is None:
        pairs = ", ".join(f"{prompt}/{response}" for prompt, response in COLUMN_PAIRS)
        raise InputError(
            f"{where}: no prompt/response columns among: {', '.join(names)} (known pairs: {pairs}); {COLUMN_FLAGS}"
        )
    return columns


class LongInteger(str):
    """The digits of a JSON integer too long for Python's int/str conversion limit, kept as text so that one in a
    key nobody reads does not stop the file; `text_field` refuses it in a turn."""


def text_field(value: object, where: str) -> str:
    """A turn's text: strings as they are, numbers as text (YAML and JSON give `42`), null as empty (dropped later)."""
    if value is None:
        return ""
    if isinstance(value, LongInteger):
        raise InputError(f"{where}: an integer of {len(value):,} digits, not text; give the turn's text as a string")
    if isinstance(value, (str, int, float, bool)):
        return str(value)
    got = f"{type(value).__name__} {str(value)[:60]!r}"
    raise InputError(f"{where}: expected text, got {got}; give the turn's text as a string")


def pair_to_conversation(record: dict, prompt: str, response: str, where: str,
                         columns: dict[str, str] | None = None) -> Conversation:
    """[system?, user, assistant] from one record with a prompt and a response column; `columns` is
    by_lower(record keys), given by readers whose records all share one header."""
    columns = columns if columns is not None else by_lower(list(record))
    user_text = text_field(record[prompt], f"{where}: {prompt}")
    # Alpaca: the "input" column is context for the "instruction"; dropping it would train on half a question.
    input_column = columns.get("input")
    if prompt.strip().lower() == "instruction" and input_column and record[input_column]:
        user_text += "\n\n" + text_field(record[input_column], f"{where}: {input_column}")
    conversation = [
        {"role": "user", "content": user_text},
        {"role": "assistant", "content": text_field(record[response], f"{where}: {response}")},
    ]
    system_column = columns.get("system")
    if system_column and record[system_column]:
        system_text = text_field(record[system_column], f"{where}: {system_column}")
        conversation.insert(0, {"role": "system", "content": system_text})
    return conversation


def _turns(record: dict, key: str, role_key: str, content_key: str, where: str) -> Conversation:
    turns = record[key]
    if not isinstance(turns, list):
        raise InputError(f"{where}: {key!r} should be a list of turns, got {type(turns).__name__}")
    conversation = []
    for index, turn in enumerate(turns):
        field = f"{where}: {key}[{index}]"
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            expected = f"an object with {role_key!r} and {content_key!r}"
            raise InputError(f"{field} should be {expected}, got {str(turn)[:60]!r}")
        name = turn[role_key]
        if not isinstance(name, str) or name.strip().lower() not in ROLE_NAMES:
            raise InputError(f"{field}: unknown role {name!r}; use system, user or assistant (ShareGPT: human, gpt)")
        conversation.append({"role": ROLE_NAMES[name.strip().lower()], "content": text_field(turn[content_key], field)})
    return conversation


def record_to_conversation(
    record: object, where: str, prompt_column: str | None = None, response_column: str | None = None
) -> tuple[str, Conversation]:
    """(kind, conversation), kind "messages", "sharegpt" or "prompt-response"; explicit columns force the last."""
    if not isinstance(record, dict):
        raise InputError(f"{where}: expected a JSON object per record, got {type(record).__name__}")
    if prompt_column is None and response_column is None:
        if "messages" in record:
            return "messages", _turns(record, "messages", "role", "content", where)
        if "conversations" in record:
            return "sharegpt", _turns(record, "conversations", "from", "value", where)
        if _match_columns(list(record), None, None) is None:
            raise InputError(
                f"{where}: expected a \"messages\" list, a \"conversations\" list (ShareGPT) or prompt/response keys, "
                f"got keys: {', '.join(record)}; {COLUMN_FLAGS}"
            )
    prompt, response = find_columns(list(record), prompt_column, response_column, where)
    return "prompt-response", pair_to_conversation(record, prompt, response, where)
