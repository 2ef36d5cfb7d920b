"""Training throughput: TRL's SFTTrainer (its defaults) against chattune's trainer, side by side in one run.

    python benchmarks/train_throughput.py                  # LoRA and full fine-tuning rows, ~10 min on 2 cores
    python benchmarks/train_throughput.py --steps 4 --skip-full

Both trainers get identical data (a fixed chitchat slice, split as chattune splits it), the same model, LoRA
settings, max length, batch size, optimizer (AdamW), learning rate and number of steps; everything else is each
trainer's default (TRL 1.x: bf16 autocast and gradient checkpointing on, no packing, loss on all tokens;
chattune: packing, target-only LM head, bf16 where native, loss on assistant tokens). Each run happens in a fresh
subprocess (so peak RSS is its own), in alternation, and the first `--warmup` steps are not timed.

Reported per run: real tokens/s (non-padding tokens processed), target tokens/s (tokens in the loss), all
tokens/s (padding included), peak RSS, model FLOP utilisation against a bf16 matmul peak measured in the same run,
and the eval loss on the same held-out conversations (chattune's assistant-token loss, fp32, for both).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

from machine import machine_info, matmul_peak_gflops, write_result

MODEL = "smollm2-135m-instruct"


# --ablate: chattune LoRA with one speed trick turned off at a time (config overrides, or the plain model loss)
ABLATIONS = {"all tricks": [], "no packing": ["packing=false"], "fp32 (no bf16)": ["precision=fp32"],
             "full LM head": "plain-loss"}


def shared_config(args, method: str, extra: list[str] = ()):
    from chattune.config import load_config

    return load_config(overrides=[
        f"data={args.data}", f"limit={args.limit}", f"eval_limit={args.eval_limit}", f"model={MODEL}",
        f"method={method}", f"max_length={args.max_length}", f"batch_size={args.batch_size}",
        f"max_steps={args.steps + args.warmup}", "eval_steps=100000", "early_stopping_patience=0",
        "eval_replies=0", "logging_steps=1000", f"lora.r={args.lora_r}", f"lora.alpha={2 * args.lora_r}",
        "lora.dropout=0.0", "lora.target_modules=all-linear",
        f"learning_rate={2e-4 if method == 'lora' else 2e-5}", f"compile={str(args.compile).lower()}", *extra,
    ])


class Meter:
    """Wraps a collator to count the tokens of each batch, and a callback to time each step."""

    def __init__(self, collator):
        self.collator, self.batches, self.step_ends = collator, [], []

    def __call__(self, features):
        batch = self.collator(features)
        real = sum(len(feature["input_ids"]) for feature in features)  # features are unpadded token lists
        targets = int((batch["labels"][:, 1:] != -100).sum())
        self.batches.append({"all": batch["input_ids"].numel(), "real": real, "targets": targets})
        return batch


def timing_callback(meter: Meter):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            meter.step_ends.append(time.perf_counter())

    return StepTimer()


def held_out_loss(model, tokenizer, eval_conversations, max_length) -> float:
    import torch

    from chattune.data.chat import tokenize_conversations
    from chattune.data.collate import PadCollator
    from chattune.evaluate.likelihood import likelihood

    examples, _ = tokenize_conversations(tokenizer, eval_conversations, max_length)
    model = model.float()
    with torch.autocast("cpu", enabled=False):
        return likelihood(model, examples, PadCollator(tokenizer.pad_token_id), batch_size=8)["loss"]


def run_chattune(args, method: str, ablation: str = "all tricks") -> dict:
    from rich.console import Console

    from chattune.data.load import load_chat_split
    from chattune.models import load_model
    from chattune.train import sft
    from chattune.train.common import add_lora

    change = ABLATIONS[ablation]
    if change == "plain-loss":  # the model's own forward and loss: logits for every position
        sft.supports_target_only_loss = lambda model: False
    cfg = shared_config(args, method, [] if change == "plain-loss" else change)
    train_set, eval_set, report = load_chat_split(cfg)
    model, tokenizer = load_model(cfg.model)
    train_examples, eval_examples = sft.tokenize_split(cfg, tokenizer, train_set, eval_set, report)
    bf16 = sft.use_bf16(cfg.precision, model.device)
    if method == "lora":
        model = add_lora(model, cfg)
    with tempfile.TemporaryDirectory() as run:
        trainer = sft.make_trainer(cfg, Path(run), model, tokenizer, train_examples, eval_examples, bf16,
                                   Console(quiet=True))
        result = measured_training(trainer, args.warmup)
    result["eval_loss"] = held_out_loss(trainer.model, tokenizer, eval_set, cfg.max_length)
    result["settings"] = (f"packing={cfg.packing}, precision={'bf16' if bf16 else 'fp32'}, target-only LM head, "
                          f"compile={cfg.compile}")
    return result


def run_trl(args, method: str) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from chattune.data.load import load_chat_split
    from chattune.models import load_model
    from chattune.train.common import lora_config

    cfg = shared_config(args, method)
    train_set, eval_set, _ = load_chat_split(cfg)
    model, tokenizer = load_model(cfg.model)
    peft_config = lora_config(cfg) if method == "lora" else None
    with tempfile.TemporaryDirectory() as output:
        config = SFTConfig(output_dir=output, max_length=cfg.max_length, per_device_train_batch_size=cfg.batch_size,
                           learning_rate=cfg.learning_rate, max_steps=cfg.max_steps, optim="adamw_torch",
                           lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, seed=cfg.seed,
                           save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
                           use_cpu=True)  # required by transformers for bf16 (TRL's default) on a CPU
        dataset = Dataset.from_list([{"messages": conversation} for conversation in train_set])
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
        result = measured_training(trainer, args.warmup)
    result["eval_loss"] = held_out_loss(trainer.model, tokenizer, eval_set, cfg.max_length)
    result["settings"] = (f"SFTConfig defaults: bf16={config.bf16}, gradient_checkpointing="
                          f"{config.gradient_checkpointing}, packing={config.packing}")
    return result


def measured_training(trainer, warmup: int) -> dict:
    """Train with every batch counted and every step timed; the throughput after `warmup` steps."""
    meter = Meter(trainer.data_collator)
    trainer.data_collator = meter
    trainer.add_callback(timing_callback(meter))
    trainer.train()
    return summarise(meter, warmup)


def summarise(meter: Meter, warmup: int) -> dict:
    # batch i is consumed by step i; steps after the warm-up are timed from the end of step `warmup`
    timed = meter.batches[warmup : len(meter.step_ends)]
    seconds = meter.step_ends[-1] - meter.step_ends[warmup - 1]
    totals = {key: sum(batch[key] for batch in timed) for key in ("all", "real", "targets")}
    return {
        "steps_timed": len(timed),
        "seconds": round(seconds, 2),
        "real_tokens_per_s": totals["real"] / seconds,
        "target_tokens_per_s": totals["targets"] / seconds,
        "all_tokens_per_s": totals["all"] / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(target, args, method, extra, queue):
    queue.put(target(args, method, *extra))


def in_subprocess(target, args, method: str, *extra) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, method, extra, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="chitchat")
    parser.add_argument("--limit", type=int, default=400, help="conversations read from the corpus")
    parser.add_argument("--eval-limit", type=int, default=24, help="held-out conversations for the eval loss")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing starts")
    parser.add_argument("--skip-full", action="store_true", help="LoRA rows only")
    parser.add_argument("--compile", action="store_true", help="chattune with compile=true (warm-up must cover it)")
    parser.add_argument("--ablate", action="store_true",
                        help="instead: chattune LoRA with each speed trick turned off in turn (what each contributes)")
    args = parser.parse_args()

    from chattune.models import resolve_model

    resolve_model(MODEL)  # convert the GGUF once, outside the timed runs
    peak = matmul_peak_gflops()
    from chattune.models import load_model

    model, _ = load_model(MODEL)
    params = sum(p.numel() for p in model.parameters())
    del model
    if args.ablate:
        ablate(args, peak, params)
        return
    rows = []
    for method in ["lora"] + ([] if args.skip_full else ["full"]):
        # LoRA: forward 2N + input-gradient backward 2N FLOP per token; full adds the weight gradients (2N more)
        flops_per_token = (4 if method == "lora" else 6) * params
        for name, target in (("TRL SFTTrainer", run_trl), ("chattune", run_chattune)):
            result = in_subprocess(target, args, method)
            result.update(trainer=name, method=method,
                          mfu=result["real_tokens_per_s"] * flops_per_token / (peak * 1e9))
            rows.append(result)
            print(f"{name:15} {method:4}  real {result['real_tokens_per_s']:7.1f} tok/s  "
                  f"targets {result['target_tokens_per_s']:7.1f} tok/s  all {result['all_tokens_per_s']:7.1f} tok/s  "
                  f"MFU {result['mfu']:.1%}  RSS {result['peak_rss_mb']:.0f} MB  eval loss {result['eval_loss']:.4f}",
                  flush=True)
    print_table(rows, peak)
    write_result("train_throughput", {"args": vars(args), "bf16_peak_gflops": peak, "params": params, "rows": rows})


def ablate(args, peak: float, params: int) -> None:
    rows = {name: in_subprocess(run_chattune, args, "lora", name) for name in ABLATIONS}
    full = rows["all tricks"]["real_tokens_per_s"]
    print(f"\nbf16 matmul peak measured: {peak:.0f} GFLOP/s")
    print(f"{'chattune LoRA':18}{'real tok/s':>11}{'MFU':>7}{'eval loss':>10}{'all tricks / this':>19}")
    for name, row in rows.items():
        mfu = row["real_tokens_per_s"] * 4 * params / (peak * 1e9)
        print(f"{name:18}{row['real_tokens_per_s']:11.1f}{mfu:7.1%}{row['eval_loss']:10.4f}"
              f"{full / row['real_tokens_per_s']:18.2f}x")
    write_result("train_ablation", {"args": vars(args), "bf16_peak_gflops": peak, "params": params, "rows": rows})


def print_table(rows: list[dict], peak: float) -> None:
    print(f"\nbf16 matmul peak measured: {peak:.0f} GFLOP/s")
    header = f"{'trainer':16}{'method':7}{'real tok/s':>11}{'target tok/s':>13}{'all tok/s':>10}{'MFU':>7}" \
             f"{'peak RSS MB':>12}{'eval loss':>10}"
    print(header)
    for row in rows:
        print(f"{row['trainer']:16}{row['method']:7}{row['real_tokens_per_s']:11.1f}{row['target_tokens_per_s']:13.1f}"
              f"{row['all_tokens_per_s']:10.1f}{row['mfu']:7.1%}{row['peak_rss_mb']:12.0f}{row['eval_loss']:10.4f}")
    for method in sorted({row["method"] for row in rows}):
        trl, ours = (next(r for r in rows if r["method"] == method and r["trainer"] == t)
                     for t in ("TRL SFTTrainer", "chattune"))
        print(f"{method}: chattune / TRL real tokens/s = {ours['real_tokens_per_s'] / trl['real_tokens_per_s']:.2f}x, "
              f"eval loss {ours['eval_loss']:.4f} vs {trl['eval_loss']:.4f} "
              f"({ours['eval_loss'] / trl['eval_loss'] - 1:+.1%})")


if __name__ == "__main__":
    main()
