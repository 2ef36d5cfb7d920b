"""Read (source, summary) pairs for summarisation, and turn a pair into what a model reads.

    pairs, report = read_pairs("dialogsum.csv")                   # dialogue/summary columns found by name
    pairs, report = read_pairs("samsum.jsonl", source_column="dialogue", summary_column="summary")
    pairs, report = read_pairs("aclsum")                          # the built-in corpus; "aclsum:test" its test split
    sources = read_sources("dialogues.txt")                       # to summarise: one per blank-line-separated block
    train, evaluation, report = load_pairs_split(cfg)             # a SummarizeConfig
    prompt_text(pair, "Summarize the dialogue.", "t5")            # "summarize: #Person1#: Hi ..." (T5's prefix)

CSV/TSV, JSONL/JSON and parquet/arrow/datasets folders are read by the chat readers (data/readers), as for
classification; only the columns differ. A source may be a `#Person1#: ...` transcript: both texts are repaired by
the chat cleaning code (data/clean.py: mojibake, control characters, whitespace) and keep their lines. Pairs with an
empty side are dropped ("empty"), exact repeats too ("duplicate"); pairs too long for the model are dropped when
they are tokenized (train/summarize.py, "too long" in the run's data report).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from chattune.data.clean import clean_text
from chattune.data.conversation import Conversation
from chattune.data.readers.corpora import ACLSUM_SPLITS, SUMMARY_CORPUS, read_aclsum
from chattune.data.readers.rows import file_records, find_column
from chattune.data.readers.text import read_utf8
from chattune.data.report import DataReport
from chattune.data.split import split_conversations
from chattune.errors import InputError

# Column names recognised without source_column/summary_column, first match wins, case-insensitive: DialogSum and
# SAMSum (dialogue/summary), XSum (document/summary), CNN/DailyMail (article/highlights), generic source/target.
SOURCE_COLUMNS = ("dialogue", "document", "text", "source", "article")
SUMMARY_COLUMNS = ("summary", "target", "highlights")
T5_MODEL_TYPES = ("t5", "mt5", "umt5")  # trained with task prefixes; "summarize: " is the one for this task
T5_PREFIX = "summarize: "
CORPUS_NAMES = [SUMMARY_CORPUS] + [f"{SUMMARY_CORPUS}:{split}" for split in ACLSUM_SPLITS]


@dataclass(frozen=True)
class Pair:
    source: str  # the dialogue or document, lines kept
    summary: str  # the reference summary ("" when only the source is known, e.g. `chattune summarize --input`)
    instruction: str | None = None  # what to summarise, when the data says (aclsum: the aspect); else the config's


def prompt_text(pair: Pair, instruction: str, seq2seq_type: str | None = None) -> str:
    """What the model reads. A causal LM (`seq2seq_type` None) gets the request then the source, as the user's turn
    of its chat template; an encoder-decoder model (`seq2seq_type` its model type: t5, bart, ...) gets the source,
    after the pair's own request if it has one, and T5's task prefix for the T5 family.

    >>> prompt_text(Pair("A: hi", "A says hi."), "Summarize.")
    'Summarize.\\n\\nA: hi'
    >>> prompt_text(Pair("A: hi", "A says hi."), "Summarize.", "t5")
    'summarize: A: hi'
    """
    if seq2seq_type is None:
        return f"{pair.instruction or instruction}\n\n{pair.source}"
    request = f"{pair.instruction}\n" if pair.instruction else ""
    return (T5_PREFIX if seq2seq_type in T5_MODEL_TYPES else "") + request + pair.source


def pair_conversation(pair: Pair, instruction: str) -> Conversation:
    """The pair as a chat for a causal LM: the request and source as the user's turn, the summary as the reply (the
    only trained tokens, by the chat label masks of data/chat.py)."""
    return [{"role": "user", "content": prompt_text(pair, instruction)},
            {"role": "assistant", "content": pair.summary}]


def _text(record: dict, key: str, where: str) -> str:
    if key not in record:
        raise InputError(f"{where}: no {key!r} field (fields: {', '.join(map(str, record))}); every record "
                         "needs one")
    value = record[key]
    if isinstance(value, (dict, list)):
        raise InputError(f"{where}: {key!r} is a {type(value).__name__}, not text")
    return "" if value is None else str(value)  # empty texts are dropped by clean_pairs, and counted


def _file_pairs(path: Path, report: DataReport, source_column: str | None, summary_column: str | None) -> list[Pair]:
    keys: list[str] = []

    def columns(names: list[str]) -> list[str]:
        keys[:] = [find_column(names, source_column, SOURCE_COLUMNS, "source", str(path)),
                   find_column(names, summary_column, SUMMARY_COLUMNS, "summary", str(path))]
        return keys

    records = file_records(path, report, columns, kind="pairs")
    if not records:
        raise InputError(f"{path}: no rows; give a file with a source and a summary column")
    if not keys:  # JSON and datasets rows: the first record names the columns
        columns(list(records[0][1]))
    return [Pair(_text(record, keys[0], where), _text(record, keys[1], where)) for where, record in records]


def clean_pairs(pairs: list[Pair], report: DataReport) -> list[Pair]:
    """Both texts repaired by the chat cleaning code, lines kept; empty and repeated pairs dropped and counted."""
    kept, seen = [], set()
    for pair in pairs:
        cleaned = Pair(clean_text(pair.source, report), clean_text(pair.summary, report), pair.instruction)
        if not cleaned.source or not cleaned.summary:
            report.drop("empty")
        elif cleaned in seen:
            report.drop("duplicate")
        else:
            seen.add(cleaned)
            kept.append(cleaned)
    report.conversations = len(kept)
    return kept


def read_pairs(source: str, source_column: str | None = None, summary_column: str | None = None, *,
               limit: int | None = None) -> tuple[list[Pair], DataReport]:
    """Cleaned pairs in file order (the first `limit` read), and the report; InputError when none are left."""
    report = DataReport(format="pairs", source=source)
    if source in CORPUS_NAMES and not Path(source).exists():
        split = source.partition(":")[2] or "train"
        pairs = [Pair(r["source"], r["summary"], r["instruction"]) for r in read_aclsum(split, report)]
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{source}: no such file; give a CSV/TSV/JSONL/JSON/parquet with source and summary "
                             f"columns, or a built-in corpus: {', '.join(CORPUS_NAMES)}")
        pairs = _file_pairs(path, report, source_column, summary_column)
    pairs = pairs[:limit]
    report.conversations_read = len(pairs)
    kept = clean_pairs(pairs, report)
    if not kept:
        dropped = ", ".join(f"{reason} {count}" for reason, count in report.dropped.items())
        raise InputError(f"{source}: no pairs left after cleaning (dropped: {dropped}); every row needs a source "
                         "and a summary")
    return kept, report


def held_out_source(cfg) -> str | None:
    """Where a SummarizeConfig's held-out pairs come from: `eval_data`, aclsum's own test split, or None (a split
    of `data`)."""
    return cfg.eval_data or (f"{SUMMARY_CORPUS}:test" if cfg.data == SUMMARY_CORPUS else None)


def load_pairs_split(cfg) -> tuple[list[Pair], list[Pair], dict]:
    """(train, eval, report) for a SummarizeConfig: `eval_data` when given, aclsum's own test split for aclsum,
    else a seeded split; the eval side cut to `eval_limit`. Training and `chattune eval` both call this."""
    columns = (cfg.source_column, cfg.summary_column)
    train, data_report = read_pairs(cfg.data, *columns, limit=cfg.limit)
    eval_source, eval_report = held_out_source(cfg), None
    if eval_source is not None:
        evaluation, eval_report = read_pairs(eval_source, *columns)
    else:  # the shared split: whole items, seeded, at least one on each side
        train, evaluation = split_conversations(train, cfg.eval_fraction, cfg.seed, source=cfg.data)
    evaluation = evaluation[: cfg.eval_limit]
    report = {"data": data_report.to_dict(), "eval_data": eval_report.to_dict() if eval_report else None,
              "train_pairs": len(train), "eval_pairs": len(evaluation)}
    return train, evaluation, report


def read_sources(source: str | Path, source_column: str | None = None) -> list[Pair]:
    """Texts to summarise, cleaned like training sources, as pairs with an empty summary: a .txt holds one per
    blank-line-separated block (a transcript's lines stay together); CSV/TSV/JSONL/JSON/parquet rows are read by
    their source column (a summary column is not needed)."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file; give a .txt (sources separated by blank lines) or a "
                         "CSV/TSV/JSONL/JSON/parquet with a source column")
    report = DataReport(format="sources", source=str(path))
    if path.suffix.lower() == ".txt":
        texts = read_utf8(path).replace("\r\n", "\n").split("\n\n")
    else:
        keys: list[str] = []

        def columns(names: list[str]) -> list[str]:
            keys[:] = [find_column(names, source_column, SOURCE_COLUMNS, "source", str(path))]
            return keys

        records = file_records(path, report, columns, kind="sources")
        if records and not keys:
            columns(list(records[0][1]))
        texts = [_text(record, keys[0], where) for where, record in records]
    sources = [cleaned for text in texts if (cleaned := clean_text(text, report))]
    if not sources:
        raise InputError(f"{path}: no text to summarise; give one source per blank-line-separated block (.txt) or "
                         "per row")
    return [Pair(source, "") for source in sources]
