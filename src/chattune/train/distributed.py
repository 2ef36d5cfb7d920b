"""One run, several processes: what `torchrun --nproc_per_node N -m chattune train ...` and
`accelerate launch -m chattune train ...` need from chattune. transformers' Trainer does the data-parallel work
(DDP, FSDP, DeepSpeed through accelerate); this module makes the rest rank-aware:

    state = process_state()            # joins the launch's process group: gloo on CPU, NCCL on CUDA
    if state.is_main_process: ...      # only rank 0 writes the run folder, metrics, reports, the evaluation
    value = from_main_process(fn)      # rank 0 computes (or fails), every rank gets the same result

A plain `chattune train` is a group of one: every call here is then free.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import TypeVar

from chattune.errors import InputError

T = TypeVar("T")


def process_state():
    """accelerate's PartialState: reads the launcher's environment (RANK, WORLD_SIZE, MASTER_ADDR) and starts the
    process group once. CUDA gets NCCL; a CPU-only machine gets gloo (accelerate picks both, given cpu=)."""
    import torch
    from accelerate import PartialState

    _check_deepspeed_installed()
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def launched_distributed() -> bool:
    """True inside torchrun or accelerate launch with more than one process (before any group is started)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_main_process(compute: Callable[[], T]) -> T:
    """Run `compute` on rank 0 only and hand its result to every rank. An InputError on rank 0 is raised on every
    rank, so that no rank waits forever at the next collective call for one that has stopped."""
    state = process_state()
    if state.num_processes == 1:
        return compute()
    from accelerate.utils import broadcast_object_list

    outcome = [None]
    if state.is_main_process:
        try:
            outcome = [("ok", compute())]
        except InputError as error:
            outcome = [("error", str(error))]
    broadcast_object_list(outcome)
    kind, value = outcome[0]
    if kind == "error":
        raise InputError(value)
    return value


def _check_deepspeed_installed() -> None:
    """`accelerate launch --config_file configs/distributed/deepspeed-zero*.yaml` asks for DeepSpeed, an optional
    extra; without it transformers fails deep inside TrainingArguments with a traceback."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and \
            importlib.util.find_spec("deepspeed") is None:
        raise InputError("the accelerate config asks for DeepSpeed, which is not installed; "
                         "pip install 'chattune[deepspeed]', or use configs/distributed/fsdp.yaml or ddp.yaml")
