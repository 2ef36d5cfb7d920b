"""Score a summarisation run (`task: summarize`): zero-shot base model vs tuned on the held-out pairs, with paired
bootstrap intervals, written to RUN/eval.json and RUN/report.html.

    result = evaluate_summaries(Run.open("runs/summarize"), compare_base=True)
    result["metrics"][2]   # {"key": "rougeL", "base": 0.19, "tuned": 0.30, "delta": 0.11, "ci": [0.08, 0.14], ...}

Reads top to bottom: the run's config -> the same held-out pairs training used (or --data) -> for each model (the
base model zero-shot, then the tuned one): a summary of every source (greedy, or beam search with num_beams) ->
ROUGE-1/2/L/Lsum F1 (rouge-score, stemmed), BLEU and chrF (sacrebleu, corpus-level), summary length and the share
that end before the token limit -> paired bootstrap intervals of every change -> eval.json -> report.html.
"""

from __future__ import annotations

import statistics
import time

from rich.console import Console

from chattune.data.pairs import Pair, held_out_source, load_pairs_split, read_pairs
from chattune.errors import InputError
from chattune.evaluate import text_metrics
from chattune.evaluate.bootstrap import MetricSpec, comparison
from chattune.files import atomic_write_json
from chattune.generate.summarize import Summarizer, Summary, load_summarizer
from chattune.runs import Run

ROUGE_KINDS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
METRICS = (
    MetricSpec("rouge1", "ROUGE-1 F1", "higher", statistics.fmean),
    MetricSpec("rouge2", "ROUGE-2 F1", "higher", statistics.fmean),
    MetricSpec("rougeL", "ROUGE-L F1", "higher", statistics.fmean),
    MetricSpec("rougeLsum", "ROUGE-Lsum F1 (sentence-level LCS)", "higher", statistics.fmean),
    MetricSpec("bleu", "BLEU", "higher", text_metrics.bleu_from_stats),
    MetricSpec("chrf", "chrF", "higher", text_metrics.chrf_from_stats),
    MetricSpec("summary_words", "summary length (words)", "", statistics.fmean),
    MetricSpec("ended", "summaries that end before the token limit", "higher", statistics.fmean),
)


def evaluate_summaries(run: Run, *, data: str | None = None, split: str = "eval", limit: int | None = None,
                       compare_base: bool = False, max_new_tokens: int | None = None, num_beams: int | None = None,
                       batch_size: int = 8, held_out: list[Pair] | None = None,
                       console: Console | None = None) -> dict:
    """Summarise the held-out sources (the first `limit`), write RUN/eval.json and RUN/report.html, return eval.json.
    `held_out` gives the pairs training kept (those within max_length), so they are not read again."""
    from chattune.evaluate.report import write_report

    console = console or Console(stderr=True)
    started, cfg = time.time(), run.config
    pairs = (held_out if held_out is not None else eval_pairs(cfg, data, split))[:limit]
    generation = {"max_new_tokens": max_new_tokens or cfg.max_new_tokens, "num_beams": num_beams or cfg.num_beams}
    decoding = "greedy" if generation["num_beams"] == 1 else f"beam search ({generation['num_beams']} beams)"
    source = data or (held_out_source(cfg) if split == "eval" else None) or cfg.data
    console.print(f"eval: {len(pairs)} held-out sources from {source} ({split} split), "
                  f"{decoding} summaries of up to {generation['max_new_tokens']} tokens")
    scored = {}
    for name in ("base", "tuned") if compare_base else ("tuned",):
        # the base model as the run would prompt it: the same request, template and source cut
        summarizer = load_summarizer(str(run.path)) if name == "tuned" else _base(cfg)
        summaries = summarizer.summaries(pairs, batch_size=batch_size, **generation)
        scored[name] = score_summaries(summaries, pairs)
        console.print(f"eval {name}: ROUGE-1 {statistics.fmean(scored[name]['items']['rouge1']):.3f}  ROUGE-L "
                      f"{statistics.fmean(scored[name]['items']['rougeL']):.3f}  BLEU "
                      f"{text_metrics.bleu_from_stats(scored[name]['items']['bleu']):.2f}")
        del summarizer  # one model in memory at a time
    result = {
        "task": "summarize",
        "run": str(run.path),
        "models": {"base": cfg.model, "tuned": str(run.path)},
        "data": {"source": source, "split": split, "pairs": len(pairs),
                 "reference_words": statistics.fmean(len(text_metrics.words(p.summary)) for p in pairs)},
        "generation": generation,
        **comparison(METRICS, scored, cfg.seed, unit="pair"),
        "examples": _examples(pairs, scored),
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(run.eval_path, result)
    write_report(run.path)
    return result


def eval_pairs(cfg, data: str | None, split: str) -> list[Pair]:
    """The pairs to score: `data` when given, else the run's own split, exactly as training made it (pairs past
    max_length included: generation cuts a seq2seq source, and a causal LM's context is longer)."""
    if split not in ("eval", "train"):
        raise InputError(f"--split {split!r}: use 'eval' (held-out pairs) or 'train'")
    if data is not None:
        return read_pairs(data, cfg.source_column, cfg.summary_column)[0]
    train, evaluation, _ = load_pairs_split(cfg)
    return evaluation if split == "eval" else train


def _base(cfg) -> Summarizer:
    from chattune.models import load_any_model

    return Summarizer(*load_any_model(cfg.model), cfg)


def score_summaries(summaries: list[Summary], pairs: list[Pair]) -> dict:
    """Per-pair items of every metric in METRICS, and the summaries themselves."""
    texts, references = [summary.text for summary in summaries], [pair.summary for pair in pairs]
    items = {
        **text_metrics.rouge_f1(texts, references, ROUGE_KINDS),
        "bleu": text_metrics.bleu_stats(texts, references), "chrf": text_metrics.chrf_stats(texts, references),
        "summary_words": [float(len(text_metrics.words(text))) for text in texts],
        "ended": [float(summary.ended) for summary in summaries],
    }
    return {"items": items, "summaries": summaries}


def _examples(pairs: list[Pair], scored: dict) -> list[dict]:
    examples = []
    for index, pair in enumerate(pairs):
        example = {"instruction": pair.instruction, "source": pair.source, "reference": pair.summary}
        for name, system in scored.items():
            summary: Summary = system["summaries"][index]
            example[name] = {"summary": summary.text, "ended": summary.ended,
                             "rougeL": system["items"]["rougeL"][index]}
        examples.append(example)
    return examples
