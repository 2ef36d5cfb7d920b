"""Before (the parent chat run) vs after (the aligned run) on held-out contexts, with paired bootstrap intervals.

    result = evaluate_alignment(Run.open("runs/detox"), contexts, conversations)     # writes RUN/alignment.json
    print_alignment(result, Console())
    chattune eval runs/detox --samples 16     # the same held-out contexts re-scored with k=16 (reevaluate_alignment)

Both models reply to the same held-out contexts (never trained on; toxic-prone filtered when the run was): k sampled
replies each (seeded, the same seeds for both, the serving defaults of chattune.generate.sampling) and one greedy
reply. Per context: toxicity as the mean p(toxic) of the k and as the share of them over 0.5, the greedy reply's
toxicity, relevance of the replies to the conversation so far, their length and ending rate. Held-out perplexity on the
human replies of the held-out conversations shows what alignment cost. Each change gets a paired bootstrap interval
over contexts (conversations for perplexity), as `chattune eval` does.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

from rich.console import Console
from rich.table import Table

from chattune.config import AlignConfig
from chattune.data.chat import tokenize_conversations
from chattune.data.collate import PadCollator
from chattune.data.conversation import Conversation
from chattune.errors import InputError
from chattune.evaluate.bootstrap import MetricSpec, comparison
from chattune.evaluate.likelihood import conversation_likelihoods, summarize_likelihoods
from chattune.evaluate.relevance import SentenceEncoder, context_text, cosine_similarities
from chattune.evaluate.report import verdict
from chattune.evaluate.safety import TOXIC_THRESHOLD, toxicity
from chattune.files import atomic_write_json
from chattune.generate.batch import sampled_replies
from chattune.generate.hf import load_hf_backend
from chattune.generate.sampling import Sampling
from chattune.runs import Run

EXAMPLES_SHOWN = 10  # the contexts whose toxicity fell most, with their before and after replies

METRICS = (
    MetricSpec("toxicity", "toxicity, mean p of k sampled replies", "lower", statistics.fmean),
    MetricSpec("toxic_rate", f"sampled replies with p(toxic) > {TOXIC_THRESHOLD}", "lower", statistics.fmean),
    MetricSpec("toxicity_greedy", "toxicity of the greedy reply", "lower", statistics.fmean),
    MetricSpec("relevance", "relevance to the conversation (cosine)", "higher", statistics.fmean),
    MetricSpec("perplexity", "held-out perplexity (human replies)", "lower",
               lambda rows: math.exp(summarize_likelihoods(rows)["loss"])),
    MetricSpec("reply_words", "reply length (words)", "", statistics.fmean),
    MetricSpec("ended", "replies that end before the token limit", "higher", statistics.fmean),
)


def evaluate_alignment(run: Run, contexts: list[Conversation], conversations: list[Conversation], *,
                       cfg: AlignConfig | None = None, console: Console | None = None) -> dict:
    """`cfg` (default: the run's) gives k, the reply length and the seed."""
    console = console or Console(stderr=True)
    started, cfg = time.time(), cfg or run.config
    sampled = Sampling(max_new_tokens=cfg.max_new_tokens, seed=cfg.seed)
    console.print(f"alignment eval: {len(contexts)} held-out contexts x ({cfg.eval_samples} sampled + 1 greedy) "
                  f"replies of up to {cfg.max_new_tokens} tokens; perplexity on {len(conversations)} conversations")
    encoder = SentenceEncoder.load()
    scored = {}
    for name, source in (("base", cfg.parent), ("tuned", str(run.path))):
        backend = load_hf_backend(source, packed=True)  # a LoRA run merged at load, as chat and serve use it
        with console.status(f"alignment eval: {name} ({source}) replying"):
            samples = sampled_replies(backend, contexts, cfg.eval_samples, sampled)
            greedy = [group[0] for group in sampled_replies(backend, contexts, 1, Sampling(
                temperature=0, max_new_tokens=cfg.max_new_tokens))]
            likelihoods = _likelihoods(backend, cfg, conversations)
        scored[name] = _score(contexts, samples, greedy, likelihoods, encoder)
        del backend  # one model in memory at a time
    result = {
        "task": "align",
        "run": str(run.path),
        "models": {"base": cfg.parent, "tuned": str(run.path)},
        "contexts": len(contexts), "conversations": len(conversations),
        "sampling": {"k": cfg.eval_samples, "temperature": sampled.temperature, "top_p": sampled.top_p,
                     "top_k": sampled.top_k, "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed},
        **comparison(METRICS, scored, cfg.seed, unit="context (conversation: perplexity)"),
        "examples": _most_improved(contexts, scored),
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_json(run.alignment_path, result)
    return result


def reevaluate_alignment(run: Run, *, samples: int | None = None, limit: int | None = None,
                         console: Console | None = None) -> dict:
    """`chattune eval ALIGN_RUN`: the evaluation `chattune align` ran, again, with k (`samples`) or the held-out
    conversations read (`limit`, the run's eval_limit) changed. The held-out contexts are rebuilt as the run built
    them (the parent's split, the seed, the toxic-prone filter with the parent's replies), so a larger k re-scores
    the same contexts more precisely. Rewrites RUN/alignment.json."""
    from chattune.data.load import load_chat_split
    from chattune.train.align import held_out_contexts, load_policy

    console = console or Console(stderr=True)
    changes = {key: value for key, value in (("eval_samples", samples), ("eval_limit", limit)) if value is not None}
    cfg = dataclasses.replace(run.config, **changes)
    if not cfg.eval_prompts:
        raise InputError(f"{run.path}: eval_prompts is 0 in its config.yaml: the run has no held-out contexts to "
                         "score")
    _, eval_set, _ = load_chat_split(cfg)
    model, tokenizer = load_policy(Run.open(cfg.parent), cfg)  # the parent, for the toxic-prone filter
    contexts = held_out_contexts(cfg, eval_set, model, tokenizer, {}, console)
    del model
    return evaluate_alignment(run, contexts, eval_set[: cfg.eval_conversations], cfg=cfg, console=console)


def _likelihoods(backend, cfg, conversations: list[Conversation]) -> list[dict]:
    examples, _ = tokenize_conversations(backend.tokenizer, conversations, cfg.max_length, cfg.loss_on)
    return conversation_likelihoods(backend.model, examples, PadCollator(backend.tokenizer.pad_token_id),
                                    cfg.eval_batch_size)


def _score(contexts, samples, greedy, likelihoods, encoder) -> dict:
    """Per-context items of every metric (per-conversation likelihood rows for perplexity), and the replies."""
    k = len(samples[0])
    texts = [reply.text for group in samples for reply in group]
    toxic = toxicity(texts)
    relevance = cosine_similarities(encoder, texts, [context_text(c) for c in contexts for _ in range(k)])

    def per_context(values: list[float]) -> list[float]:
        return [statistics.fmean(values[first : first + k]) for first in range(0, len(values), k)]

    items = {
        "toxicity": per_context(toxic),
        "toxic_rate": per_context([float(p > TOXIC_THRESHOLD) for p in toxic]),
        "toxicity_greedy": toxicity([reply.text for reply in greedy]),
        "relevance": per_context(relevance),
        "perplexity": likelihoods,
        "reply_words": per_context([float(len(text.split())) for text in texts]),
        "ended": per_context([float(reply.ended) for group in samples for reply in group]),
    }
    return {"items": items, "samples": [[reply.text for reply in group] for group in samples],
            "greedy": [reply.text for reply in greedy]}


def _most_improved(contexts: list[Conversation], scored: dict) -> list[dict]:
    before, after = scored["base"]["items"]["toxicity"], scored["tuned"]["items"]["toxicity"]
    order = sorted(range(len(contexts)), key=lambda index: after[index] - before[index])[:EXAMPLES_SHOWN]
    return [{"context": contexts[index],
             **{name: {"toxicity": scored[name]["items"]["toxicity"][index], "greedy": scored[name]["greedy"][index],
                       "samples": scored[name]["samples"][index]} for name in ("base", "tuned")}}
            for index in order]


def print_alignment(result: dict, console: Console) -> None:
    table = Table(title=f"before (parent) vs after (aligned): {result['contexts']} held-out contexts, "
                        f"k={result['sampling']['k']}, 95% paired bootstrap intervals")
    for column in ("metric", "before", "after", "change", "95% interval", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
    for row in result["metrics"]:
        relative = f" ({row['relative']:+.0%})" if row["relative"] is not None else ""
        table.add_row(row["label"], f"{row['base']:.4f}", f"{row['tuned']:.4f}", f"{row['delta']:+.4f}{relative}",
                      f"[{row['ci'][0]:+.4f}, {row['ci'][1]:+.4f}]", verdict(row))
    console.print(table)
