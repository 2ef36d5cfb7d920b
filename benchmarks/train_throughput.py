"""Training throughput: TRL's SFTTrainer against chattune's trainer, side by side in one run.

    python benchmarks/train_throughput.py                  # LoRA and full fine-tuning rows, ~15 min on 2 cores
    python benchmarks/train_throughput.py --steps 4 --skip-full
    python benchmarks/train_throughput.py --ablate         # chattune LoRA with one trick changed at a time

Both trainers get identical data (a fixed chitchat slice, split as chattune splits it), the same model, LoRA
settings, max length, batch size, optimizer (AdamW), learning rate and number of steps; everything else is each
trainer's default (TRL 1.x: bf16 autocast and gradient checkpointing on, no packing, loss on all tokens;
chattune: packing, target-only LM head, fused LoRA layers, bf16 where native, loss on assistant tokens; per
precision one row with the defaults (memory=balanced, int8_base=auto: the frozen base read in int8 where a training
batch's loss allows), one with memory=fast, and one with int8_base=false). Each run
happens in a fresh subprocess (so peak RSS is its own), in alternation, and the first `--warmup` steps are not timed.

TRL gets two rows: its defaults as they behave on this machine (bf16=True; on a CPU without native bf16 that is
emulated and very slow, so that row runs in a process killed after --stall-budget seconds; unfinished, it is
reported as stopped), and its
defaults with bf16=False, what a careful user sets on such a CPU. The ratio is against the faster of the two.

Reported per run: real tokens/s (non-padding tokens processed), target tokens/s (tokens in the loss), all tokens/s
(padding included), peak RSS, model FLOP utilisation, and the eval loss on the same held-out conversations
(chattune's assistant-token loss, fp32, for both). MFU counts the FLOPs a step needs (the decoder for every real
token, the LM head only where a token is trained: recomputation and logits nobody trains on are not useful work)
against a matmul peak measured in the precision of the run (fp32, or bf16 where the CPU has it natively), in ~3 s;
an int8-base row is held to the float peak of its precision too, so its MFU says how much faster it is than the
float matmuls could be, not how busy the int8 units are.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

from machine import matmul_peak_gflops, precision_flags, write_result

MODEL = "smollm2-135m-instruct"


# --ablate: chattune LoRA with one speed trick turned off at a time (config overrides, or the plain model loss)
ABLATIONS = {"all tricks": [], "no packing": ["packing=false"], "full LM head": "plain-loss",
             "memory=fast": ["memory=fast"], "memory=balanced": ["memory=balanced"], "memory=low": ["memory=low"],
             "lora dropout 0.05": ["lora.dropout=0.05"], "peft LoRA layers": "peft-lora",
             "plain base (no int8)": ["int8_base=false"], "compile": ["compile=true"]}
BF16_ABLATION = {"fp32 (no bf16)": ["precision=fp32"]}  # only where the CPU has native bf16
# the main table's chattune rows: each precision with the defaults (memory=balanced, int8_base=auto), with
# memory=fast, and with the base in its float weights (int8_base=false)
PRECISIONS = {"fp32": ["precision=fp32"], "bf16": ["precision=bf16"],
              "fp32 fast": ["precision=fp32", "memory=fast"],
              "bf16 fast": ["precision=bf16", "memory=fast"],
              "fp32 plain base": ["precision=fp32", "int8_base=false"],
              "bf16 plain base": ["precision=bf16", "int8_base=false"]}


def chattune_rows(precisions: list[str]) -> list[str]:
    """The main table's chattune rows (PRECISIONS keys) for the precisions this CPU trains in."""
    return [name for name in PRECISIONS if name.split()[0] in precisions]


def shared_config(args, method: str, extra: list[str] = ()):
    from chattune.config import load_config

    return load_config(overrides=[
        f"data={args.data}", f"limit={args.limit}", f"eval_limit={args.eval_limit}", f"model={MODEL}",
        f"method={method}", f"max_length={args.max_length}", f"batch_size={args.batch_size}",
        f"max_steps={args.steps + args.warmup}", "eval_steps=100000", "early_stopping_patience=0",
        "eval_replies=0", "logging_steps=1000", f"lora.r={args.lora_r}", f"lora.alpha={2 * args.lora_r}",
        f"lora.dropout={args.lora_dropout}", "lora.target_modules=all-linear",
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
    from chattune.data.prepare import tokenize_split
    from chattune.models import load_model
    from chattune.precision import use_bf16
    from chattune.train import sft
    from chattune.train.common import add_lora
    from chattune.train.fused_lora import FusedLoRA

    change = {**ABLATIONS, **BF16_ABLATION, **PRECISIONS}[ablation]
    if change == "plain-loss":  # the model's own forward and loss: logits for every position
        sft.supports_target_only_loss = lambda model: False
    if change == "peft-lora":  # peft's own LoRA layers instead of the fused ones
        sft.fuse_lora = lambda model, int8_base=False: FusedLoRA()
    cfg = shared_config(args, method, [] if isinstance(change, str) else change)
    train_set, eval_set, report = load_chat_split(cfg)
    model, tokenizer = load_model(cfg.model)
    train_examples, eval_examples = tokenize_split(cfg, tokenizer, train_set, eval_set, report)
    bf16 = use_bf16(cfg.precision, model.device)
    if method == "lora":
        model = add_lora(model, cfg)
    with tempfile.TemporaryDirectory() as run:
        trainer = sft.make_trainer(cfg, Path(run), model, tokenizer, train_examples, eval_examples, bf16,
                                   Console(quiet=True))
        result = measured_training(trainer, args.warmup)
    result["eval_loss"] = held_out_loss(trainer.model, tokenizer, eval_set, cfg.max_length)
    result["settings"] = (f"packing={cfg.packing}, precision={'bf16' if bf16 else 'fp32'}, target-only LM head, "
                          f"memory={cfg.memory}, lora.dropout={cfg.lora.dropout}, int8_base={cfg.int8_base}, "
                          f"compile={cfg.compile}")
    result["precision"] = "bf16" if bf16 else "fp32"
    result["int8_base"] = bool(trainer.int8_base and trainer.int8_base["used"])  # auto decides per run
    return result


def run_trl(args, method: str, bf16: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from chattune.data.load import load_chat_split
    from chattune.models import load_model
    from chattune.train.common import lora_config
    from chattune.precision import bf16_supported

    cfg = shared_config(args, method)
    train_set, eval_set, _ = load_chat_split(cfg)
    model, tokenizer = load_model(cfg.model)
    peft_config = lora_config(cfg) if method == "lora" else None
    emulated = bf16 and not bf16_supported(model.device)
    with tempfile.TemporaryDirectory() as output:
        config = SFTConfig(output_dir=output, max_length=cfg.max_length, per_device_train_batch_size=cfg.batch_size,
                           learning_rate=cfg.learning_rate, max_steps=cfg.max_steps, optim="adamw_torch",
                           lr_scheduler_type=cfg.lr_scheduler, warmup_steps=cfg.warmup_ratio, seed=cfg.seed,
                           save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=1000,
                           use_cpu=True,  # required by transformers for bf16 (TRL's default) on a CPU
                           bf16=bf16)
        dataset = Dataset.from_list([{"messages": conversation} for conversation in train_set])
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=peft_config)
        # emulated bf16 runs minutes per step: one untimed step (the parent kills the process at --stall-budget)
        result = measured_training(trainer, 1 if emulated else args.warmup)
    result["eval_loss"] = held_out_loss(trainer.model, tokenizer, eval_set, cfg.max_length)
    result["settings"] = (f"SFTConfig defaults{'' if bf16 else ' but bf16=False'}: bf16={config.bf16}"
                          f"{' (emulated: no native bf16)' if emulated else ''}, gradient_checkpointing="
                          f"{config.gradient_checkpointing}, packing={config.packing}")
    result["precision"] = "bf16" if bf16 else "fp32"
    result["bf16_emulated"] = emulated
    return result


def measured_training(trainer, warmup: int) -> dict:
    """Train with every batch counted and every step timed; the throughput after `warmup` steps."""
    meter = Meter(trainer.data_collator)
    trainer.data_collator = meter
    trainer.add_callback(timing_callback(meter))
    trainer.train()
    return summarise(meter, warmup, trainer.args.gradient_accumulation_steps)


def summarise(meter: Meter, warmup: int, accumulation: int = 1) -> dict:
    """Tokens/s of the steps after `warmup`. Step i consumes the micro-batches [i * accumulation, (i + 1) *
    accumulation): counting one batch per step undercounted a split batch (memory=balanced) by that factor."""
    timed = meter.batches[warmup * accumulation : len(meter.step_ends) * accumulation]
    seconds = meter.step_ends[-1] - meter.step_ends[warmup - 1]
    totals = {key: sum(batch[key] for batch in timed) for key in ("all", "real", "targets")}
    return {
        "steps_timed": len(meter.step_ends) - warmup,
        "seconds": round(seconds, 2),
        "real_tokens_per_s": totals["real"] / seconds,
        "target_tokens_per_s": totals["targets"] / seconds,
        "all_tokens_per_s": totals["all"] / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


_PARTIAL = None  # in a child: the queue to the parent, for report_partial


def report_partial(result: dict) -> None:
    """In a child of in_subprocess: what has been measured so far, returned if the child is then killed (a row that
    stalls still reports the rollouts it finished)."""
    if _PARTIAL is not None:
        _PARTIAL.put(("partial", result))


def _child(target, args, method, extra, queue):
    global _PARTIAL
    _PARTIAL = queue
    queue.put(("done", target(args, method, *extra)))


def in_subprocess(target, args, method: str, *extra, timeout: float | None = None) -> dict | None:
    """`target` in a fresh process (its own peak RSS). When it has not finished within `timeout` seconds it is
    killed (an emulated-bf16 step can take minutes, and a step-end check cannot interrupt one), and the result is
    the last one it reported with report_partial, marked with `stopped_after_s`, or None."""
    import queue as queues

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, method, extra, queue))
    process.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    partial = None
    while True:
        try:  # a few seconds at a time: a child that died (its traceback is above) must not be waited on forever
            kind, result = queue.get(timeout=5 if deadline is None else min(5, max(0.0, deadline - time.monotonic())))
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"{target.__name__} {method} {extra}: the benchmark process died") from None
            if deadline is None or time.monotonic() < deadline:
                continue
            process.kill()
            result = None if partial is None else {**partial, "stopped_after_s": timeout}
            break
        if kind == "done":
            break
        partial = result
    process.join()
    return result


def model_shape() -> dict:
    """Parameters of the decoder (every real token runs through it) and of the LM head (run where a token is trained)."""
    from chattune.models import load_model

    model, _ = load_model(MODEL)
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        body -= head
    return {"body_params": body, "head_params": head}


def useful_flops_per_s(row: dict, method: str, shape: dict) -> float:
    """FLOPs the step needs per second: forward 2P and input-gradient backward 2P per token, plus the weight
    gradients (2P) where weights are trained; the decoder for every real token, the LM head (frozen in LoRA, tied
    and trained in full runs) for trained tokens only. The same count for both trainers: logits TRL computes for
    untrained positions and layers recomputed by checkpointing are not useful work."""
    factor = 4 if method == "lora" else 6
    return factor * (row["real_tokens_per_s"] * shape["body_params"] + row["target_tokens_per_s"] * shape["head_params"])


def measure_peaks(native_bf16: bool) -> dict[str, float]:
    """The matmul peak of each precision chattune would train in here: fp32 always, bf16 only where it is native."""
    dtypes = {"fp32": "float32", **({"bf16": "bfloat16"} if native_bf16 else {})}
    return {precision: matmul_peak_gflops(dtype) for precision, dtype in dtypes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="chitchat")
    parser.add_argument("--limit", type=int, default=400, help="conversations read from the corpus")
    parser.add_argument("--eval-limit", type=int, default=24, help="held-out conversations for the eval loss")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="both trainers (the demo's setting)")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed steps before timing starts (at least 1: the clock starts at a step's end)")
    parser.add_argument("--stall-budget", type=float, default=150,
                        help="seconds the TRL-defaults row may run where its bf16 is emulated; then it is stopped")
    parser.add_argument("--skip-full", action="store_true", help="LoRA rows only")
    parser.add_argument("--compile", action="store_true", help="chattune with compile=true (warm-up must cover it)")
    parser.add_argument("--fp32-only", action="store_true",
                        help="only the rows a CPU without native bf16 runs (TRL bf16=False, chattune's fp32 rows); "
                             "with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 it stands in for an AVX2 CPU")
    parser.add_argument("--ablate", action="store_true",
                        help="instead: chattune LoRA with each speed trick turned off in turn (what each contributes)")
    parser.add_argument("--ablations", nargs="+", choices=list(ABLATIONS) + list(BF16_ABLATION), metavar="NAME",
                        help="with --ablate: only these rows, e.g. 'peft LoRA layers' 'plain base (no int8)' "
                             "(quoted; 'all tricks' always runs)")
    args = parser.parse_args()
    if args.warmup < 1:  # the first timed step is measured from the end of the one before it
        parser.error("--warmup must be at least 1")

    import torch

    from chattune.models import resolve_model
    from chattune.precision import bf16_supported

    resolve_model(MODEL)  # convert the GGUF once, outside the timed runs
    native_bf16 = bf16_supported(torch.device("cpu")) and not args.fp32_only
    peaks = measure_peaks(native_bf16)
    precisions = list(peaks)
    shape = model_shape()
    flags = precision_flags()
    print(f"CPU flags: {' '.join(f'{flag}={yes}' for flag, yes in flags.items())} -> precisions {precisions}; "
          + ", ".join(f"{p} matmul peak {g:.0f} GFLOP/s" for p, g in peaks.items()), flush=True)
    if args.ablate:
        ablate(args, peaks, shape, native_bf16)
        return
    rows, stalled = [], []
    for method in ["lora"] + ([] if args.skip_full else ["full"]):
        runs = [("TRL SFTTrainer defaults", run_trl, (True,))] if not args.fp32_only else []
        runs += [("TRL bf16=False", run_trl, (False,))]
        runs += [(f"chattune {name}", run_chattune, (name,)) for name in chattune_rows(precisions)]
        for name, target, extra in runs:
            emulated = target is run_trl and extra[0] and not native_bf16
            result = in_subprocess(target, args, method, *extra, timeout=args.stall_budget if emulated else None)
            if result is None:
                print(f"{name:24} {method:4} bf16 emulated (no native bf16): not finished within "
                      f"{args.stall_budget:.0f} s; stopped", flush=True)
                stalled.append({"trainer": name, "method": method, "stopped_after_s": args.stall_budget})
                continue
            result.update(trainer=name, method=method,
                          mfu=useful_flops_per_s(result, method, shape) / (peaks[result["precision"]] * 1e9))
            rows.append(result)
            print(row_line(result), flush=True)
    print_table(rows, peaks, flags)
    for row in stalled:
        print(f"{row['trainer']} {row['method']}: stopped after {row['stopped_after_s']:.0f} s without finishing "
              "(bf16 emulated on this CPU)")
    write_result("train_throughput", {"args": vars(args), "peak_gflops": peaks, **shape, "rows": rows,
                                      "stalled": stalled})


def shown_precision(row: dict) -> str:
    """The row's precision, "+int8" where its frozen base was read in int8."""
    return row["precision"] + ("+int8" if row.get("int8_base") else "")


def row_line(row: dict) -> str:
    stopped = "  (bf16 emulated)" if row.get("bf16_emulated") else ""
    return (f"{row['trainer']:24} {row['method']:4} {shown_precision(row)}  real {row['real_tokens_per_s']:7.1f} tok/s  "
            f"targets {row['target_tokens_per_s']:7.1f} tok/s  MFU {row['mfu']:.1%}  RSS {row['peak_rss_mb']:.0f} MB  "
            f"eval loss {row['eval_loss']:.4f}  ({row['steps_timed']} timed steps){stopped}")


def ablate(args, peaks: dict, shape: dict, native_bf16: bool) -> None:
    changes = {**ABLATIONS, **(BF16_ABLATION if native_bf16 else {})}
    names = ["all tricks", *(name for name in args.ablations or changes if name != "all tricks")]
    rows = {name: in_subprocess(run_chattune, args, "lora", name) for name in names}
    full = rows["all tricks"]["real_tokens_per_s"]
    print(f"\n{'chattune LoRA':20}{'precision':>10}{'real tok/s':>11}{'MFU':>7}{'peak RSS MB':>12}{'eval loss':>10}"
          f"{'all tricks / this':>19}")
    for name, row in rows.items():
        row["mfu"] = useful_flops_per_s(row, "lora", shape) / (peaks[row["precision"]] * 1e9)
        print(f"{name:20}{shown_precision(row):>10}{row['real_tokens_per_s']:11.1f}{row['mfu']:7.1%}"
              f"{row['peak_rss_mb']:12.0f}{row['eval_loss']:10.4f}{full / row['real_tokens_per_s']:18.2f}x")
    write_result("train_ablation", {"args": vars(args), "peak_gflops": peaks, **shape, "rows": rows})


def print_table(rows: list[dict], peaks: dict, flags: dict) -> None:
    print(f"\nCPU flags deciding the precision: {', '.join(f'{f}={y}' for f, y in flags.items())}")
    print("matmul peaks: " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peaks.items()) + " (MFU against the row's)")
    print(f"{'trainer':25}{'method':7}{'precision':10}{'real tok/s':>11}{'target tok/s':>13}{'MFU':>7}{'peak RSS MB':>12}"
          f"{'eval loss':>10}")
    for row in rows:
        print(f"{row['trainer']:25}{row['method']:7}{shown_precision(row):10}{row['real_tokens_per_s']:11.1f}"
              f"{row['target_tokens_per_s']:13.1f}{row['mfu']:7.1%}{row['peak_rss_mb']:12.0f}{row['eval_loss']:10.4f}"
              + ("  bf16 emulated" if row.get("bf16_emulated") else ""))
    for method in sorted({row["method"] for row in rows}):
        trl = max((r for r in rows if r["method"] == method and r["trainer"].startswith("TRL")),
                  key=lambda r: r["real_tokens_per_s"])
        for ours in (r for r in rows if r["method"] == method and r["trainer"].startswith("chattune")):
            print(f"{method}: {ours['trainer']} / {trl['trainer']} (the faster TRL row) real tokens/s = "
                  f"{ours['real_tokens_per_s'] / trl['real_tokens_per_s']:.2f}x, peak RSS {ours['peak_rss_mb']:.0f} vs "
                  f"{trl['peak_rss_mb']:.0f} MB, eval loss {ours['eval_loss']:.4f} vs {trl['eval_loss']:.4f}")


if __name__ == "__main__":
    main()
