"""Supervised fine-tuning of a causal LM on conversations (LoRA or full weights).

    chattune train configs/demo.yaml --output runs/demo

Reads top to bottom: prepare the run folder -> load and split the data -> load the model -> score the base model
-> train with transformers' Trainer (early stopping on eval loss, best checkpoint restored) -> score the tuned
model -> write the run folder. Everything in the run folder loads with plain transformers/peft:

    RUN/adapter/   PEFT adapter + tokenizer (LoRA runs)        AutoPeftModelForCausalLM.from_pretrained(RUN/adapter)
    RUN/model/     full weights + tokenizer (full or --merge)  AutoModelForCausalLM.from_pretrained(RUN/model)
    RUN/config.yaml, data_report.json, metrics.json, metrics.jsonl, tensorboard/, checkpoints/
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from rich.console import Console

from chattune.config import TrainConfig, save_config
from chattune.data import load_conversations, split_conversations
from chattune.data.chat import token_stats, tokenize_conversations
from chattune.data.collate import PadCollator
from chattune.errors import InputError
from chattune.evaluate.likelihood import likelihood
from chattune.files import atomic_directory, atomic_write_json
from chattune.models import load_model
from chattune.train.callbacks import CheckpointMarker, MetricsLog, RichProgress, last_complete_checkpoint
from chattune.train.fast import (PLAIN_HEAD_MODEL_TYPES, FastTrainer, PackedCollator, bf16_supported,
                                 compile_decoder_layers, pack_examples, supports_target_only_loss)


def train(cfg: TrainConfig, run: Path, *, resume: bool = False, overwrite: bool = False, merge: bool = False,
          console: Console | None = None) -> Path:
    console = console or Console(stderr=True)
    started = time.time()
    checkpoint = _prepare_run_folder(run, resume, overwrite)
    save_config(cfg, run / "config.yaml")

    train_set, eval_set, report = load_split(cfg)
    model, tokenizer = load_model(cfg.model)
    train_examples, eval_examples = tokenize_split(cfg, tokenizer, train_set, eval_set, report)
    atomic_write_json(run / "data_report.json", report)
    console.print(
        f"data: {report['train_conversations']} train / {report['eval_conversations']} eval conversations, "
        f"{report['train_tokens']['trained_total']} trained tokens"
    )

    collator = PadCollator(tokenizer.pad_token_id)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = use_bf16(cfg.precision, model.device)
    # Reported numbers are scored in fp32 whatever the training precision, so runs compare across machines.
    base_scores = likelihood(model, eval_examples, collator, cfg.eval_batch_size)
    console.print(f"base model: eval loss {base_scores['loss']:.4f}  ppl {base_scores['perplexity']:.2f}")

    if cfg.method == "lora":
        model = add_lora(model, cfg)
    trainer = make_trainer(cfg, run, model, tokenizer, train_examples, eval_examples, bf16, console)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    model = trainer.model  # the best checkpoint, restored by load_best_model_at_end
    model.config.use_cache = True  # make_trainer turned it off for training

    tuned_scores = likelihood(model, eval_examples, collator, cfg.eval_batch_size)
    _save_model(cfg, run, model, tokenizer, merge)
    metrics = {
        "base": base_scores,
        "tuned": tuned_scores,
        "perplexity_change": tuned_scores["perplexity"] / base_scores["perplexity"] - 1.0,
        "steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_seconds": round(time.time() - started, 1),
    }
    atomic_write_json(run / "metrics.json", metrics)
    if cfg.eval_replies:  # base vs tuned replies with bootstrap intervals -> RUN/eval.json, RUN/report.html
        from chattune.evaluate.run import evaluate_run

        evaluate_run(run, limit=cfg.eval_replies, compare_base=True, console=console)
    return run


def _prepare_run_folder(run: Path, resume: bool, overwrite: bool) -> Path | None:
    """Return the checkpoint to resume from (or None); refuse to clobber an existing run."""
    if resume:
        checkpoint = last_complete_checkpoint(run / "checkpoints") if (run / "checkpoints").is_dir() else None
        if checkpoint is None:
            raise InputError(f"{run}: no complete checkpoint to resume from; start a new run without --resume")
        return checkpoint
    if run.exists() and any(run.iterdir()):
        if not overwrite:
            raise InputError(f"{run}: run folder exists; pass --overwrite to replace it, or --resume to continue it")
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    return None


def load_split(cfg: TrainConfig):
    options = dict(prompt_column=cfg.prompt_column, response_column=cfg.response_column,
                   first_speaker=cfg.first_speaker)
    conversations, data_report = load_conversations(cfg.data, limit=cfg.limit, **options)
    if cfg.eval_data is None:
        train_set, eval_set = split_conversations(conversations, cfg.eval_fraction, cfg.seed, source=cfg.data)
        eval_report = None
    else:
        train_set = conversations
        eval_set, eval_report = load_conversations(cfg.eval_data, **options)
    eval_set = eval_set[: cfg.eval_limit] if cfg.eval_limit else eval_set
    if cfg.system_prompt:
        train_set, eval_set = (_with_system(cfg.system_prompt, part) for part in (train_set, eval_set))
    report = {"data": data_report.to_dict(), "eval_data": eval_report.to_dict() if eval_report else None,
              "train_conversations": len(train_set), "eval_conversations": len(eval_set)}
    return train_set, eval_set, report


def _with_system(prompt: str, conversations: list[list[dict]]) -> list[list[dict]]:
    return [c if c[0]["role"] == "system" else [{"role": "system", "content": prompt}, *c] for c in conversations]


def tokenize_split(cfg: TrainConfig, tokenizer, train_set, eval_set, report: dict):
    train_examples, train_cut = tokenize_conversations(tokenizer, train_set, cfg.max_length, cfg.loss_on)
    eval_examples, eval_cut = tokenize_conversations(tokenizer, eval_set, cfg.max_length, cfg.loss_on)
    if not train_examples or not eval_examples:
        raise InputError(
            f"{cfg.data}: no conversation has a reply within max_length={cfg.max_length} tokens "
            f"({len(train_examples)} train, {len(eval_examples)} eval left); raise max_length"
        )
    report.update({
        "dropped_no_reply_within_max_length": {"train": train_cut, "eval": eval_cut},
        "train_tokens": token_stats(train_examples),
    })
    return train_examples, eval_examples


def lora_config(cfg: TrainConfig):
    """The PEFT LoraConfig of a run (also handed to TRL by the benchmark, so both train the same adapter)."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")


def add_lora(model, cfg: TrainConfig):
    from peft import get_peft_model

    return get_peft_model(model, lora_config(cfg))


def use_bf16(precision: str, device) -> bool:
    if precision == "bf16" and not bf16_supported(device):
        raise InputError(f"precision=bf16: this {device.type} has no native bf16; use precision=auto or fp32")
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))


def make_trainer(cfg, run, model, tokenizer, train_examples, eval_examples, bf16, console):
    from torch.utils.tensorboard import SummaryWriter
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments
    from transformers.integrations import TensorBoardCallback

    args = TrainingArguments(
        output_dir=str(run / "checkpoints"),
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
        save_steps=cfg.eval_steps,
        save_total_limit=cfg.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=cfg.logging_steps,
        # packed rows are all ~max_length; unpacked, similar lengths together means less padding
        train_sampling_strategy="random" if cfg.packing else "group_by_length",
        bf16=bf16,
        use_cpu=model.device.type == "cpu",
        dataloader_pin_memory=model.device.type == "cuda",
        remove_unused_columns=False,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
    )
    callbacks = [
        RichProgress(console),
        MetricsLog(run / "metrics.jsonl"),
        CheckpointMarker(),
        TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(run / "tensorboard"))),
    ]
    if cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    # Without a KV cache transformers derives the block-causal mask of packed rows from their position ids (the
    # target-only loss asks for that itself; a model's own forward, used for other architectures, needs this).
    model.config.use_cache = False
    if cfg.packing:
        train_examples, eval_examples = (pack_examples(part, cfg.max_length) for part in (train_examples, eval_examples))
        # compiled code wants one shape: full rows (packed rows are nearly full anyway)
        collator = PackedCollator(tokenizer.pad_token_id, cfg.max_length if cfg.compile else None)
    else:
        collator = PadCollator(tokenizer.pad_token_id)
    trainer_class = FastTrainer if supports_target_only_loss(model) else Trainer
    if cfg.compile:
        if not supports_target_only_loss(model):
            raise InputError(f"compile: supported for {', '.join(sorted(PLAIN_HEAD_MODEL_TYPES))} models, "
                             f"not {model.config.model_type}; set compile=false")
        compile_decoder_layers(model)
    trainer = trainer_class(model=model, args=args, data_collator=collator, train_dataset=train_examples,
                            eval_dataset=eval_examples, processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # RichProgress prints instead of raw log dicts
    return trainer


def _save_model(cfg: TrainConfig, run: Path, model, tokenizer, merge: bool) -> None:
    if cfg.method == "lora":
        with atomic_directory(run / "adapter") as folder:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        if not merge:
            return
        model = model.merge_and_unload()
    with atomic_directory(run / "model") as folder:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
