"""Read a local dataset that Hugging Face `datasets` understands: parquet/arrow files or a folder of them, or a
folder written by `Dataset.save_to_disk`.

    conversations = read_hf_dataset(Path("data/"), report)    # report.format == "messages-hf"

Rows are interpreted like JSON records (messages / ShareGPT conversations / prompt-response columns); see records.py.
`datasets` is imported here only, because it takes a second or two to import.
"""

from pathlib import Path

from chattune.data.conversation import Conversation
from chattune.data.readers.records import record_to_conversation
from chattune.data.report import DataReport
from chattune.errors import InputError


def hf_rows(path: Path, report: DataReport):
    """The rows of the dataset's train split (or its only split), as dicts."""
    import datasets

    try:
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():  # written by save_to_disk
            dataset = datasets.load_from_disk(str(path))
        elif path.is_dir():
            dataset = datasets.load_dataset(str(path))
        else:
            dataset = datasets.load_dataset(path.suffix.lower().lstrip("."), data_files=str(path))
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as error:
        message = f"{path}: datasets could not read it ({error}); give parquet/arrow files or a saved dataset"
        raise InputError(message) from None
    if isinstance(dataset, datasets.DatasetDict):
        split = "train" if "train" in dataset else next(iter(dataset))
        if len(dataset) > 1:
            report.warnings.append(f"{path}: read split {split!r} of {', '.join(dataset)}")
        dataset = dataset[split]
    return dataset


def read_hf_dataset(
    path: Path, report: DataReport, *, prompt_column: str | None = None, response_column: str | None = None
) -> list[Conversation]:
    """One conversation per row; report.format is "<kind>-hf", e.g. "prompt-response-hf"."""
    kinds, conversations = set(), []
    for index, row in enumerate(hf_rows(path, report)):
        kind, conversation = record_to_conversation(row, f"{path}: row {index + 1}", prompt_column, response_column)
        kinds.add(kind)
        conversations.append(conversation)
    report.format = "+".join(sorted(kinds) or ["empty"]) + "-hf"
    return conversations
