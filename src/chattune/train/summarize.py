"""Fine-tune a model to summarise (LoRA or full weights): `task: summarize`, (dialogue or document) -> summary.

    chattune train configs/summarize.yaml --output runs/summarize        # SmolLM2 + LoRA on aclsum, offline
    chattune train configs/summarize.yaml --model google/flan-t5-base --data dialogsum.csv --output runs/dialogsum
    chattune summarize runs/summarize --text "#Person1#: ..."

Two model families, one file:
- encoder-decoder (T5, Flan-T5, mT5, BART): the source (after T5's `summarize: ` prefix) is the encoder input, the
  summary the labels; transformers' Seq2SeqTrainer, LoRA on the attention query/value projections by default.
- causal LM (SmolLM2, Llama, GPT-2, ...): the request and source are the user's turn of the chat template, the summary
  the reply, and only the summary tokens (with the end-of-turn token) are trained; packed rows and the target-only
  loss of train/fast.py, as chat training.

Reads top to bottom: prepare the run folder -> read and split the pairs (chattune.data.pairs) -> load the model ->
tokenize, dropping pairs longer than max_length -> train (early stopping on eval loss, best checkpoint restored,
--resume from the last complete checkpoint) -> write the run folder (layout: chattune/runs.py). The held-out pairs
are returned for the zero-shot vs tuned evaluation that follows (chattune.evaluate.summarize via chattune.pipeline).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from chattune.config import SummarizeConfig, save_config
from chattune.data.chat import IGNORE_INDEX, end_of_turn_token, tokenize_conversation
from chattune.data.collate import PadCollator
from chattune.data.pairs import Pair, load_pairs_split, pair_conversation, prompt_text
from chattune.errors import InputError
from chattune.evaluate.fit import read_log_fit
from chattune.files import atomic_write_json
from chattune.models import load_any_model
from chattune.precision import use_bf16
from chattune.runs import Run
from chattune.train.callbacks import RichProgress
from chattune.train.common import (add_lora, build_trainer, cleanup_on_failure, global_batch, prepare_run_folder,
                                   save_model, seed_everything, train_or_finish)
from chattune.train.distributed import enable_fsdp_on_cpu, is_main_process, process_state, trained_model
from chattune.train.fast import FastTrainer, PackedCollator, pack_examples, supports_target_only_loss


def train_summarizer(cfg: SummarizeConfig, run: Path, *, resume: bool = False, overwrite: bool = False,
                     merge: bool = False, console: Console | None = None) -> list[Pair] | None:
    """Train into `run`; returns the held-out pairs that fit max_length (the ones the evaluation summarises), or
    None on the ranks other than 0 of a distributed launch."""
    console = console or Console(stderr=True)
    started = time.time()
    checkpoint = prepare_run_folder(run, resume=resume, overwrite=overwrite)
    folder = Run(run)
    main = is_main_process()  # only rank 0 of a distributed launch writes
    with cleanup_on_failure(run, fresh=checkpoint is None):
        if main:
            save_config(cfg, folder.config_path)
        seed_everything(cfg.seed)
        train_pairs, eval_pairs, report = load_pairs_split(cfg)
        model, tokenizer = load_any_model(cfg.model)
        seq2seq = model.config.is_encoder_decoder
        train_set, _ = encode(cfg, model, tokenizer, train_pairs, report, "train")
        eval_set, eval_pairs = encode(cfg, model, tokenizer, eval_pairs, report, "eval")
        if main:  # one report and one line per launch, not one per rank
            atomic_write_json(folder.data_report_path, report)
            console.print(f"data: {len(train_set)} train / {len(eval_set)} eval pairs, "
                          f"{report['train_tokens']['trained_total']} trained summary tokens; "
                          f"{'seq2seq' if seq2seq else 'causal LM'} model {cfg.model}")
        model.to(process_state().device)  # this rank's GPU under torchrun, else the one GPU or the CPU
        if cfg.method == "lora":
            model = add_lora(model, cfg, "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM")
        make = seq2seq_trainer if seq2seq else causal_trainer
        trainer = make(cfg, run, model, tokenizer, train_set, eval_set, RichProgress(console))
        if not seq2seq:  # FSDP on CPU was run and checked with causal LMs only
            enable_fsdp_on_cpu(trainer)
        train_or_finish(trainer, checkpoint)
        # the best checkpoint (restored by load_best_model_at_end), gathered to rank 0 under FSDP
        model = trained_model(trainer, lambda: _fresh_model(cfg))
    if not main:
        return None
    if not model.config.is_encoder_decoder:
        model.config.use_cache = True  # causal_trainer turned it off for training
    save_model(cfg, folder, model, tokenizer, merge)
    fit = read_log_fit(folder.metrics_log_path)  # the curves in words, with their numbers (`chattune train` says it)
    atomic_write_json(folder.metrics_path, {
        "best_eval_loss": trainer.state.best_metric,  # summary tokens of the held-out pairs
        "steps": trainer.state.global_step,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        **global_batch(trainer),
        "train_seconds": round(time.time() - started, 1),
        "fit": fit,
    })
    return eval_pairs


def _fresh_model(cfg: SummarizeConfig):
    """An untrained model of the layout train_summarizer trains (trained_model loads the gathered weights into it)."""
    model, _ = load_any_model(cfg.model)
    if cfg.method != "lora":
        return model
    return add_lora(model, cfg, "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM")


def encode(cfg: SummarizeConfig, model, tokenizer, pairs: list[Pair], report: dict, side: str):
    """(examples, the pairs they encode): input ids and labels of each pair that fits in max_length tokens; the
    others are dropped and counted in the report ("too long")."""
    seq2seq_type = model.config.model_type if model.config.is_encoder_decoder else None
    end_token = None if seq2seq_type else end_of_turn_token(tokenizer)
    examples, kept = [], []
    for pair in pairs:
        if seq2seq_type:
            example = {"input_ids": tokenizer(prompt_text(pair, cfg.instruction, seq2seq_type))["input_ids"],
                       "labels": tokenizer(text_target=pair.summary)["input_ids"]}
        else:  # cut one token past the limit, so that a pair over it shows
            example = tokenize_conversation(tokenizer, pair_conversation(pair, cfg.instruction), end_token,
                                            cfg.max_length + 1)
        # None: the request and source alone pass the limit
        if example is not None and max(len(example["input_ids"]), len(example["labels"])) <= cfg.max_length:
            examples.append(example)
            kept.append(pair)
    report.setdefault("dropped_too_long", {})[side] = len(pairs) - len(kept)
    report[f"{side}_pairs"] = len(kept)
    if not examples:
        source = cfg.data if side == "train" else cfg.eval_data or cfg.data
        raise InputError(f"{source}: no {side} pair fits in max_length={cfg.max_length} tokens "
                         f"({len(pairs)} too long); raise max_length")
    if side == "train":
        report["train_tokens"] = {"total": sum(len(e["input_ids"]) + len(e["labels"]) * bool(seq2seq_type)
                                               for e in examples),
                                  "trained_total": sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples)}
    return examples, kept


def _precision_arguments(cfg: SummarizeConfig, model) -> dict:
    return dict(bf16=use_bf16(cfg.precision, model.device))


def seq2seq_trainer(cfg: SummarizeConfig, run: Path, model, tokenizer, train_set, eval_set, progress):
    """Seq2SeqTrainer: the labels are padded with -100 and shifted into decoder inputs by the model itself. Eval
    loss picks the best checkpoint; ROUGE comes once, after training, from the evaluation (generating at every
    evaluation would cost minutes on a CPU)."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    return build_trainer(
        cfg, run, model, tokenizer, train_set, eval_set,
        DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX), progress,
        trainer_class=Seq2SeqTrainer, arguments_class=Seq2SeqTrainingArguments, predict_with_generate=False,
        train_sampling_strategy="group_by_length",  # similar lengths together: less padding
        **_precision_arguments(cfg, model))


def causal_trainer(cfg: SummarizeConfig, run: Path, model, tokenizer, train_set, eval_set, progress):
    """Chat training's fast path where the architecture has it: pairs packed into max_length rows, the LM head
    run only at summary tokens (train/fast.py); a padded batch and the model's own loss elsewhere."""
    model.config.use_cache = False  # packed rows need the position-id mask, which a KV cache turns off
    fast = supports_target_only_loss(model)
    if fast:
        train_set, eval_set = pack_examples(train_set, cfg.max_length), pack_examples(eval_set, cfg.max_length)
    collator = PackedCollator(tokenizer.pad_token_id) if fast else PadCollator(tokenizer.pad_token_id)
    return build_trainer(
        cfg, run, model, tokenizer, train_set, eval_set, collator, progress,
        trainer_class=FastTrainer if fast else None,
        train_sampling_strategy="random" if fast else "group_by_length",
        remove_unused_columns=False,  # the packed collator needs position_ids
        **_precision_arguments(cfg, model))

