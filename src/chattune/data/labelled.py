"""Read labelled texts, `(text, label)` rows, for classification: the same readers as conversations, other columns.

    rows, report = read_labelled("intents.csv")                  # text/label columns found by name
    rows, report = read_labelled("chatterbot-topics")            # the built-in topic corpus
    train, evaluation, report = load_labelled_split(cfg)         # a ClassifyConfig: split stratified by label

CSV/TSV (delimiter sniffed, cp1252 fallback), JSONL/JSON and parquet/arrow/datasets folders are read by the
chat readers (`data/readers`); only the columns differ. Every problem raises InputError naming the file, line and
column.
"""

from __future__ import annotations

from pathlib import Path

from chattune.data.readers.corpora import TOPICS_CORPUS, read_topic_questions
from chattune.data.readers.rows import file_records, find_column
from chattune.data.report import DataReport
from chattune.data.split import split_by_label
from chattune.errors import InputError

# Column names recognised without text_column/label_column, first match wins, case-insensitive.
TEXT_COLUMNS = ("text", "sentence", "utterance", "question", "query", "prompt", "input")
LABEL_COLUMNS = ("label", "intent", "category", "topic", "class")

Row = tuple[str, str]  # (text, label)


def _field(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if value is None or isinstance(value, (dict, list)) or not str(value).strip():
        raise InputError(f"{where}: {key!r} is empty or not text; every row needs a text and a label")
    return str(value).strip()


def read_labelled(source: str, text_column: str | None = None, label_column: str | None = None, *,
                  limit: int | None = None) -> tuple[list[Row], DataReport]:
    """(text, label) rows in file order, a repeated text kept once (its first label), and the report."""
    report = DataReport(format="labelled", source=source)
    if source == TOPICS_CORPUS and not Path(source).exists():
        rows = read_topic_questions(report)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"{source}: no such file; give a CSV/TSV/JSONL/JSON/parquet with text and label "
                             f"columns, or the built-in corpus {TOPICS_CORPUS}")
        keys: list[str] = []

        def columns(names: list[str]) -> list[str]:
            keys[:] = [find_column(names, text_column, TEXT_COLUMNS, "text", str(path)),
                       find_column(names, label_column, LABEL_COLUMNS, "label", str(path))]
            return keys

        records = file_records(path, report, columns, kind="labelled")
        if not records:
            raise InputError(f"{path}: no rows")
        if not keys:  # JSON and datasets rows: the first record names the columns
            columns(list(records[0][1]))
        rows = [(_field(record, keys[0], where), _field(record, keys[1], where)) for where, record in records]
    rows = rows[:limit]
    report.conversations_read = len(rows)
    unique: dict[str, str] = {}
    for text, label in rows:
        unique.setdefault(text, label)
    if len(rows) > len(unique):
        report.drop("duplicate", len(rows) - len(unique))
    report.conversations = len(unique)
    return list(unique.items()), report


def load_labelled_split(cfg) -> tuple[list[Row], list[Row], dict]:
    """(train, eval, report) for a ClassifyConfig: `eval_data` when given, else a stratified seeded split."""
    rows, data_report = read_labelled(cfg.data, cfg.text_column, cfg.label_column, limit=cfg.limit)
    eval_report = None
    if cfg.eval_data is not None:
        train = rows
        evaluation, eval_report = read_labelled(cfg.eval_data, cfg.text_column, cfg.label_column)
    else:
        train, evaluation = split_by_label(rows, cfg.eval_fraction, cfg.data_split_seed, source=cfg.data)
    evaluation = evaluation[: cfg.eval_limit]
    report = {"data": data_report.to_dict(), "eval_data": eval_report.to_dict() if eval_report else None,
              "train_texts": len(train), "eval_texts": len(evaluation)}
    return train, evaluation, report
