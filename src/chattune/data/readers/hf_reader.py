"""Read a local dataset that Hugging Face `datasets` understands: parquet/arrow files or a folder of them, or a
folder written by `Dataset.save_to_disk`.

    conversations = read_hf_dataset(Path("data/"), report)    # report.format == "messages-hf"

Rows are interpreted like JSON records (messages / ShareGPT conversations / prompt-response columns); see records.py.
`datasets` is imported here only, because it takes a second or two to import.
"""

import os
from collections.abc import Iterator
from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.data.readers.limits import ReadLimits, checked_file
from chattune.data.readers.records import record_to_conversation
from chattune.data.report import DataReport
from chattune.errors import InputError


DATA_SUFFIXES = (".parquet", ".arrow", ".csv", ".tsv", ".json", ".jsonl")  # files `datasets` reads from a folder
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")  # written by Dataset(Dict).save_to_disk


def _check_dataset_folder(path: Path) -> None:
    """InputError for a folder with no data file anywhere inside (datasets would fail with a generic message)."""
    for _, _, files in os.walk(path, onerror=None):
        if any(name in SAVED_DATASET_FILES or name.lower().endswith(DATA_SUFFIXES) for name in files):
            return
    suffixes = ", ".join(DATA_SUFFIXES)
    raise InputError(f"{path}: a folder with no data files ({suffixes}) and no saved dataset in it; give a data "
                     "file, or a folder of them")


def hf_rows(path: Path, report: DataReport, limits: ReadLimits = ReadLimits()):
    """The rows of the dataset's train split (or its only split), as dicts."""
    if path.is_dir():
        _check_dataset_folder(path)
    else:
        checked_file(path, limits)
    import datasets

    try:
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():  # written by save_to_disk
            dataset = datasets.load_from_disk(str(path))
        elif path.is_dir():
            dataset = datasets.load_dataset(str(path))
        else:
            dataset = datasets.load_dataset(path.suffix.lower().lstrip("."), data_files=str(path))
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        cause = f"{error}: {error.__cause__}" if error.__cause__ else str(error)  # the generic message hides why
        message = f"{path}: datasets could not read it ({cause}); give parquet/arrow files or a saved dataset"
        raise InputError(message) from None
    if isinstance(dataset, datasets.DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        if len(dataset) > 1:
            report.warnings.append(f"{path}: read split {split!r} of {', '.join(dataset)}")
        dataset = dataset[split]
    return dataset


def read_hf_dataset(path: Path, report: DataReport, *, prompt_column: str | None = None,
                    response_column: str | None = None, limits: ReadLimits = ReadLimits()) -> Iterator[Conversation]:
    """One conversation per row; report.format is "<kind>-hf", e.g. "prompt-response-hf"."""
    kinds: set[str] = set()
    report.format = "empty-hf"
    for index, row in enumerate(hf_rows(path, report, limits)):
        kind, conversation = record_to_conversation(row, f"{path}: row {index + 1}", prompt_column, response_column)
        if kind not in kinds:
            kinds.add(kind)
            report.format = "+".join(sorted(kinds)) + "-hf"
        yield conversation
