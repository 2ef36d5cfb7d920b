"""Crash-proof resume: a run killed with SIGKILL at a random step and resumed ends where an uninterrupted run ends;
a run killed after its final checkpoint only finishes its results; re-done steps are logged once; a full disk is
one line and leaves the previous checkpoint usable."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from chattune.cli import main
from chattune.train.callbacks import COMPLETE_MARKER

FAST = ["--set", "batch_size=4", "--set", "logging_steps=1", "--set", "learning_rate=0.01", "--set", "precision=fp32",
        "--set", "eval_replies=0", "--set", "early_stopping_patience=0", "--set", "save_total_limit=10"]


def _steps(run):
    """(step, which keys) per metrics.jsonl line: a train loss, an evaluation, the end-of-training summary."""
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [(row["step"], tuple(sorted(row))) for row in rows]


def _tuned_loss(run):
    return json.loads((run / "metrics.json").read_text())["tuned"]["loss"]


def test_killed_at_a_random_step_and_resumed_ends_like_an_uninterrupted_run(tmp_path, chat_jsonl, tiny_llama):
    # dropout on, so the restored RNG state matters as much as the weights and the data order
    config = ["--data", chat_jsonl, "--model", tiny_llama, *FAST, "--set", "max_steps=12", "--set", "eval_steps=2",
              "--set", "max_length=64", "--set", "lora.dropout=0.1"]
    reference = tmp_path / "reference"
    assert main(["train", *config, "--output", str(reference)]) == 0

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(3, 10)  # any step: checkpoints are at the even ones
    src = os.path.join(os.path.dirname(__file__), "..", "src")
    child = subprocess.Popen([sys.executable, "-m", "chattune", "train", *config, "--output", str(killed)],
                             env={**os.environ, "PYTHONPATH": os.path.abspath(src)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while child.poll() is None and time.time() < deadline:
        if log.is_file() and any(step >= kill_after for step, _ in _steps(killed)):
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed"

    assert main(["train", "--output", str(killed), "--resume"]) == 0
    assert abs(_tuned_loss(killed) - _tuned_loss(reference)) < 1e-4, f"killed after step {kill_after}"
    steps = _steps(killed)
    assert len(steps) == len(set(steps)), "a re-done step was logged twice"
    assert steps == _steps(reference)


def test_resuming_a_run_killed_after_its_final_checkpoint_takes_no_extra_step(tmp_path, chat_jsonl, tiny_llama):
    # unpacked: 32 conversations in batches of 4 are 8 steps an epoch, so step 10 ends inside the second epoch
    run = tmp_path / "run"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), *FAST,
                 "--set", "packing=false", "--set", "max_steps=10", "--set", "eval_steps=5"]) == 0
    expected = _tuned_loss(run)
    logged = (run / "metrics.jsonl").read_text()
    for name in ("metrics.json", "adapter"):  # killed after checkpoint-10, before the results were written
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()

    assert main(["train", "--output", str(run), "--resume"]) == 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == 10
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-10", "checkpoint-5"]
    assert _tuned_loss(run) == pytest.approx(expected, abs=1e-6)
    assert (run / "metrics.jsonl").read_text() == logged


@pytest.fixture
def small_disk(tmp_path):
    """A 900 KB tmpfs: one checkpoint of the tiny Llama (~490 KB) fits, a second does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=900k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (CAP_SYS_ADMIN)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, small_disk, chat_jsonl, tiny_llama,
                                                                  capsys):
    run = small_disk / "run"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), *FAST,
                 "--set", "max_steps=4", "--set", "eval_steps=2", "--set", "max_length=64"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"chattune: error: {run / 'checkpoints'}: disk full while saving (a save needs about")
    assert "Traceback" not in error
    assert (run / "checkpoints" / "checkpoint-2" / COMPLETE_MARKER).is_file()

    moved = tmp_path / "moved"  # the user frees space: here, by moving the run to a roomier disk
    shutil.copytree(run, moved)
    assert main(["train", "--output", str(moved), "--resume"]) == 0
    assert json.loads((moved / "metrics.json").read_text())["steps"] == 4
