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


def enable_fsdp_on_cpu(trainer) -> None:
    """Make an FSDP accelerate config shard on a CPU-only machine too, so the one configs/distributed/fsdp.yaml runs
    everywhere. accelerate turns ACCELERATE_USE_FSDP (what `accelerate launch` sets from the config) into its FSDP
    state only for GPU-like devices: on CPU (MULTI_CPU, gloo) it drops the request without a word and the run is
    plain DDP. torch's FSDP2 itself works over gloo (all-gather and reduce-scatter), so this does the switch
    accelerate skips, the way it does it for GPUs: distributed_type FSDP and a plugin read from the same
    environment. Call it on a freshly built Trainer, before train() wraps the model. Callers: chat and causal
    summarize runs (run on 2 CPU processes). Not seq2seq models (not run), nor classification: under an FSDP config
    a BERT classifier stops before training with or without this switch (transformers' fsdp_cpu_ram_efficient_loading
    leaves rank 1's weights on the meta device, and model.to() cannot copy them)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or \
            state.distributed_type != DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    from accelerate import PartialState

    PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as AcceleratorState does on GPUs
    trainer.is_fsdp_enabled = True


def trained_model(trainer, rebuild: Callable):
    """The trained model as one plain module on rank 0 (None on the other ranks), for what rank 0 alone does after
    training: score, save, merge, generate. Under FSDP each rank holds a shard and every forward pass is a
    collective, so rank 0 cannot run it alone; every rank takes part in accelerate's get_state_dict (the full state
    dict, gathered to rank 0's CPU), and rank 0 loads it into `rebuild()`, a fresh unsharded model of the same
    layout (the base model, with the LoRA adapter when there is one). Without FSDP it is trainer.model."""
    if not getattr(trainer, "is_fsdp_enabled", False):
        return trainer.model if process_state().is_main_process else None
    state_dict = trainer.accelerator.get_state_dict(trainer.model)
    if not process_state().is_main_process:
        return None
    model = rebuild()
    model.load_state_dict(state_dict)
    return model.to(process_state().device)
