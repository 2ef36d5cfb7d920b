"""Align a chat run with reward-based RL (GRPO, RLOO) or with preference pairs (DPO), on TRL's trainers: `task: align`.

    chattune align runs/demo configs/detox.yaml --output runs/detox                   # GRPO on toxicity + relevance
    chattune align runs/demo --method dpo --data feedback.sqlite --output runs/dpo     # the web chat's thumbs and edits

Reads top to bottom: open the parent chat run -> prepare the run folder -> the parent's own split (its held-out
conversations stay held out) -> the policy from the parent (LoRA: its adapter, trainable; full: its weights) -> the
prompts (the contexts of the training split, or --prompts, each cut to its latest exchanges that fit
max_prompt_tokens; --toxic-prone keeps those where the parent's sampled replies reach the threshold) or the preference
pairs -> TRL's GRPOTrainer / RLOOTrainer / DPOTrainer with the shared callbacks (metrics.jsonl, TensorBoard, the
progress line with reward and KL) -> save the adapter or weights (TRL's frozen reference copy left out) ->
metrics.json. Returns what the before/after evaluation needs (chattune.evaluate.align, called by chattune.pipeline).

Speed: the rollouts of a step, all k completions of all its prompts, decode as one batch of chattune's decoder with
the LoRA adapter merged, each prompt read once (chattune.train.rollouts), in the parent's precision choice (fp32 on
CPUs without native bf16), where TRL's defaults turn on bf16 autocast and `generate` through the unmerged adapter.
The loss runs in the micro-batches of `memory` (balanced: activations within a budget, checkpointing only the layers
that must be, where TRL's default checkpoints every layer). benchmarks/align_throughput.py measures both side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from chattune.config import AlignConfig, save_config
from chattune.data.conversation import Conversation, with_system
from chattune.data.load import load_chat_split, load_conversations, reader_options
from chattune.data.preferences import read_preferences
from chattune.data.windows import latest_turns
from chattune.errors import InputError
from chattune.evaluate.generation import reply_pairs
from chattune.evaluate.safety import toxicity
from chattune.files import atomic_write_json
from chattune.generate.batch import sampled_replies
from chattune.generate.hf import HFBackend
from chattune.generate.sampling import Sampling
from chattune.models import load_model, load_tokenizer
from chattune.precision import use_bf16
from chattune.runs import Run
from chattune.train.callbacks import ReleaseFusedLoRA, RichProgress
from chattune.train.common import (cleanup_on_failure, device_arguments, prepare_run_folder, save_weights,
                                   seed_everything, shared_callbacks, training_arguments)
from chattune.train.rewards import load_rewards
from chattune.train.rollouts import merged_rollouts
from chattune.train.fused_lora import fuse_lora
from chattune.train.sft import fit_memory, wants_int8_base

FILTER_SEED_OFFSET = 1_000  # the toxic-prone filter samples with seed + this: the evaluation's samples are fresh ones


@dataclass
class Aligned:
    """What the evaluation after alignment needs: held-out contexts (never trained on, toxic-prone filtered when
    asked), the held-out conversations for perplexity, and how many contexts each filter kept."""

    eval_contexts: list[Conversation]
    eval_conversations: list[Conversation]
    prompts_report: dict = field(default_factory=dict)


def align(cfg: AlignConfig, run: Path, *, overwrite: bool = False, console: Console | None = None) -> Aligned:
    console = console or Console(stderr=True)
    started = time.time()
    parent = Run.open(cfg.parent)
    prepare_run_folder(run, resume=False, overwrite=overwrite)
    folder = Run(run)
    with cleanup_on_failure(run, fresh=True):
        save_config(cfg, folder.config_path)
        seed_everything(cfg.seed)
        train_set, eval_set, data_report = load_chat_split(cfg)  # the parent's data, fraction and split seed
        model, tokenizer = load_policy(parent, cfg)
        report = {"data": data_report}
        if cfg.algorithm == "dpo":
            dataset = preference_dataset(cfg, report)
        else:
            contexts = fitted_contexts(training_contexts(cfg, train_set), tokenizer, cfg.prompt_tokens)
            if cfg.toxic_prone:
                contexts = toxic_prone(cfg, model, tokenizer, contexts[: cfg.toxic_prone_contexts], report, "train",
                                       console)
            dataset = prompt_dataset(contexts[: cfg.train_prompts], report)
        held_out = held_out_contexts(cfg, eval_set, model, tokenizer, report, console)
        atomic_write_json(folder.data_report_path, report)
        trainer = make_trainer(cfg, run, model, tokenizer, dataset, console)
        fuse_policy(cfg, parent, trainer, console)
        trainer.train()
    save_policy(cfg, folder, trainer.model, tokenizer)
    atomic_write_json(folder.metrics_path, {
        "parent": str(parent.path),
        "algorithm": cfg.algorithm,
        "steps": trainer.state.global_step,
        "prompts": report.get("prompts"),
        "train_seconds": round(time.time() - started, 1),
    })
    return Aligned(held_out, eval_set[: cfg.eval_conversations], report.get("toxic_prone", {}))


def load_policy(parent: Run, cfg: AlignConfig):
    """The parent's model, trainable: its LoRA adapter over the base model (the base stays frozen), or its full
    weights, on the GPU when there is one. The tokenizer is the parent's, with the chat template it trained with."""
    if parent.task not in ("chat", "align"):
        raise InputError(f"{parent.path}: a {parent.task} run; align continues a chat run (task: chat)")
    tokenizer = load_tokenizer(str(parent.tokenizer_dir))
    if cfg.method == "lora":
        if not parent.adapter_dir.is_dir():
            raise InputError(f"{parent.path}: method lora but the run has no adapter/ folder; did training finish?")
        from peft import PeftModel

        base, _ = load_model(cfg.model)
        model = PeftModel.from_pretrained(base, parent.adapter_dir, is_trainable=True)
    else:
        model, _ = load_model(str(parent.weights))
    return model.to("cuda" if torch.cuda.is_available() else "cpu"), tokenizer


def training_contexts(cfg: AlignConfig, train_set: list[Conversation]) -> list[Conversation]:
    """One context (the turns up to a user turn) per conversation: of --prompts when given, else of the parent's
    training split."""
    if cfg.prompts is None:
        return [pair.context for pair in reply_pairs(train_set, cfg.seed)]
    conversations, _ = load_conversations(cfg.prompts, **reader_options(cfg))
    return [pair.context for pair in reply_pairs([with_system(c, cfg.system_prompt) for c in conversations], cfg.seed)]


def fitted_contexts(contexts: list[Conversation], tokenizer, max_tokens: int) -> list[Conversation]:
    """Each context cut to its latest whole exchanges that fit `max_tokens` rendered with the chat template, and a
    last turn that is longer on its own cut to its end: the prompts of training, of the toxic-prone filter and of
    the evaluation, so all three see the same conversation. (Every completion of a step is padded to the step's
    longest prompt: one 500-token message made a GRPO step 2.7x slower.)"""

    def token_length(context: Conversation) -> int:
        return len(tokenizer(tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=False),
                             add_special_tokens=False)["input_ids"])

    fitted = []
    for context in contexts:
        context = latest_turns(context, token_length, max_tokens)
        over = token_length(context) - max_tokens
        if over > 0:
            last = tokenizer(context[-1]["content"], add_special_tokens=False)["input_ids"]
            context = [*context[:-1], {**context[-1], "content": tokenizer.decode(last[over:]).lstrip()}]
        fitted.append(context)
    return fitted


def held_out_contexts(cfg: AlignConfig, eval_set: list[Conversation], model, tokenizer, report: dict,
                      console: Console) -> list[Conversation]:
    """What the before/after evaluation scores: a context of each held-out conversation (never trained on), fitted to
    max_prompt_tokens as the training prompts are, toxic-prone filtered with the parent's replies when the training
    prompts were (`model` is the parent's), at most eval_prompts. `chattune eval` of an align run rebuilds them so."""
    contexts = fitted_contexts([pair.context for pair in reply_pairs(eval_set, cfg.seed)], tokenizer, cfg.prompt_tokens)
    if cfg.toxic_prone and cfg.algorithm != "dpo" and cfg.eval_prompts:
        contexts = toxic_prone(cfg, model, tokenizer, contexts, report, "eval", console)
    return contexts[: cfg.eval_prompts]


def toxic_prone(cfg: AlignConfig, model, tokenizer, contexts: list[Conversation], report: dict, side: str,
                console: Console) -> list[Conversation]:
    """The contexts where the most toxic of the parent's `toxic_prone_samples` sampled replies reaches the
    threshold (RealToxicityPrompts' idea: train and test where the model goes wrong)."""
    backend = HFBackend(model, tokenizer, cfg.system_prompt)
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + FILTER_SEED_OFFSET)
    console.print(f"toxic-prone filter ({side}): {len(contexts)} contexts x {cfg.toxic_prone_samples} sampled replies")
    replies = sampled_replies(backend, contexts, cfg.toxic_prone_samples, sampling)
    worst = [max(toxicity([reply.text for reply in group])) for group in replies]
    kept = [context for context, score in zip(contexts, worst) if score >= cfg.toxic_prone_threshold]
    report.setdefault("toxic_prone", {})[side] = {"scored": len(contexts), "kept": len(kept),
                                                  "threshold": cfg.toxic_prone_threshold}
    console.print(f"toxic-prone ({side}): kept {len(kept)} of {len(contexts)} contexts (a sampled reply with "
                  f"p(toxic) >= {cfg.toxic_prone_threshold})")
    if not kept:
        raise InputError(f"toxic_prone: none of the {len(contexts)} {side} contexts reached p(toxic) >= "
                         f"{cfg.toxic_prone_threshold}; lower toxic_prone_threshold or give more prompts")
    return kept


def prompt_dataset(contexts: list[Conversation], report: dict):
    from datasets import Dataset

    report["prompts"] = len(contexts)
    return Dataset.from_list([{"prompt": context} for context in contexts])


def preference_dataset(cfg: AlignConfig, report: dict):
    from datasets import Dataset

    if cfg.preferences is None:
        raise InputError("align --method dpo: give the preference pairs with --data FILE (JSONL/CSV of "
                         "prompt/chosen/rejected, or the SQLite file of `chattune serve`)")
    pairs = read_preferences(cfg.preferences)
    report["prompts"] = len(pairs)
    report["preferences"] = {"source": cfg.preferences, "pairs": len(pairs)}
    return Dataset.from_list([{**pair, "prompt": with_system(pair["prompt"], cfg.system_prompt)} for pair in pairs])


def trl_arguments(cfg: AlignConfig, run: Path, arguments_class, device, **method_arguments):
    """TRL's config from the shared fields (training_arguments), with what alignment changes: no evaluation or
    checkpoints during training (the before/after evaluation follows), and the parent's precision choice with TRL's
    all-layer gradient checkpointing off (fit_memory checkpoints only the layers `memory` needs; TRL turns bf16 and
    checkpointing on by default, and a CPU without native bf16 loses time to each)."""
    return training_arguments(
        cfg, run, arguments_class=arguments_class,
        eval_strategy="no", save_strategy="no", load_best_model_at_end=False, metric_for_best_model=None,
        bf16=use_bf16(cfg.precision, device), gradient_checkpointing=False,
        **device_arguments(device), beta=cfg.beta, **method_arguments)


def make_trainer(cfg: AlignConfig, run: Path, model, tokenizer, dataset, console: Console):
    """TRL's trainer for cfg.algorithm. Its batch is split into the micro-batches `cfg.memory` plans (fit_memory,
    as SFT's): GRPO and RLOO still decode all completions of a step in one generate call (TRL's generation batch is
    the micro-batch times the accumulation steps), then run the loss a micro-batch at a time, so the activations of
    the forward and backward over prompts and completions stay within the budget."""
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    callbacks = shared_callbacks(cfg, run, RichProgress(console))
    if cfg.algorithm == "dpo":
        args = trl_arguments(cfg, run, DPOConfig, model.device, max_length=cfg.max_length,
                             **fit_memory(cfg, model, console))
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             callbacks=callbacks)
    else:
        rewards = load_rewards(cfg.rewards, tokenizer, cfg)
        micro_batch = fit_memory(cfg, model, console, row_tokens=cfg.prompt_tokens + cfg.max_new_tokens)
        arguments_class, trainer_class, method_arguments = (
            (GRPOConfig, merged_rollouts(GRPOTrainer), {"multi_objective_aggregation": cfg.reward_aggregation,
                                                          "scale_rewards": cfg.scale_rewards})
            if cfg.algorithm == "grpo" else (RLOOConfig, merged_rollouts(RLOOTrainer), {}))
        args = trl_arguments(cfg, run, arguments_class, model.device, num_generations=cfg.num_generations,
                             max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature,
                             reward_weights=[weight for _, weight in rewards],
                             **micro_batch, **method_arguments)
        trainer = trainer_class(model=model, reward_funcs=[function for function, _ in rewards], args=args,
                                train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # RichProgress prints instead of raw log dicts
    return trainer


def fuse_policy(cfg: AlignConfig, parent: Run, trainer, console: Console) -> None:
    """A LoRA policy's layers fused as SFT's are (train/fused_lora.py: the update's forward and backward were ~80% of
    a GRPO step), for the training steps only. Its frozen base is read in int8 where the parent's own check kept it
    (`int8_base: auto`: the same base weights, probed on the parent's first training batch) or `int8_base: true`.
    Rollouts decode with the adapter merged and in eval mode, where the layers take peft's own path."""
    if cfg.method != "lora":
        return
    probed = (parent.metrics().get("int8_base") or {}) if parent.metrics_path.is_file() else {}
    supported = wants_int8_base(cfg, trainer.model)  # int8_base=true where it cannot run: one error line
    int8 = supported and (cfg.int8_base is True or bool(probed.get("used")))
    fused = fuse_lora(trainer.model, int8_base=int8)
    trainer.add_callback(ReleaseFusedLoRA(fused))
    console.print(f"fused LoRA layers: {len(fused.layers)}, frozen base in {'int8' if fused.int8 else 'float'}"
                  + (" (the parent's own int8 check did not keep it)" if supported and not int8 else ""))


def save_policy(cfg: AlignConfig, folder: Run, model, tokenizer) -> None:
    """The aligned adapter (or weights) where chat, serve, eval and export read a run's. TRL trains a LoRA policy
    against a frozen copy of the parent's adapter named "ref": it is dropped, so RUN/adapter holds one adapter."""
    if cfg.method == "lora":
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        save_weights(model, tokenizer, folder.adapter_dir)
    else:
        save_weights(model, tokenizer, folder.model_dir)
