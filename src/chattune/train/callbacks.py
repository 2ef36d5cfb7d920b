"""Trainer callbacks: a Rich progress bar, a one-line summary per evaluation, metrics.jsonl, checkpoint markers,
freed memory returned after each step.

transformers' Trainer writes a checkpoint folder file by file. A checkpoint counts as complete only once
`COMPLETE_MARKER` is written into it (atomically, after everything else): `--resume` takes the newest complete
checkpoint and removes any interrupted one, so a crash during a save never poisons a resume.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from chattune.files import atomic_write_text
from chattune.train.memory import trim_heap

COMPLETE_MARKER = "chattune-complete"


class TrimHeap(TrainerCallback):
    """After every optimizer step, free heap pages go back to the OS (memory=balanced and low; `memory.trim_heap`
    says why and what it costs)."""

    def on_step_end(self, args, state, control, **kwargs):
        trim_heap()


class ReleaseFusedLoRA(TrainerCallback):
    """Once training ends, gives a FusedLoRA's layers back to peft and frees its int8 copies (they are for the
    training steps only), then returns the freed heap pages to the OS. SFT and align both train on fused layers."""

    def __init__(self, fused):
        self.fused = fused

    def on_train_end(self, args, state, control, **kwargs):
        self.fused.remove()
        trim_heap()


class RichProgress(TrainerCallback):
    """A progress bar with the latest train loss, and one summary line per evaluation."""

    def __init__(self, console: Console):
        self.console = console
        self.progress: Progress | None = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.progress = Progress(
            TextColumn("[bold blue]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, loss="")
        self.progress.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            # TRL's GRPO/RLOO log the total reward and the KL to the reference model; a DPO step its reward margin
            shown = {"loss": "loss", "reward": "reward", "kl": "KL", "rewards/margins": "margin"}
            line = "  ".join(f"{label} {logs[key]:.3f}" for key, label in shown.items() if key in logs)
            self.progress.update(self.task, loss=line)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = metrics["eval_loss"]
        best = state.best_metric if state.best_metric is not None else loss
        self.console.print(
            f"step {state.global_step:>5}/{state.max_steps}  epoch {state.epoch:.2f}  "
            f"eval loss {loss:.4f}  ppl {math.exp(loss):.2f}  best {min(best, loss):.4f}"
        )

    def on_train_end(self, args, state, control, **kwargs):
        self.progress.stop()


class MetricsLog(TrainerCallback):
    """Append every log (train loss, learning rate, eval loss) as one JSON line to `path`. A resumed run first drops
    the lines logged after its checkpoint's step: it logs those steps again."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0 or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        # a kill during an append leaves a torn last line (no newline): it goes too
        kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= state.global_step]
        atomic_write_text(self.path, "".join(kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")


class CheckpointMarker(TrainerCallback):
    """Mark a checkpoint complete after the Trainer has written all of it (on_save runs after the save).

    It also creates the checkpoint's folder on every rank before a save. The Trainer records the best checkpoint
    only if its folder exists right after the model is saved; under FSDP with SHARDED_STATE_DICT nothing is written
    by then (the shards come later, with the optimizer), so whether a rank saw the folder depended on timing. Ranks
    that disagree about the best checkpoint hang at the end, when only some of them load it (seen with
    configs/distributed/fsdp.yaml on 2 CPU processes: rank 0 loading checkpoint-4, rank 1 not)."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            (Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}").mkdir(parents=True, exist_ok=True)

    on_epoch_end = on_step_end

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:  # rank 0 wrote the checkpoint
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        atomic_write_text(folder / COMPLETE_MARKER, f"{state.global_step}\n")


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with its marker; interrupted ones (no marker) are removed."""
    complete = None
    checkpoints = sorted(folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*"), key=lambda path: int(path.name.split("-")[-1]))
    for checkpoint in checkpoints:
        if (checkpoint / COMPLETE_MARKER).is_file():
            complete = checkpoint
        else:
            shutil.rmtree(checkpoint)
    return complete
