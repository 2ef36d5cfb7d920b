"""A full disk during training or saving is the user's to fix, not a bug: one line naming the folder, the space
a save needs and what is free, exit code 2. The previous complete checkpoint stays usable (train/callbacks.py).

    with full_disk_is_input_error(run, needed=checkpoint_bytes(model, run)):
        trainer.train(...)

Writers fail differently when the disk fills: Python's and the tokenizer's with OSError(ENOSPC), torch.save with
RuntimeError("... file write failed"), safetensors with SafetensorError. So the error is not trusted to say why;
the disk is asked instead.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chattune.errors import InputError

MB = 1024 * 1024


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def checkpoint_bytes(model, checkpoints: Path) -> int:
    """What the next save needs: the size of the newest checkpoint when there is one, else the trainable weights
    and their two Adam moments in fp32 (what a checkpoint mostly holds)."""
    existing = sorted(checkpoints.glob("checkpoint-*"), key=lambda path: path.stat().st_mtime)
    if existing:
        return folder_bytes(existing[-1])
    return sum(p.numel() for p in model.parameters() if p.requires_grad) * 4 * 3


def weights_bytes(model) -> int:
    """What saving `model` writes: its trainable weights (a LoRA adapter, or every weight of a full fine-tune),
    or every weight of a model with none trainable (a merged one)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return sum(p.numel() * p.element_size() for p in trainable or model.parameters())


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


@contextmanager
def full_disk_is_input_error(folder: Path, *, needed: int) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        free = shutil.disk_usage(_nearest_existing(Path(folder))).free
        out_of_space = getattr(error, "errno", None) == errno.ENOSPC or free < needed
        if not out_of_space:
            raise
        raise InputError(f"{folder}: disk full while saving (a save needs about {needed / MB:.1f} MB, "
                         f"{free / MB:.1f} MB free); free space, then continue with --resume") from None
