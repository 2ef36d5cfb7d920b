"""What every training task shares: the run folder, TrainingArguments from the config, LoRA, callbacks, the Trainer.

    checkpoint = prepare_run_folder(run, resume=False, overwrite=False)   # refuse / overwrite / resume
    with cleanup_on_failure(run, fresh=checkpoint is None):
        trainer = build_trainer(cfg, run, model, tokenizer, train_set, eval_set, collator, RichProgress(console))

A task (sft.py, classify.py, summarize.py, align.py) is one file that reads top to bottom and calls these; nothing here knows
a task.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from chattune.errors import InputError
from chattune.runs import Run
from chattune.train.callbacks import CheckpointMarker, MetricsLog, TrimHeap, last_complete_checkpoint
from chattune.train.disk import checkpoint_bytes, full_disk_is_input_error, weights_bytes
from chattune.train.distributed import from_main_process, is_main_process


def check_output_folder(run: Path) -> None:
    """Refuse an output path that cannot become a run folder, before anything heavy loads: an existing file, a
    path under a file, a read-only or virtual file system (/proc, /sys), a folder without write permission."""
    if run.exists() and not run.is_dir():
        raise InputError(f"--output {run}: exists and is not a folder; give a folder path for the run")
    parent = run if run.exists() else run.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"--output {run}: {parent} is a file, so no folder can be made under it")
    try:  # os.access says yes to root on read-only mounts and on /proc: try the real thing
        probe = tempfile.mkdtemp(dir=parent, prefix=".chattune-probe-")
        os.rmdir(probe)
    except OSError as error:
        raise InputError(f"--output {run}: cannot write in {parent} ({error.strerror}); choose another folder") \
            from None


def prepare_run_folder(run: Path, *, resume: bool, overwrite: bool) -> Path | None:
    """Return the checkpoint to resume from (or None for a new run); refuse to clobber an existing run. Under a
    distributed launch rank 0 decides and every rank gets its answer (or its error)."""
    checkpoint = from_main_process(lambda: _prepare_run_folder(run, resume=resume, overwrite=overwrite))
    return Path(checkpoint) if checkpoint else None


def _prepare_run_folder(run: Path, *, resume: bool, overwrite: bool) -> str | None:
    check_output_folder(run)
    if resume:
        checkpoints = Run(run).checkpoints_dir
        checkpoint = last_complete_checkpoint(checkpoints) if checkpoints.is_dir() else None
        if checkpoint is None:
            raise InputError(f"{run}: no complete checkpoint to resume from; start a new run without --resume")
        return str(checkpoint)
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise InputError(f"{run}: run folder exists; pass --overwrite to replace it, or --resume to continue it")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return None


@contextmanager
def cleanup_on_failure(run: Path, *, fresh: bool) -> Iterator[None]:
    """A new run that fails before it has a complete checkpoint is removed, so the same command can be repeated;
    one with a checkpoint stays for --resume. A resumed run is never removed."""
    try:
        yield
    except BaseException:
        checkpoints = Run(run).checkpoints_dir
        if fresh and is_main_process() and not (checkpoints.is_dir() and last_complete_checkpoint(checkpoints)):
            shutil.rmtree(run, ignore_errors=True)
        raise


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch before anything random is drawn (adapter and head initialisation, dropout, data
    order). Unseeded, the LoRA weights started from whatever state the global RNG was in, so two runs of one config
    ended 0.04% apart on the same machine."""
    from transformers import set_seed

    set_seed(seed)


def lora_config(cfg, task_type: str = "CAUSAL_LM"):
    """The PEFT LoraConfig of a run (also handed to TRL by the benchmark, so both train the same adapter).
    SEQ_CLS also trains (and saves) a new classification head in full; target_modules "attention" leaves the choice
    to peft's per-architecture table of query/value projections (target_modules=None)."""
    from peft import LoraConfig

    targets = None if cfg.lora.target_modules == "attention" else cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=targets, task_type=task_type)


def add_lora(model, cfg, task_type: str = "CAUSAL_LM"):
    from peft import get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as ATTENTION_MODULES

    model_type = model.config.model_type
    if cfg.lora.target_modules == "attention" and model_type not in ATTENTION_MODULES:
        raise InputError(f"config: lora.target_modules='attention' is not known for {model_type} models; "
                         "list the modules, e.g. --set 'lora.target_modules=[q_proj, v_proj]', or use all-linear")
    return get_peft_model(model, lora_config(cfg, task_type))


def training_arguments(cfg, run: Path, *, arguments_class=None, **task_arguments):
    """transformers' TrainingArguments (or `arguments_class`, e.g. Seq2SeqTrainingArguments) from the shared config
    fields; a task adds or overrides its own (precision, the metric that picks the best checkpoint, ...)."""
    from transformers import TrainingArguments

    arguments = dict(
        output_dir=str(Run(run).checkpoints_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,  # every evaluation can become the best checkpoint
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=cfg.logging_steps,
        # TensorBoard is written by our own callback into RUN/tensorboard; the others through transformers' own
        report_to=[name for name in cfg.report_to if name not in ("tensorboard", "none")] or "none",
        disable_tqdm=True,  # RichProgress draws the bar
        seed=cfg.seed,
        ddp_find_unused_parameters=False,  # LoRA and full runs use every trainable weight each step
    )
    return (arguments_class or TrainingArguments)(**{**arguments, **task_arguments})


def device_arguments(device) -> dict:
    """The TrainingArguments that follow from where the model is. use_cpu: without it, TrainingArguments on a
    CPU-only machine does not join a torchrun launch's gloo group (2 processes trained with world_size 1)."""
    return {"use_cpu": device.type == "cpu", "dataloader_pin_memory": device.type == "cuda"}


def build_trainer(cfg, run: Path, model, tokenizer, train_set, eval_set, collator, progress, *,
                  trainer_class=None, compute_metrics=None, callbacks=(), **task_arguments):
    """A Trainer with the shared callbacks and early stop; `callbacks` adds a caller's own (tune's pruning). The
    device arguments come from where `model` is (device_arguments)."""
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer

    shared = shared_callbacks(cfg, run, progress)
    if cfg.early_stopping_patience > 0:
        shared.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer = (trainer_class or Trainer)(
        model=model, args=training_arguments(cfg, run, **device_arguments(model.device), **task_arguments),
        data_collator=collator,
        train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer, compute_metrics=compute_metrics,
        callbacks=shared + list(callbacks))
    trainer.remove_callback(PrinterCallback)  # RichProgress prints instead of raw log dicts
    return trainer


def shared_callbacks(cfg, run: Path, progress) -> list:
    """What every trainer of a run reports to: checkpoint markers, and on rank 0 of a distributed launch the
    progress line, RUN/metrics.jsonl and RUN/tensorboard (when in report_to); and, under memory=balanced or low,
    freed heap pages returned after each step (TrimHeap). TRL's trainers (train/align.py) take
    these too; remove PrinterCallback after building one."""
    check_reporters_installed(cfg.report_to)
    run_folder = Run(run)
    shared = [CheckpointMarker()]
    if getattr(cfg, "memory", "fast") != "fast":  # the tasks with a memory plan (chat, align)
        shared.append(TrimHeap())
    if is_main_process():
        shared += [progress, MetricsLog(run_folder.metrics_log_path)]
        if "tensorboard" in cfg.report_to:
            shared.append(_tensorboard_callback(run_folder.tensorboard_dir))
    return shared


def _tensorboard_callback(folder: Path):
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    return TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(folder)))


# report_to names -> the package transformers' integration needs (optional extras; tensorboard is a dependency)
REPORTER_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_reporters_installed(report_to: list[str]) -> None:
    import importlib.util

    for name in report_to:
        package = REPORTER_PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise InputError(f"config: report_to={name}: the {package} package is not installed; "
                             f"pip install {package}, or drop {name} from report_to")


def global_batch(trainer) -> dict[str, int]:
    """What one optimizer step sees: batch_size x gradient_accumulation x world_size (recorded in metrics.json)."""
    return {"world_size": trainer.args.world_size,
            "global_batch_size": trainer.get_total_train_batch_size(trainer.args)}


def train_or_finish(trainer, checkpoint: Path | None) -> None:
    """trainer.train(), resumed from `checkpoint` when there is one. A checkpoint of the final step (the run was
    killed after it, before writing its results) only has its best weights loaded: the Trainer would resume into
    the last epoch and take one step past max_steps when max_steps is not a whole number of epochs."""
    from transformers import TrainerState

    if checkpoint is not None:
        state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
        *_, max_steps = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())
        if state.global_step >= max_steps:
            trainer.state = state
            best = state.best_model_checkpoint
            # the same loader the Trainer uses for resuming and for load_best_model_at_end (no public one exists)
            trainer._load_from_checkpoint(best if best and Path(best).is_dir() else str(checkpoint))
            return
    checkpoints = Path(trainer.args.output_dir)
    with full_disk_is_input_error(checkpoints, needed=checkpoint_bytes(trainer.model, checkpoints)):
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def save_model(cfg, folder: Run, model, tokenizer, merge: bool) -> None:
    """The trained weights into the run folder: a LoRA adapter (and, with `merge`, the merged model), or the full
    model; chat runs get chattune's decoding defaults beside them (generation_config.json)."""
    generation = None
    if cfg.task == "chat":
        from chattune.generate.sampling import Sampling, generation_config

        generation = generation_config(tokenizer, Sampling())
    if cfg.method == "lora":
        save_weights(model, tokenizer, folder.adapter_dir, generation)
        if not merge:
            return
        model = model.merge_and_unload()
    save_weights(model, tokenizer, folder.model_dir, generation)


def save_weights(model, tokenizer, folder: Path, generation=None) -> None:
    """Weights, tokenizer (with its chat template) and a GenerationConfig when given into `folder`, atomically."""
    from chattune.files import atomic_directory

    with full_disk_is_input_error(folder, needed=weights_bytes(model)), atomic_directory(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if generation is not None:  # after the model's own (a base model's token ids), which it replaces
            generation.save_pretrained(tmp)
