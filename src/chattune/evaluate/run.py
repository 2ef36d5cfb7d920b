"""`chattune eval RUN`: score a run's held-out conversations, base model vs tuned, and write eval.json + report.html.

    result = evaluate_run(Run.open("runs/demo"), limit=32, compare_base=True)
    result["metrics"][0]   # {"key": "loss", "base": 3.99, "tuned": 3.46, "delta": -0.53, "ci": [-0.61, -0.45], ...}

Reads top to bottom: the run's config -> the same held-out conversations training used (or --data) -> for each
model (base, then tuned): likelihood of the whole conversations with the training masks, one greedy reply per
conversation, and that reply's overlap with the reference, relevance, toxicity and shape -> paired bootstrap
intervals for every change -> RUN/eval.json (every number and reply) -> RUN/report.html.

Right after training, the held-out conversations and their likelihoods come from training itself (`held_out`):
they are neither read nor scored twice. Classification runs are scored by chattune.evaluate.classify.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from pathlib import Path

from rich.console import Console

from chattune.config import ChatConfig
from chattune.data.chat import tokenize_conversations
from chattune.data.collate import PadCollator
from chattune.data.conversation import Conversation, with_system
from chattune.data.load import load_chat_split, load_conversations, reader_options
from chattune.errors import InputError
from chattune.evaluate import text_metrics
from chattune.evaluate.bootstrap import MetricSpec, comparison
from chattune.evaluate.generation import Reply, ReplyPair, generate_replies, reply_pairs
from chattune.evaluate.likelihood import conversation_likelihoods, summarize_likelihoods
from chattune.evaluate.relevance import SentenceEncoder, cosine_similarities
from chattune.evaluate.safety import TOXIC_THRESHOLD, toxicity
from chattune.files import atomic_write_json
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.sampling import run_sampling
from chattune.runs import Run


def _loss(rows: list[dict]) -> float:
    return summarize_likelihoods(rows)["loss"]


METRICS = (
    MetricSpec("loss", "eval loss (reply tokens)", "lower", _loss),
    MetricSpec("perplexity", "perplexity", "lower", lambda rows: math.exp(_loss(rows))),
    MetricSpec("token_accuracy", "token accuracy", "higher", lambda rows: summarize_likelihoods(rows)["token_accuracy"]),
    MetricSpec("bleu", "BLEU", "higher", text_metrics.bleu_from_stats),
    MetricSpec("chrf", "chrF", "higher", text_metrics.chrf_from_stats),
    MetricSpec("rouge1", "ROUGE-1 F1", "higher", statistics.fmean),
    MetricSpec("rouge2", "ROUGE-2 F1", "higher", statistics.fmean),
    MetricSpec("rougeL", "ROUGE-L F1", "higher", statistics.fmean),
    MetricSpec("relevance_reference", "relevance to reference (cosine)", "higher", statistics.fmean),
    MetricSpec("relevance_context", "relevance to user's message (cosine)", "higher", statistics.fmean),
    MetricSpec("toxicity", "toxicity (mean probability)", "lower", statistics.fmean),
    MetricSpec("toxic_rate", f"toxic replies (p > {TOXIC_THRESHOLD})", "lower", statistics.fmean),
    MetricSpec("ended", "replies that end before the token limit", "higher", statistics.fmean),
    MetricSpec("loop_rate", f"replies that loop (a line or {text_metrics.LOOP_SPAN}-word span "
                            f"x{text_metrics.LOOP_REPEATS}+)", "lower", statistics.fmean),
    MetricSpec("reply_words", "reply length (words)", "", statistics.fmean),
    MetricSpec("distinct_1", "distinct-1", "higher", lambda lists: text_metrics.distinct_n(lists, 1)),
    MetricSpec("distinct_2", "distinct-2", "higher", lambda lists: text_metrics.distinct_n(lists, 2)),
)


def evaluate_run(run: Run, *, data: str | None = None, split: str = "eval", limit: int | None = None,
                 compare_base: bool = False, max_new_tokens: int | None = None, batch_size: int = 32,
                 held_out=None, console: Console | None = None, loop_guards: dict | None = None) -> dict:
    """Score the run, write RUN/eval.json and RUN/report.html, and return what eval.json holds.

    `held_out` (a train.sft.HeldOut) gives the conversations and their base/tuned likelihoods from training; the
    likelihoods cover all of them and the replies the first `limit`. `loop_guards` ({"repetition_penalty",
    "no_repeat_ngram_size"}) override the run's generation_config.json."""
    from chattune.evaluate.report import write_report

    console = console or Console(stderr=True)
    started, cfg = time.time(), run.config
    conversations = held_out.conversations if held_out else eval_conversations(cfg, data, split)[:limit]
    pairs = reply_pairs(conversations[:limit], cfg.seed)
    # greedy, with the run's loop guards (generation_config.json), as `chattune chat --temperature 0` replies
    sampling = dataclasses.replace(run_sampling(run.path), temperature=0, seed=cfg.seed,
                                   max_new_tokens=max_new_tokens or cfg.eval_max_new_tokens, **(loop_guards or {}))
    console.print(f"eval: {len(pairs)} held-out conversations from {data or cfg.data} ({split} split), "
                  f"greedy replies of up to {sampling.max_new_tokens} tokens (repetition penalty "
                  f"{sampling.repetition_penalty:g}, no-repeat n-grams {sampling.no_repeat_ngram_size or 'off'})")
    encoder = SentenceEncoder.load()
    scored = {}
    for name in ("base", "tuned") if compare_base else ("tuned",):
        backend = _load_system(run, cfg, name)
        likelihoods = held_out.likelihoods[name] if held_out else _likelihoods(backend, cfg, conversations)
        replies = generate_replies(backend, pairs, sampling, batch_size=batch_size, label=f"eval {name}",
                                   console=console)
        scored[name] = _score_replies(likelihoods, replies, pairs, encoder, console, name)
        del backend  # one model in memory at a time
    result = {
        "task": "chat",
        "run": str(run.path),
        "models": {"base": cfg.model, "tuned": str(run.path)},
        "data": {"source": data or cfg.data, "split": split, "conversations": len(conversations),
                 "pairs": len(pairs)},
        "sampling": {"temperature": 0, "max_new_tokens": sampling.max_new_tokens, "seed": cfg.seed,
                     "repetition_penalty": sampling.repetition_penalty,
                     "no_repeat_ngram_size": sampling.no_repeat_ngram_size},
        **comparison(METRICS, scored, cfg.seed, unit="conversation"),
        "examples": _examples(pairs, scored),
        "seconds": round(time.time() - started, 1),
    }
    _add_human(result["metrics"], pairs, encoder)
    atomic_write_json(run.eval_path, result)
    write_report(run.path)
    return result


def _add_human(rows: list[dict], pairs: list[ReplyPair], encoder: SentenceEncoder) -> None:
    """Each metric of a reply's text alone gets "human": its value for what the person actually said (the
    references), the level a model tuned on these people's replies moves toward."""
    items = _text_items([pair.reference for pair in pairs], pairs, encoder)
    specs = {spec.key: spec for spec in METRICS}
    for row in rows:
        if row["key"] in items:
            row["human"] = specs[row["key"]].aggregate(items[row["key"]])


def eval_conversations(cfg: ChatConfig, data: str | None, split: str) -> list[Conversation]:
    """The conversations to score: `data` when given, else the run's own split, exactly as training made it."""
    if split not in ("eval", "train"):
        raise InputError(f"--split {split!r}: use 'eval' (held-out conversations) or 'train'")
    if data is not None:
        return [with_system(c, cfg.system_prompt) for c in load_conversations(data, **reader_options(cfg))[0]]
    train_set, eval_set, _ = load_chat_split(cfg)  # the same read, cleaning, seeded split and eval_limit as training
    return eval_set if split == "eval" else train_set


def _load_system(run: Run, cfg: ChatConfig, name: str) -> HFBackend:
    from chattune.models import load_model

    # not packed for oneDNN (generate/packed.py): `make demo` evaluates in the process that just trained, where
    # packing's moment with both weight copies in memory raised the peak RSS from ~3.1 to ~3.4 GiB, for ~15 s of
    # its 32 replies
    if name == "tuned":
        return load_hf_backend(str(run.path))
    model, tokenizer = load_model(cfg.model)
    return HFBackend(model, tokenizer, cfg.system_prompt)


def _likelihoods(backend: HFBackend, cfg: ChatConfig, conversations: list[Conversation]) -> list[dict]:
    # cut or split as training scored its held-out side, so `chattune eval` repeats training's numbers
    examples, _ = tokenize_conversations(backend.tokenizer, conversations, cfg.max_length, cfg.loss_on,
                                         cfg.long_conversations)
    if not examples:
        raise InputError(f"eval data: no conversation has a reply within max_length={cfg.max_length} tokens")
    return conversation_likelihoods(backend.model, examples, PadCollator(backend.tokenizer.pad_token_id),
                                    cfg.eval_batch_size)


def _score_replies(likelihoods: list[dict], replies: list[Reply], pairs: list[ReplyPair], encoder: SentenceEncoder,
                   console: Console, name: str) -> dict:
    """Per-example items of every metric in METRICS, plus the replies themselves."""
    texts, references = [reply.text for reply in replies], [pair.reference for pair in pairs]
    items = {
        "loss": likelihoods, "perplexity": likelihoods, "token_accuracy": likelihoods,
        "bleu": text_metrics.bleu_stats(texts, references), "chrf": text_metrics.chrf_stats(texts, references),
        **text_metrics.rouge_f1(texts, references),
        "relevance_reference": cosine_similarities(encoder, texts, references),
        "ended": [float(reply.ended) for reply in replies],
        **_text_items(texts, pairs, encoder),
    }
    summary = {spec.key: spec.aggregate(items[spec.key]) for spec in METRICS}
    console.print(f"eval {name}: loss {summary['loss']:.4f}  BLEU {summary['bleu']:.2f}  "
                  f"ROUGE-L {summary['rougeL']:.3f}  relevance {summary['relevance_reference']:.3f}  "
                  f"ended {summary['ended']:.0%}  loops {summary['loop_rate']:.0%}")
    return {"items": items, "replies": replies}


def _text_items(texts: list[str], pairs: list[ReplyPair], encoder: SentenceEncoder) -> dict:
    """Per-reply items of the metrics a reply's text alone gives (no reference needed): a model's replies and the
    people's own have them both."""
    toxic = toxicity(texts)
    word_lists = [text_metrics.words(text) for text in texts]
    return {
        "relevance_context": cosine_similarities(encoder, texts, [pair.context[-1]["content"] for pair in pairs]),
        "toxicity": toxic, "toxic_rate": [float(p > TOXIC_THRESHOLD) for p in toxic],
        "loop_rate": [float(text_metrics.loops(t)) for t in texts], "reply_words": [float(len(w)) for w in word_lists],
        "distinct_1": word_lists, "distinct_2": word_lists,
    }


def _examples(pairs: list[ReplyPair], scored: dict) -> list[dict]:
    examples = []
    for index, pair in enumerate(pairs):
        example = {"context": pair.context, "reference": pair.reference}
        for name, system in scored.items():
            reply: Reply = system["replies"][index]
            items = system["items"]
            example[name] = {"reply": reply.text, "ended": reply.ended, "toxicity": items["toxicity"][index],
                             "relevance_reference": items["relevance_reference"][index],
                             "rougeL": items["rougeL"][index], "loops": bool(items["loop_rate"][index])}
        examples.append(example)
    return examples
