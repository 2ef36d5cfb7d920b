"""Data preparation throughput: chattune's read -> clean -> tokenize+mask against a plain `datasets` pipeline, side by
side in one run, on a generated prompt/response support log.

    python benchmarks/data_throughput.py                      # 100,000 rows, ~3 min on 2 cores
    python benchmarks/data_throughput.py --rows 1000000 --skip-baseline --inspect

The baseline is what a script built on the usual libraries does: `datasets.load_dataset("csv")` (read), a filter
of empty rows (clean: datasets has no cleaning of its own), then per row `tokenizer.apply_chat_template` on the
prompt with the generation prompt and on the whole conversation, the prompt's tokens masked out of the labels
(TRL's completion-only loss for prompt/completion data), cut at max_length, through `Dataset.map`. chattune's
stages are its own functions: read_csv, clean_conversations (text repairs, hash dedup), tokenize_conversations
(one render, batched fast tokenizer, masks over the tokens that fit). Both use SmolLM2-135M-Instruct's tokenizer.

Also reported: `prepare_chat_data` (read, clean, split, tokenize, mask: what `chattune train` does before the model
loads) the first time and again from the tokenized-data cache, and with --inspect the wall time and peak RSS of
`chattune data inspect FILE --json` in a fresh process.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import write_result

MODEL = "smollm2-135m-instruct"
WORDS = ("account password reset billing invoice refund order shipping delay login error app update crash please "
         "thanks help support team email phone card payment plan upgrade cancel subscription device settings").split()


def write_support_log(path: Path, rows: int) -> None:
    """Prompt/response rows of 7-26 and 16-61 words (a support ticket and its answer), seeded."""
    rng = random.Random(0)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["prompt", "response"])
        for index in range(rows):
            writer.writerow([" ".join(rng.choices(WORDS, k=rng.randint(6, 25))) + f" (ticket {index})?",
                             " ".join(rng.choices(WORDS, k=rng.randint(15, 60))) + "."])


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def chattune_stages(path: Path, tokenizer, max_length: int) -> dict:
    from chattune.data.chat import tokenize_conversations
    from chattune.data.clean import clean_conversations
    from chattune.data.readers.csv_reader import read_csv
    from chattune.data.report import DataReport

    report = DataReport(format="csv", source=str(path))
    raw, read_seconds = timed(lambda: list(read_csv(path, report)))
    kept, clean_seconds = timed(clean_conversations, raw, report)
    (examples, _), tokenize_seconds = timed(tokenize_conversations, tokenizer, kept, max_length)
    return {"read": (len(raw), read_seconds), "clean": (len(kept), clean_seconds),
            "tokenize+mask": (len(examples), tokenize_seconds)}


def _baseline_example(row: dict, tokenizer, max_length: int) -> dict:
    prompt = [{"role": "user", "content": row["prompt"]}]
    whole = prompt + [{"role": "assistant", "content": row["response"]}]
    prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True)["input_ids"]
    input_ids = tokenizer.apply_chat_template(whole, tokenize=True)["input_ids"]
    labels = [-100] * len(prompt_ids) + input_ids[len(prompt_ids):]
    return {"input_ids": input_ids[:max_length], "labels": labels[:max_length]}


def baseline_stages(path: Path, tokenizer, max_length: int, cache: Path) -> dict:
    import datasets

    datasets.disable_progress_bars()
    dataset, read_seconds = timed(lambda: datasets.load_dataset("csv", data_files=str(path), split="train",
                                                                cache_dir=str(cache)))
    kept, clean_seconds = timed(lambda: dataset.filter(lambda row: bool(row["prompt"]) and bool(row["response"])))
    examples, tokenize_seconds = timed(lambda: kept.map(_baseline_example, fn_kwargs={
        "tokenizer": tokenizer, "max_length": max_length}, remove_columns=kept.column_names))
    return {"read": (len(dataset), read_seconds), "clean": (len(kept), clean_seconds),
            "tokenize+mask": (len(examples), tokenize_seconds)}


def prepare_twice(path: Path, tokenizer, max_length: int, cache: Path) -> dict:
    from chattune.config import load_config
    from chattune.data.prepare import prepare_chat_data

    os.environ["CHATTUNE_DATA_CACHE"] = str(cache)
    cfg = load_config(overrides=[f"data={path}", f"model={MODEL}", f"max_length={max_length}"])
    first, first_seconds = timed(prepare_chat_data, cfg, tokenizer)
    again, again_seconds = timed(prepare_chat_data, cfg, tokenizer)
    assert again.report["tokenized_cache"]["hit"] and again.train_examples == first.train_examples
    return {"conversations": first.report["data"]["conversations"], "first_seconds": round(first_seconds, 2),
            "cached_seconds": round(again_seconds, 2)}


INSPECT = ("import resource, sys\nfrom chattune.cli import main\ncode = main(sys.argv[1:])\n"
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)")


def inspect_cli(path: Path) -> dict:
    """Wall time and peak RSS of `chattune data inspect PATH --json` in a fresh process that reports its own peak
    (RUSAGE_CHILDREN would count the benchmark's own pages, which a fork copies)."""
    src = Path(__file__).resolve().parent.parent / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", INSPECT, "data", "inspect", str(path), "--json"], check=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peak_kb = int(result.stderr.strip().splitlines()[-1])
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_kb / 1024)}


def print_table(ours: dict, theirs: dict | None) -> dict:
    rows = {}
    print(f"{'stage':<15}{'chattune rows/s':>17}{'baseline rows/s':>17}{'ratio':>8}")
    for stage, (count, seconds) in ours.items():
        rate = count / seconds
        base = theirs[stage][0] / theirs[stage][1] if theirs else None
        ratio = rate / base if base else None
        rows[stage] = {"chattune_rows": count, "chattune_seconds": round(seconds, 2), "chattune_rows_per_s": round(rate),
                       "baseline_rows": theirs[stage][0] if theirs else None,
                       "baseline_seconds": round(theirs[stage][1], 2) if theirs else None,
                       "baseline_rows_per_s": round(base) if base else None,
                       "ratio": round(ratio, 2) if ratio else None}
        print(f"{stage:<15}{rate:>17,.0f}{base or 0:>17,.0f}{ratio or 0:>7.2f}x")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the generated CSV (default 100,000)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--skip-baseline", action="store_true", help="chattune's stages only")
    parser.add_argument("--inspect", action="store_true", help="also time `chattune data inspect` on the file")
    args = parser.parse_args()

    from chattune.models import load_tokenizer

    tokenizer = load_tokenizer(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "support.csv"
        write_support_log(path, args.rows)
        print(f"{args.rows:,} rows, {path.stat().st_size / 1e6:.0f} MB; tokenizer {MODEL}, max_length {args.max_length}")
        inspected = inspect_cli(path) if args.inspect else None  # first: a fresh process on an idle machine
        if inspected:
            print(f"chattune data inspect: {inspected['seconds']} s, peak RSS {inspected['peak_rss_mb']} MB")
        ours = chattune_stages(path, tokenizer, args.max_length)
        theirs = None if args.skip_baseline else baseline_stages(path, tokenizer, args.max_length, Path(tmp) / "hf")
        stages = print_table(ours, theirs)
        prepared = prepare_twice(path, tokenizer, args.max_length, Path(tmp) / "tokenized")
        print(f"prepare_chat_data: {prepared['first_seconds']} s the first time, {prepared['cached_seconds']} s "
              "from the cache")
    total = {side: sum(seconds for _, seconds in stages_.values()) for side, stages_ in
             (("chattune", ours), ("baseline", theirs)) if stages_}
    if theirs:
        print(f"read -> tokenize+mask: chattune {total['chattune']:.1f} s, baseline {total['baseline']:.1f} s, "
              f"{total['baseline'] / total['chattune']:.2f}x faster")
    write_result("data_throughput", {"rows": args.rows, "max_length": args.max_length, "model": MODEL,
                                     "stages": stages, "total_seconds": total, "prepare": prepared,
                                     "inspect": inspected})


if __name__ == "__main__":
    main()
