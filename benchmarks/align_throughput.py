"""GRPO throughput: TRL's GRPOTrainer with its defaults against chattune's align trainer, side by side in one run.

    python benchmarks/align_throughput.py                   # 4 prompts x k=4, 32 new tokens, 1 + 3 steps; 12 min on 2 AVX2 cores
    python benchmarks/align_throughput.py --steps 5 --max-new-tokens 64

All rows get the same model (SmolLM2-135M-Instruct with a fresh LoRA adapter of the same settings), the same
prompts (chit-chat contexts, as `chattune align` makes them), k, completion length, sampling (temperature 1, TRL's
top_p/top_k), batch, learning rate, KL weight, rewards (the cheap built-in `ending` and `length`, so the rows time
RL and not a reward model) and number of steps. Everything else is each trainer's default: TRL 1.x turns bf16
autocast and gradient checkpointing on; chattune keeps fp32 where bf16 is not native, no checkpointing, and decodes
the rollouts with its own batch decoder, the LoRA adapter merged and each prompt read once (chattune.train.rollouts).

TRL gets two rows, as in train_throughput.py: its defaults as they behave here (on a CPU without native bf16 the
autocast is emulated and very slow, so that row runs in a process killed after --stall-budget seconds, and reports
the rollouts it finished by then), and its defaults with bf16=False. Each row runs in a fresh subprocess; the first
--warmup steps are not timed. Reported: rollout tokens/s (completion tokens, up to and including the end-of-turn
token, over the time spent in TRL's generate call), steps/s, and the ratio against each TRL row.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from machine import precision_flags, write_result
from train_throughput import MODEL, in_subprocess, report_partial


def align_config(args):
    from chattune.config import load_config

    return load_config(overrides=[
        "task=align", f"data={args.data}", f"limit={args.limit}", f"model={MODEL}", "method=lora",
        f"batch_size={args.prompts * args.k}", f"num_generations={args.k}", f"max_new_tokens={args.max_new_tokens}",
        f"max_steps={args.steps + args.warmup}", f"train_prompts={args.prompts * (args.steps + args.warmup)}",
        "rewards={ending: 1.0, length: 0.5}", "logging_steps=1000", "lora.r=16", "lora.alpha=32",
        "lora.dropout=0.0", "lora.target_modules=all-linear", "eval_prompts=0", "report_to=none",
    ])


def prompts_and_rewards(cfg, tokenizer):
    """The rows' shared prompts (contexts of the training split) and reward functions."""
    from chattune.data.load import load_chat_split
    from chattune.train.align import prompt_dataset, training_contexts
    from chattune.train.rewards import load_rewards

    train_set, _, _ = load_chat_split(cfg)
    dataset = prompt_dataset(training_contexts(cfg, train_set)[: cfg.train_prompts], {})
    return dataset, load_rewards(cfg.rewards, tokenizer, cfg)


class RolloutMeter:
    """Times TRL's generate call (`_generate_single_turn`) and every optimizer step of a trainer."""

    def __init__(self, trainer, row: dict):
        self.rollouts, self.step_ends, self.row = [], [], row  # row: the trainer's name, precision and settings
        generate = trainer._generate_single_turn

        def timed(*args, **kwargs):
            started = time.perf_counter()
            completion_ids, logprobs = generate(*args, **kwargs)
            self.rollouts.append({"seconds": time.perf_counter() - started, "rows": len(completion_ids),
                                  "tokens": sum(len(ids) for ids in completion_ids)})
            report_partial(self.summary(warmup=0))  # a row killed later still reports these
            return completion_ids, logprobs

        trainer._generate_single_turn = timed
        from transformers import TrainerCallback

        meter = self

        class StepTimer(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                meter.step_ends.append(time.perf_counter())

        trainer.add_callback(StepTimer())

    def summary(self, warmup: int) -> dict:
        rollouts = self.rollouts[warmup:] or self.rollouts  # a stalled row: whatever it finished
        seconds, tokens = sum(r["seconds"] for r in rollouts), sum(r["tokens"] for r in rollouts)
        timed_steps = len(self.step_ends) - warmup
        step_seconds = self.step_ends[-1] - self.step_ends[warmup - 1] if timed_steps > 0 and warmup > 0 else None
        return {**self.row, "rollouts_timed": len(rollouts), "rollout_seconds": round(seconds, 2),
                "completion_tokens": tokens, "rollout_tokens_per_s": tokens / seconds,
                "steps_timed": max(timed_steps, 0),
                "steps_per_s": timed_steps / step_seconds if step_seconds else None}


def run_chattune(args, method: str = "lora") -> dict:
    from rich.console import Console

    from chattune.models import load_model
    from chattune.train.align import make_trainer
    from chattune.train.common import add_lora, seed_everything
    from chattune.precision import use_bf16

    cfg = align_config(args)
    seed_everything(cfg.seed)
    model, tokenizer = load_model(cfg.model)
    dataset, _ = prompts_and_rewards(cfg, tokenizer)
    model = add_lora(model, cfg)  # what an align run continues: a PeftModel (TRL adds its frozen "ref" copy)
    precision = "bf16" if use_bf16(cfg.precision, model.device) else "fp32"
    with tempfile.TemporaryDirectory() as run:
        trainer = make_trainer(cfg, Path(run), model, tokenizer, dataset, Console(quiet=True))
        meter = RolloutMeter(trainer, {"trainer": "chattune", "precision": precision, "settings": (
            f"precision={precision}, memory={cfg.memory} micro-batches, "
            "rollouts by chattune's batch decoder with the LoRA merged")})
        trainer.train()
    return meter.summary(args.warmup)


def run_trl(args, method: str, bf16: bool) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    from chattune.models import load_model
    from chattune.train.common import lora_config, seed_everything
    from chattune.precision import bf16_supported

    cfg = align_config(args)
    seed_everything(cfg.seed)
    model, tokenizer = load_model(cfg.model)
    dataset, rewards = prompts_and_rewards(cfg, tokenizer)
    emulated = bf16 and not bf16_supported(model.device)
    name = "TRL GRPOTrainer defaults" if bf16 else "TRL bf16=False"
    with tempfile.TemporaryDirectory() as output:
        config = GRPOConfig(output_dir=output, per_device_train_batch_size=cfg.batch_size,
                            num_generations=cfg.num_generations, max_completion_length=cfg.max_new_tokens,
                            temperature=cfg.temperature, beta=cfg.beta, learning_rate=cfg.learning_rate,
                            max_steps=cfg.max_steps, seed=cfg.seed, reward_weights=[w for _, w in rewards],
                            save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
                            use_cpu=True,  # required by transformers for bf16 (TRL's default) on a CPU
                            bf16=bf16)
        trainer = GRPOTrainer(model=model, reward_funcs=[f for f, _ in rewards], args=config, train_dataset=dataset,
                              processing_class=tokenizer, peft_config=lora_config(cfg))
        meter = RolloutMeter(trainer, {
            "trainer": name, "precision": "bf16" if bf16 else "fp32", "bf16_emulated": emulated,
            "settings": f"GRPOConfig defaults{'' if bf16 else ' but bf16=False'}: bf16={config.bf16}"
                        f"{' (emulated: no native bf16)' if emulated else ''}, gradient_checkpointing="
                        f"{config.gradient_checkpointing}"})
        trainer.train()
    return meter.summary(args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="chitchat")
    parser.add_argument("--limit", type=int, default=200, help="conversations read from the corpus")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--k", type=int, default=4, help="completions per prompt (num_generations)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before timing starts")
    parser.add_argument("--stall-budget", type=float, default=300,
                        help="seconds the TRL-defaults row may run where its bf16 is emulated; then it is stopped")
    args = parser.parse_args()

    import torch

    from chattune.models import resolve_model
    from chattune.precision import bf16_supported

    resolve_model(MODEL)  # convert the GGUF once, outside the timed runs
    native_bf16 = bf16_supported(torch.device("cpu"))
    flags = precision_flags()
    print(f"CPU flags: {' '.join(f'{flag}={yes}' for flag, yes in flags.items())}", flush=True)
    rows = []
    for name, target, extra in [("TRL GRPOTrainer defaults", run_trl, (True,)), ("TRL bf16=False", run_trl, (False,)),
                                ("chattune", run_chattune, ())]:
        emulated = target is run_trl and extra[0] and not native_bf16
        row = in_subprocess(target, args, "lora", *extra, timeout=args.stall_budget if emulated else None)
        if row is None:
            print(f"{name}: no rollout finished within {args.stall_budget:.0f} s; stopped", flush=True)
            continue
        rows.append(row)
        print(row_line(row), flush=True)
    print_table(rows, args)
    write_result("align_throughput", {"args": vars(args), "cpu_flags": flags, "rows": rows})


def row_line(row: dict) -> str:
    steps = f"{row['steps_per_s']:.3f} steps/s" if row["steps_per_s"] else "no timed step"
    stopped = f", stopped after {row['stopped_after_s']:.0f} s" if "stopped_after_s" in row else ""
    return (f"{row['trainer']:26} {row['precision']}  rollout {row['rollout_tokens_per_s']:6.1f} tok/s "
            f"({row['completion_tokens']} tokens in {row['rollouts_timed']} rollouts, {row['rollout_seconds']} s)  "
            f"{steps}{stopped}  [{row['settings']}]")


def print_table(rows: list[dict], args) -> None:
    print(f"\nGRPO, SmolLM2-135M LoRA, {args.prompts} prompts x k={args.k}, {args.max_new_tokens} new tokens, "
          f"{args.steps} timed steps after {args.warmup}")
    print(f"{'trainer':27}{'prec':5}{'rollout tok/s':>14}{'steps/s':>9}")
    for row in rows:
        steps = f"{row['steps_per_s']:.3f}" if row["steps_per_s"] else "-"
        note = f"  stopped after {row['stopped_after_s']:.0f} s" if "stopped_after_s" in row else ""
        print(f"{row['trainer']:27}{row['precision']:5}{row['rollout_tokens_per_s']:14.1f}{steps:>9}{note}")
    ours = next((row for row in rows if row["trainer"] == "chattune"), None)
    for trl in (row for row in rows if row["trainer"].startswith("TRL") and ours):
        step_ratio = (f", steps/s {ours['steps_per_s'] / trl['steps_per_s']:.2f}x"
                      if ours["steps_per_s"] and trl["steps_per_s"] else "")
        print(f"chattune / {trl['trainer']}: rollout tokens/s "
              f"{ours['rollout_tokens_per_s'] / trl['rollout_tokens_per_s']:.2f}x{step_ratio}")


if __name__ == "__main__":
    main()
