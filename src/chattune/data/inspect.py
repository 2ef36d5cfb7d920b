"""`chattune data inspect`: what a dataset looks like once read, cleaned and tokenized for a model.

    chattune data inspect chats.csv --model gpt2
    chattune data inspect support_log.csv --full        # token statistics over every conversation, not a sample

Reading and cleaning stream through the whole file (the counts are exact); token statistics come from a seeded
uniform sample of SAMPLE_SIZE conversations (reservoir sampling, so the sample is drawn in the same single pass),
which pins the mean and percentiles to within a few percent in a fraction of the time. The output says which.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.text import Text

from chattune.data.conversation import Conversation
from chattune.data.report import DataReport

SAMPLE_SIZE = 2000  # conversations tokenized for the statistics: ~2 s for SmolLM2 on 2 cores
SAMPLE_SEED = 0
PROGRESS_AFTER_SECONDS = 2  # a progress bar appears only on reads that take longer


def reservoir_sample(items: Iterable, size: int | None, seed: int) -> tuple[list, object]:
    """(a uniform sample of `size` items (all of them when size is None), the first item) in one pass."""
    rng, sample, first = random.Random(seed), [], None
    for index, item in enumerate(items):
        if index == 0:
            first = item
        if size is None or index < size:
            sample.append(item)
        elif (slot := rng.randrange(index + 1)) < size:
            sample[slot] = item
    return sample, first


def _with_progress(conversations: Iterator[Conversation]) -> Iterator[Conversation]:
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests)
    return tqdm(conversations, desc="reading", unit=" conversations", delay=PROGRESS_AFTER_SECONDS, disable=None,
                leave=False)


class _Background(threading.Thread):
    """Run `function(*args)` in a daemon thread; `result()` waits and returns it, or raises what it raised."""

    def __init__(self, function, *args) -> None:
        super().__init__(daemon=True)
        self._call, self._value, self._error = (lambda: function(*args)), None, None
        self.start()

    def run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as error:  # noqa: BLE001 - handed to the caller of result(), which re-raises it
            self._error = error

    def result(self):
        self.join()
        if self._error is not None:
            raise self._error
        return self._value


def read_sample(source: str, sample_size: int | None, seed: int, reader_options: dict
                ) -> tuple[DataReport, list[Conversation], Conversation]:
    """(report, seeded sample of the cleaned conversations, the first one), reading `source` once."""
    from chattune.data.load import check_kept, stream_conversations  # ftfy

    stream, report = stream_conversations(source, **reader_options)
    sample, first = reservoir_sample(_with_progress(stream), sample_size, seed)
    check_kept(report)
    return report, sample, first


def inspect_data(source: str, model: str, max_length: int, *, sample_size: int | None = SAMPLE_SIZE,
                 seed: int = SAMPLE_SEED, long_conversations: str = "cut", **reader_options) -> dict:
    """The data report, token statistics over a seeded sample (sample_size None: every conversation) and the
    first conversation as the model sees it."""
    from chattune.data.chat import marked_example, token_stats, tokenize_conversations  # numpy, tokenizers
    from chattune.models import load_tokenizer  # transformers, torch

    # Reading is pure Python and loading the tokenizer is mostly importing torch and transformers (~6 s on 2 cores):
    # the read runs in a forked process on the other core while a daemon thread here loads the tokenizer, so a file
    # refused early exits at once instead of waiting for the imports.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        read = pool.submit(read_sample, source, sample_size, seed, reader_options)  # forks now, before the thread
        tokenizer = _Background(load_tokenizer, model)
        report, sample, first = read.result()
    tokenizer = tokenizer.result()
    examples, counts = tokenize_conversations(tokenizer, sample, max_length, long_conversations=long_conversations)
    shown, _ = tokenize_conversations(tokenizer, [first], max_length)
    result = report.to_dict()
    result["model"] = model
    result["tokens"] = token_stats(examples) if examples else None
    result["token_sample"] = {"conversations": len(sample), "of": report.conversations,
                              "seed": None if sample_size is None else seed, "full": len(sample) == report.conversations}
    result["no_reply_within_max_length"] = counts["no_reply_within_max_length"]
    result["long_conversations"] = {"mode": long_conversations, **counts}
    result["example"] = marked_example(tokenizer, shown[0]) if shown else []
    return result


def print_inspection(result: dict, console: Console) -> None:
    console.print(f"[bold]{result['source']}[/bold]  format: {result['format']}")
    console.print(f"conversations: {result['conversations']} kept of {result['conversations_read']} read, "
                  f"{result['turns']} turns")
    for title in ("dropped", "changed"):
        if result[title]:
            console.print(f"{title}: " + ", ".join(f"{why} {count}" for why, count in result[title].items()))
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    stats, sampled = result["tokens"], result["token_sample"]
    if not sampled["full"]:
        console.print(f"token statistics from a random sample of {sampled['conversations']} of "
                      f"{sampled['of']} conversations (seed {sampled['seed']}; --full for all)")
    if stats:
        console.print(f"tokens per conversation ({result['model']}): min {stats['min']}  mean {stats['mean']}  "
                      f"p50 {stats['p50']}  p95 {stats['p95']}  max {stats['max']}; "
                      f"trained tokens {stats['trained_total']} of {stats['total']}")
    if result["no_reply_within_max_length"]:
        console.print(f"{result['no_reply_within_max_length']} conversations have no reply within max_length")
    if result["long_conversations"]["over_max_length"]:
        long = result["long_conversations"]
        what = f"split into {long['split_windows']} windows" if long["mode"] == "split" else "cut at max_length"
        console.print(f"{long['over_max_length']} conversations are longer than max_length: {what}")
    console.print("\nfirst conversation as the model sees it ([green]green[/green] = trained tokens):")
    example = Text()
    for piece, trained in result["example"]:
        example.append(piece, style="bold green" if trained else "dim")
    console.print(example)
