"""`chattune tune --jobs N`: trials in N worker processes that share the study in DIR/study.sqlite.

    stopped, error = run_workers(work, search, trials=8, jobs=2, seed=42, console=console, queued=...)  # tune.py

Optuna's own distributed mode: every worker opens the same RDB storage and calls study.optimize with its share of
the trials; Optuna hands each trial a new number and the median pruner compares against whatever any worker has
reported. The queued baseline (trial 0) goes to the first worker alone: the others start once it has taken it
(`run_workers` says why). Each worker is pinned to its own cores (cores // N, at least 1) with as many torch
threads, so N trials do not fight over the same cores. The workers write no results:
the parent writes trials.csv, best.yaml and report.html once, after all have exited (train/tune.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from chattune.errors import InputError

POLL_S = 0.2


def core_shares(jobs: int) -> list[list[int]]:
    """The cores of each worker: this process's cores split into `jobs` equal disjoint shares (cores // jobs each);
    with more workers than cores each gets one, shared round robin."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    size = max(1, len(cores) // jobs)
    return [[cores[(index * size + k) % len(cores)] for k in range(size)] for index in range(jobs)]


def run_workers(work, search, trials: int, jobs: int, seed: int, console: Console,
                queued: Callable[[], bool]) -> tuple[list[str], str | None]:
    """Run `trials` trials in `jobs` processes, each `work(search, its trials, its seed, its cores, errors)` (a
    module-level function: the spawned process imports it), and wait for all. Returns a line for each worker that
    did not end cleanly (killed, crashed), and the first InputError a worker met (a value the config refuses).

    While `queued()` is true (a trial waits in the study), the first worker runs alone: on SQLite, Optuna's
    check-and-set of a WAITING trial is not atomic (its SELECT ... FOR UPDATE is a plain SELECT there), so two
    workers starting together could both take the queued baseline and fail on finishing it twice."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: forking a process that holds torch's
    errors = context.Queue()                        # thread pools and an SQLite connection is unsafe
    workers, shares = [], core_shares(jobs)
    for index, cores in enumerate(shares):
        share = trials // jobs + (index < trials % jobs)
        if share == 0:
            continue
        worker = context.Process(target=work, args=(search, share, seed + index, cores, errors),
                                 name=f"chattune-tune-{index}")
        if workers:
            _wait_while(queued, workers[0])
        with _thread_environment(len(cores)):  # read by the child's OpenMP/MKL at start, and by its subprocesses
            worker.start()
        workers.append(worker)
    console.print(f"tune: {len(workers)} worker processes, {len(shares[0])} core(s) each")
    for worker in workers:
        worker.join()
    error = None if errors.empty() else errors.get()
    stopped = [f"{worker.name} (pid {worker.pid}) {_ending(worker.exitcode)}" for worker in workers
               if worker.exitcode not in (0, 2)]  # 2: stopped on the InputError returned
    return stopped, error


def _wait_while(queued: Callable[[], bool], first) -> None:
    """Until the first worker has taken the queued trials, or has stopped without taking them."""
    while first.is_alive() and queued():
        time.sleep(POLL_S)


def _ending(code: int) -> str:
    return f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"


@contextmanager
def _thread_environment(threads: int) -> Iterator[None]:
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(threads) for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pin_to_cores(cores: list[int]) -> None:
    """Called first in a worker: its cores, and as many torch threads (OMP/MKL_NUM_THREADS came with its start)."""
    import torch

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))


@contextmanager
def input_error_to_parent(errors) -> Iterator[None]:
    """In a worker: an InputError goes to the parent, which raises it after writing the results (exit code 2)."""
    try:
        yield
    except InputError as error:
        errors.put(str(error))
        errors.close()
        errors.join_thread()  # the message must reach the pipe before this process exits
        sys.exit(2)
