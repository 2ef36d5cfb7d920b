"""Load conversations from any supported source, cleaned, with a report of what happened; write them as JSONL.

    conversations, report = load_conversations("chats.csv")              # or .tsv .jsonl .json .txt .parquet, a folder
    conversations, report = load_conversations("chitchat", limit=500)    # a built-in corpus, its first 500 chats
    write_jsonl(conversations, run_dir / "train.jsonl")                  # {"messages": [...]} per line

Every problem with the input raises InputError with one line that says where and what to do.
"""

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from chattune.data.clean import clean_stream
from chattune.data.conversation import CONSECUTIVE_MESSAGES, MESSAGE_JOINERS, Conversation
from chattune.data.readers.corpora import CORPORA, read_corpus
from chattune.data.readers.csv_reader import read_csv
from chattune.data.readers.hf_reader import read_hf_dataset
from chattune.data.readers.jsonl_reader import read_json_records
from chattune.data.readers.limits import ReadLimits, checked_file, read_error
from chattune.data.readers.transcript_reader import read_transcript, speaker_of
from chattune.data.report import DataReport
from chattune.errors import InputError
from chattune.files import atomic_write_text

CORPUS_NAMES = ", ".join(CORPORA)
SUPPORTED = (
    ".csv, .tsv, .jsonl, .json, .txt ('Speaker: text' lines), .parquet, .arrow, a datasets folder, "
    f"or a corpus name ({CORPUS_NAMES})"
)
SNIFF_BYTES = 4096  # enough to see the first record or speaker line of a file without a known extension


def _sniffed_format(path: Path, limits: ReadLimits) -> str:
    """"json" or "transcript" from the first bytes of a file whose extension says nothing, else InputError."""
    checked_file(path, limits)
    try:
        with path.open("rb") as file:
            head = file.read(SNIFF_BYTES).decode("utf-8-sig", errors="replace").lstrip()
    except OSError as error:
        raise read_error(path, error) from None
    if head.startswith(("{", "[")):
        return "json"
    if speaker_of(head.split("\n", 1)[0]) is not None:
        return "transcript"
    raise InputError(f"{path}: unknown format; use one of: {SUPPORTED}")


def _read(source: str, report: DataReport, prompt_column, response_column, first_speaker,
          limits: ReadLimits, joiner: str) -> Iterator[Conversation]:
    path = Path(source)
    if source in CORPORA and not path.exists():
        return iter(read_corpus(source, report, joiner))
    if not path.exists():
        raise InputError(f"{source}: no such file or directory; give a path or one of the corpora: {CORPUS_NAMES}")
    options = {"prompt_column": prompt_column, "response_column": response_column, "limits": limits}
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".arrow"):
        return read_hf_dataset(path, report, **options)
    if suffix in (".csv", ".tsv"):
        return read_csv(path, report, **options)
    if suffix in (".jsonl", ".json"):
        return read_json_records(path, report, **options)
    if suffix == ".txt" or _sniffed_format(path, limits) == "transcript":
        return read_transcript(path, report, first_speaker=first_speaker, limits=limits, joiner=joiner)
    return read_json_records(path, report, **options)


def _counted(conversations: Iterator[Conversation], report: DataReport) -> Iterator[Conversation]:
    for conversation in conversations:
        report.conversations_read += 1
        yield conversation


def stream_conversations(
    source: str,
    *,
    prompt_column: str | None = None,  # CSV column / record key of the user turn; None: found by name
    response_column: str | None = None,  # CSV column / record key of the assistant turn; None: found by name
    first_speaker: str = "user",  # transcripts: the role of each conversation's first speaker ("user"/"assistant")
    max_turn_chars: int | None = None,  # drop conversations with a longer turn; None: keep all
    limit: int | None = None,  # keep only the first `limit` conversations read, before cleaning; None: all
    limits: ReadLimits = ReadLimits(),  # file and record size limits
    consecutive_messages: str = CONSECUTIVE_MESSAGES,  # consecutive messages of one speaker: "newline" or "space"
) -> tuple[Iterator[Conversation], DataReport]:
    """(cleaned conversations, one at a time, report): memory stays flat however big the source. The report's
    counts are final once the iterator is exhausted; call `check_kept(report)` then."""
    if first_speaker not in ("user", "assistant"):
        raise InputError(f"first_speaker must be 'user' or 'assistant', got {first_speaker!r}")
    if consecutive_messages not in MESSAGE_JOINERS:
        raise InputError(f"consecutive_messages must be one of {', '.join(MESSAGE_JOINERS)}, "
                         f"got {consecutive_messages!r}")
    joiner = MESSAGE_JOINERS[consecutive_messages]
    report = DataReport(format="unknown", source=source)
    read = _read(source, report, prompt_column, response_column, first_speaker, limits, joiner)
    counted = _counted(itertools.islice(read, limit), report)
    return clean_stream(counted, report, max_turn_chars=max_turn_chars, joiner=joiner), report


def check_kept(report: DataReport) -> None:
    """InputError when a source had no conversations, or none left after cleaning."""
    if not report.conversations_read:
        raise InputError(f"{report.source}: no conversations found ({report.format}); check that the file has data")
    if not report.conversations:
        dropped = ", ".join(f"{reason} {count}" for reason, count in report.dropped.items())
        raise InputError(
            f"{report.source}: no conversations left after cleaning (dropped: {dropped}); "
            "each conversation needs a user turn answered by an assistant turn"
        )


def load_conversations(source: str, **options) -> tuple[list[Conversation], DataReport]:
    """(cleaned conversations, report) from a file, folder or corpus name; InputError when none are left. The
    keyword arguments are stream_conversations'."""
    stream, report = stream_conversations(source, **options)
    conversations = list(stream)
    check_kept(report)
    return conversations, report


def write_jsonl(conversations: list[Conversation], path: Path) -> Path:
    """Write `{"messages": [...]}` per line, atomically: a reader never sees half a file, even after a crash."""
    lines = (json.dumps({"messages": conversation}, ensure_ascii=False) + "\n" for conversation in conversations)
    atomic_write_text(Path(path), "".join(lines))
    return Path(path)


def reader_options(cfg) -> dict:
    """The reader keyword arguments a ChatConfig names (columns, first speaker, consecutive messages, size limits),
    for `load_conversations`."""
    return dict(prompt_column=cfg.prompt_column, response_column=cfg.response_column,
                first_speaker=cfg.first_speaker, consecutive_messages=cfg.consecutive_messages,
                limits=ReadLimits(max_file_bytes=cfg.max_file_bytes, max_record_bytes=cfg.max_record_bytes))


def load_chat_split(cfg) -> tuple[list[Conversation], list[Conversation], dict]:
    """(train, eval, report) for a ChatConfig: read, clean, split by conversation (or read `eval_data`), cut the
    eval side to `eval_limit`, add the system prompt. Training and `chattune eval` both call this, so they score
    exactly the same held-out conversations."""
    from chattune.data.conversation import with_system
    from chattune.data.split import split_conversations

    options = reader_options(cfg)
    conversations, data_report = load_conversations(cfg.data, limit=cfg.limit, **options)
    eval_report = None
    if cfg.eval_data is None:
        train, evaluation = split_conversations(conversations, cfg.eval_fraction, cfg.data_split_seed, source=cfg.data)
    else:
        train = conversations
        evaluation, eval_report = load_conversations(cfg.eval_data, **options)
    evaluation = evaluation[: cfg.eval_limit]
    toxic_report = None
    if cfg.max_reply_toxicity is not None:  # the training side only (data/toxic.py says why)
        from chattune.data.toxic import cut_toxic_replies

        train, toxic_report = cut_toxic_replies(train, cfg.max_reply_toxicity)
        if not train:
            raise InputError(f"{cfg.data}: every training conversation's first reply is over "
                             f"max_reply_toxicity={cfg.max_reply_toxicity}; raise it or set it to null")
    train, evaluation = ([with_system(c, cfg.system_prompt) for c in part] for part in (train, evaluation))
    report = {"data": data_report.to_dict(), "eval_data": eval_report.to_dict() if eval_report else None,
              "toxic_replies": toxic_report, "train_conversations": len(train), "eval_conversations": len(evaluation)}
    return train, evaluation, report
