"""`chattune train --nproc N` and `--accelerate-config FILE`: start the same command again under torchrun or
`accelerate launch` on this machine, N processes, one run folder:

    chattune train configs/demo.yaml --output runs/ddp --nproc 2
    # = torchrun --standalone --nproc_per_node 2 -m chattune train configs/demo.yaml --output runs/ddp

Multi-node runs use torchrun (or accelerate launch) directly; the README's "Scale out" section has the commands.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import yaml

from chattune.errors import InputError

LAUNCH_FLAGS = ("--nproc", "--accelerate-config")  # consumed here; the launched processes must not see them


def relaunch(argv: list[str], nproc: int, accelerate_config: str | None, output: Path) -> int:
    """Run `chattune <argv>` in `nproc` processes; returns the launcher's exit code. `output` is passed explicitly,
    so every process writes the one run folder (a default folder name from the clock could differ per process)."""
    if nproc < 1:
        raise InputError(f"--nproc {nproc}: give a number of processes of at least 1")
    command = [*_strip_launch_flags(argv), "--output", str(output)]
    if accelerate_config is None:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    else:
        _check_accelerate_config(Path(accelerate_config))
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
                    "--num_processes", str(nproc)]
    return subprocess.run([*launcher, "-m", "chattune", *command], check=False).returncode


def _strip_launch_flags(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in LAUNCH_FLAGS or arg == "--output":
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in (*LAUNCH_FLAGS, "--output"))):
            kept.append(arg)
    return kept


def _check_accelerate_config(path: Path) -> None:
    """DeepSpeed is an optional extra: without it `accelerate launch` stops with a traceback, so say it first."""
    if not path.is_file():
        raise InputError(f"--accelerate-config {path}: file not found (configs/distributed/ has examples)")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if values.get("distributed_type") == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise InputError(f"--accelerate-config {path}: DeepSpeed is not installed; pip install 'chattune[deepspeed]', "
                         "or use configs/distributed/fsdp.yaml")
