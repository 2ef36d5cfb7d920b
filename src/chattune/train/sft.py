"""Supervised fine-tuning of a causal LM on conversations (LoRA or full weights): `task: chat`.

    chattune train configs/demo.yaml --output runs/demo

Reads top to bottom: prepare the run folder -> read, split and tokenize the data (or take it from the cache,
data/prepare.py) -> load the model -> score the base model
on the held-out conversations -> train with transformers' Trainer (early stopping on eval loss, best checkpoint
restored) -> score the tuned model -> write the run folder (layout: chattune/runs.py). The per-conversation scores
are returned, so the evaluation that follows (`chattune.pipeline`) reuses them instead of scoring again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from chattune.config import ChatConfig, save_config
from chattune.data.collate import PadCollator
from chattune.data.conversation import Conversation
from chattune.data.prepare import prepare_chat_data
from chattune.errors import InputError
from chattune.evaluate.fit import read_log_fit
from chattune.evaluate.likelihood import conversation_likelihoods, summarize_likelihoods
from chattune.files import atomic_write_json
from chattune.models import load_model, load_tokenizer
from chattune.precision import use_bf16
from chattune.runs import Run
from chattune.train.callbacks import ReleaseFusedLoRA, RichProgress
from chattune.train.common import (add_lora, build_trainer, cleanup_on_failure, global_batch, prepare_run_folder,
                                   save_model, seed_everything, train_or_finish)
from chattune.train.distributed import enable_fsdp_on_cpu, is_main_process, process_state, trained_model
from chattune.train.fast import (LOSS_CHUNK_TOKENS, PLAIN_HEAD_MODEL_TYPES, FastTrainer, PackedCollator,
                                 compile_decoder_layers, pack_examples, supports_target_only_loss,
                                 target_only_loss)
from chattune.train.fused_lora import fuse_lora, int8_base_supported
from chattune.train.memory import (activation_budget, apply_memory_plan, available_bytes, estimate_peak_bytes,
                                   peak_rss_mb, plan_memory, release_freed_memory, trim_heap)


@dataclass
class HeldOut:
    """The held-out conversations of a run and each one's likelihood under the base and the tuned model (the rows
    of `conversation_likelihoods`), for the evaluation that follows training."""

    conversations: list[Conversation]
    likelihoods: dict[str, list[dict]]  # "base" / "tuned" -> per-conversation rows


def train(cfg: ChatConfig, run: Path, *, resume: bool = False, overwrite: bool = False, merge: bool = False,
          console: Console | None = None, callbacks=(), run_name: str | None = None) -> HeldOut | None:
    """Train into `run`; None on the ranks other than 0 of a distributed launch (rank 0 writes and evaluates).
    `callbacks` and `run_name` are for `chattune tune` (pruning; the trial's name in wandb/mlflow/trackio)."""
    console = console or Console(stderr=True)
    started = time.time()
    checkpoint = prepare_run_folder(run, resume=resume, overwrite=overwrite)
    folder = Run(run)
    main = is_main_process()
    with cleanup_on_failure(run, fresh=checkpoint is None):
        if main:
            save_config(cfg, folder.config_path)
        seed_everything(cfg.seed)
        prepared = prepare_chat_data(cfg, load_tokenizer(cfg.model))  # read back from the cache when unchanged
        train_examples, eval_examples, eval_set, report = (prepared.train_examples, prepared.eval_examples,
                                                           prepared.eval_set, prepared.report)
        model, tokenizer = load_model(cfg.model)
        if main:
            atomic_write_json(folder.data_report_path, report)
            console.print(f"data: {report['train_conversations']} train / {report['eval_conversations']} eval "
                          f"conversations, {report['train_tokens']['trained_total']} trained tokens")
        model.to(process_state().device)  # this rank's GPU under torchrun, else the one GPU or the CPU
        bf16 = use_bf16(cfg.precision, model.device)
        base_rows = score(model, tokenizer, eval_examples, cfg)
        base = summarize_likelihoods(base_rows)
        if main:
            console.print(f"base model: eval loss {base['loss']:.4f}  ppl {base['perplexity']:.2f}")
        if cfg.method == "lora":
            model = add_lora(model, cfg)
        trainer = make_trainer(cfg, run, model, tokenizer, train_examples, eval_examples, bf16, console,
                               callbacks=callbacks, run_name=run_name)
        enable_fsdp_on_cpu(trainer)  # chat and causal summarize runs: where FSDP on CPU was run and checked
        batch = global_batch(trainer)
        if main:
            console.print(f"{describe_batch(trainer, batch)}; {'bf16 autocast' if bf16 else 'fp32'}")
        train_or_finish(trainer, checkpoint)
        # the best checkpoint (restored by load_best_model_at_end), gathered to rank 0 under FSDP
        model = trained_model(trainer, lambda: _fresh_model(cfg))
    if not main:
        return None
    console.print(f"trained {trainer.state.global_step} steps in {time.time() - started:.0f} s, "
                  f"peak RSS {peak_rss_mb():,.0f} MB")
    model.config.use_cache = True  # make_trainer turned it off for training
    tuned_rows = score(model, tokenizer, eval_examples, cfg)
    save_model(cfg, folder, model, tokenizer, merge)
    tuned = summarize_likelihoods(tuned_rows)
    atomic_write_json(folder.metrics_path, {
        "base": base,
        "tuned": tuned,
        "perplexity_change": tuned["perplexity"] / base["perplexity"] - 1.0,
        "steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        **batch,
        "train_seconds": round(time.time() - started, 1),
        "peak_rss_mb": round(peak_rss_mb()),  # training and both scorings, before the reply evaluation
        "memory": cfg.memory, "precision": "bf16" if bf16 else "fp32",  # what `precision: auto` chose here
        "int8_base": trainer.int8_base,  # null where not tried (full fine-tuning, GPU, int8_base=false)
        "fit": read_log_fit(folder.metrics_log_path),  # the curves in words, with their numbers
    })
    return HeldOut(eval_set, {"base": base_rows, "tuned": tuned_rows})


def _fresh_model(cfg: ChatConfig):
    """An untrained model of the layout `train` trains (for trained_model to load the gathered weights into)."""
    model, _ = load_model(cfg.model)
    return add_lora(model, cfg) if cfg.method == "lora" else model


def describe_batch(trainer, batch: dict) -> str:
    return (f"global batch: {batch['global_batch_size']} conversations or packed rows "
            f"({trainer.args.per_device_train_batch_size} per process x {trainer.args.gradient_accumulation_steps} "
            f"accumulated x {batch['world_size']} processes)")


def score(model, tokenizer, examples: list[dict], cfg: ChatConfig) -> list[dict]:
    """Per-conversation likelihood rows. Reported numbers are scored in fp32 whatever the training precision, so
    runs compare across machines."""
    return conversation_likelihoods(model, examples, PadCollator(tokenizer.pad_token_id), cfg.eval_batch_size)


def fit_memory(cfg: ChatConfig, model, console, *, row_tokens: int | None = None) -> dict:
    """Checkpoint the layers `cfg.memory` asks for, warn when the estimated peak exceeds the free memory, and return
    the TrainingArguments of the micro-batch it chose. A batch is cfg.batch_size rows of `row_tokens` tokens
    (default max_length; align passes its prompt and completion budget)."""
    plan = plan_memory(model, cfg.memory, rows=cfg.batch_size, row_tokens=row_tokens or cfg.max_length,
                       budget=activation_budget(model.device))
    apply_memory_plan(model, plan)
    if cfg.memory == "low":  # memory before speed: freed tensors leave RSS, at a page fault per 4 KiB reused
        release_freed_memory()
    vocab = model.get_output_embeddings().weight.shape[0]
    needed, free = estimate_peak_bytes(model, plan, LOSS_CHUNK_TOKENS * vocab * 4), available_bytes()
    if is_main_process():
        console.print(f"{plan.describe()}; estimated peak {needed / 2**30:.1f} GB")
        if free is not None and needed > free:
            console.print(f"[yellow]warning: training needs ~{needed / 2**30:.1f} GB but {free / 2**30:.1f} GB is "
                          "available; it may swap or be killed. Lower batch_size or max_length, or set "
                          "memory=low[/yellow]")
    return {"per_device_train_batch_size": plan.rows,
            "gradient_accumulation_steps": cfg.gradient_accumulation * plan.accumulation}


# int8_base=auto keeps int8 when the first training batch's loss moves by at most this share. It is there to catch
# a model whose activations int8 cannot hold (outlier channels: errors of 10% and more), not to split hairs: on
# SmolLM2, batches of 8 packed rows moved by +0.0% to +1.5% (six batches), and the trained model's held-out loss
# ended within 0.2% of a run in the plain weights.
INT8_LOSS_TOLERANCE = 0.02


def wants_int8_base(cfg: ChatConfig, model) -> bool:
    """int8_base=true: where torch has an exact int8 matmul for this device (CPUs), else one error line; auto:
    LoRA on such a CPU (the loss check follows in `settle_int8_base`)."""
    if cfg.int8_base is True and not int8_base_supported(model.device):
        raise InputError(f"int8_base: the frozen base is read in int8 on CPUs only, where torch's int8 matmul "
                         f"gives exact sums; not on {model.device} here. Set int8_base=false or auto (on a GPU, "
                         "bf16 does the same job)")
    return cfg.int8_base is True or (cfg.int8_base == "auto" and cfg.method == "lora"
                                     and int8_base_supported(model.device))


def settle_int8_base(cfg: ChatConfig, fused, model, batch: dict, bf16: bool, console) -> dict:
    """Compare the first training batch's loss with the int8 base and with the plain weights; under auto, drop
    int8 when they differ by more than INT8_LOSS_TOLERANCE. Returns what was seen, for metrics.json."""

    def loss_of():
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            return target_only_loss(model, batch) if supports_target_only_loss(model) else model(**batch).loss

    model.train()
    int8, plain = fused.compare_int8(loss_of)
    trim_heap()  # the two forward passes' freed buffers: not a part of training's peak
    change = int8 / plain - 1.0
    kept = cfg.int8_base is True or abs(change) <= INT8_LOSS_TOLERANCE
    if not kept:
        fused.drop_int8()
    if is_main_process():
        why = "" if kept else f"; auto allows {INT8_LOSS_TOLERANCE:.0%}"
        console.print(f"int8 base: {'on' if kept else 'off'} (the first training batch's loss {int8:.4f} in int8 vs "
                      f"{plain:.4f} plain, {change:+.2%}{why})")
    return {"used": kept, "probe_loss_int8": round(int8, 4), "probe_loss_plain": round(plain, 4)}


def make_trainer(cfg: ChatConfig, run: Path, model, tokenizer, train_examples, eval_examples, bf16: bool, console, *,
                 callbacks=(), run_name: str | None = None):
    # Without a KV cache transformers derives the block-causal mask of packed rows from their position ids (the
    # target-only loss asks for that itself; a model's own forward, used for other architectures, needs this).
    model.config.use_cache = False
    if cfg.packing:
        train_examples, eval_examples = (pack_examples(part, cfg.max_length) for part in (train_examples, eval_examples))
        # compiled code wants one shape: full rows (packed rows are nearly full anyway)
        collator = PackedCollator(tokenizer.pad_token_id, cfg.max_length if cfg.compile else None)
    else:
        collator = PadCollator(tokenizer.pad_token_id)
    if cfg.compile:
        if not supports_target_only_loss(model):
            raise InputError(f"compile: supported for {', '.join(sorted(PLAIN_HEAD_MODEL_TYPES))} models, "
                             f"not {model.config.model_type}; set compile=false")
        compile_decoder_layers(model)
    fused = fuse_lora(model, int8_base=wants_int8_base(cfg, model))
    micro_batch = fit_memory(cfg, model, console)
    int8_base = None  # not tried: full fine-tuning, a GPU, int8_base=false, no layer to read in int8
    if fused.int8:  # the first batch, forward only and without grad: ~2 s
        batch = {key: value.to(model.device) for key, value in collator(train_examples[:cfg.batch_size]).items()}
        int8_base = settle_int8_base(cfg, fused, model, batch, bf16, console)

    trainer = build_trainer(
        cfg, run, model, tokenizer, train_examples, eval_examples, collator, RichProgress(console),
        trainer_class=FastTrainer if supports_target_only_loss(model) else None,
        callbacks=[*callbacks, ReleaseFusedLoRA(fused)],
        run_name=run_name,
        # packed rows are all ~max_length; unpacked, similar lengths together means less padding
        train_sampling_strategy="random" if cfg.packing else "group_by_length",
        bf16=bf16,
        remove_unused_columns=False,  # the collators need every column (position_ids of packed rows)
        **micro_batch,
    )
    trainer.int8_base = int8_base
    return trainer

