"""Records of a table-like file, for readers that pick their own columns (labelled texts, summarisation pairs).

    column = find_column(header, None, ("text", "sentence"), "text", "intents.csv")    # first known name, any case
    records = file_records(Path("intents.csv"), report, pick_columns, kind="labelled")  # [(where, record), ...]

CSV/TSV (delimiter sniffed, cp1252 fallback), JSONL/JSON and parquet/arrow/datasets folders are read by the chat
readers; `where` names the file and line (or record) of each record for error messages.
"""

from __future__ import annotations

from pathlib import Path

from chattune.data.readers.csv_reader import csv_records
from chattune.data.readers.hf_reader import hf_rows
from chattune.data.readers.jsonl_reader import json_records
from chattune.data.readers.records import by_lower
from chattune.data.report import DataReport
from chattune.errors import InputError


def find_column(names: list[str], wanted: str | None, candidates: tuple[str, ...], kind: str, where: str) -> str:
    """The column `wanted` (or the first of `candidates`) as spelled in `names`, case-insensitive; InputError
    listing the columns found otherwise."""
    columns = by_lower([str(name) for name in names])
    for name in [wanted] if wanted else candidates:
        if name.strip().lower() in columns:
            return columns[name.strip().lower()]
    flag = f"--set {kind}_column=NAME"
    if wanted:
        raise InputError(f"{where}: no column {wanted!r} (columns: {', '.join(map(str, names))}); fix {flag}")
    plural = {"summary": "summaries"}.get(kind, f"{kind}s")
    raise InputError(f"{where}: {plural} missing: no {'/'.join(candidates)} column among: "
                     f"{', '.join(map(str, names))}; name it with {flag}")


def file_records(path: Path, report: DataReport, pick_columns, kind: str) -> list[tuple[str, dict]]:
    """(where, record) per row; report.format becomes "csv"/"tsv", "<kind>-jsonl", "<kind>-hf", ... For CSV/TSV,
    `pick_columns(header)` is called with the header; JSON and datasets rows are the caller's to check."""
    suffix = path.suffix.lower()
    if path.is_dir() or suffix in (".parquet", ".arrow"):
        report.format = f"{kind}-hf"
        return [(f"{path}: row {index + 1}", row) for index, row in enumerate(hf_rows(path, report))]
    if suffix in (".csv", ".tsv"):
        return list(csv_records(path, report, pick_columns))  # report.format: "csv" or "tsv", the delimiter found
    container, stream = json_records(path)
    report.format = f"{kind}-{container}"
    records = list(stream)
    for where, record in records:
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object per record, got {type(record).__name__}")
    return records
