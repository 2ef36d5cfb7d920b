"""Which decoding defaults keep a tuned chat model out of loops: candidate loop guards side by side on one run.

    python benchmarks/decoding_defaults.py ../runs/demo                # every candidate: ~30 min on 2 busy cores
    python benchmarks/decoding_defaults.py ../runs/demo --candidates off rp1.2 ngram4 --sets select

Every candidate decodes greedily (as `chattune eval` does; loops are worst there, and sampling at chat's
temperature 0.7 mostly hides them by chance) with the run's own model and chat template, up to the run's
`eval_max_new_tokens`, and is scored like the evaluation: loop rate (evaluate/text_metrics.loops), replies that end
before the limit, ROUGE-L F1 and relevance (MiniLM cosine) to what the person actually said, relevance to the
user's message, distinct-2. Each change against `off` (no guard) gets the paired bootstrap interval of the eval.

Two sets of conversations, so that the choice is not fitted to the numbers it is judged by:
  select   chat data the run never read: the conversations of its corpus after its `limit` (cleaned the same way)
  held-out the run's own held-out conversations (the ones `chattune eval` scores)
The candidates are chosen on `select`; `held-out` shows whether the choice carries over.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from machine import write_result

CANDIDATES = {  # name -> (repetition_penalty, no_repeat_ngram_size)
    "off": (1.0, 0),
    "rp1.1": (1.1, 0),
    "rp1.2": (1.2, 0),
    "rp1.3": (1.3, 0),
    "ngram3": (1.0, 3),
    "ngram4": (1.0, 4),
    "ngram5": (1.0, 5),
    "rp1.1+ngram4": (1.1, 4),
    "rp1.2+ngram4": (1.2, 4),
}
METRICS = ("loop_rate", "ended", "rougeL", "relevance_reference", "relevance_context", "distinct_2")


def conversation_sets(run, replies: int) -> dict[str, list]:
    """{"select": conversations the run never read, "held-out": the run's own held-out ones}, at most `replies`
    each, as (context, reference) pairs picked the way the evaluation picks them."""
    from chattune.data.conversation import with_system
    from chattune.data.load import load_chat_split, load_conversations, reader_options
    from chattune.evaluate.generation import reply_pairs

    cfg = run.config
    if not cfg.limit:
        raise SystemExit(f"{run.path}: the run read all of {cfg.data} (limit: null), so none of it is unseen")
    _, held_out, _ = load_chat_split(cfg)
    read, _ = load_conversations(cfg.data, limit=cfg.limit, **reader_options(cfg))
    # cleaning goes conversation by conversation (a duplicate drops the later one), so the conversations kept from
    # the first `limit` read are a prefix of those kept from more: what follows them was never trained on
    more, _ = load_conversations(cfg.data, limit=cfg.limit + 8 * replies, **reader_options(cfg))
    unseen = [with_system(c, cfg.system_prompt) for c in more[len(read):]]
    return {"select": reply_pairs(unseen[:replies], cfg.seed), "held-out": reply_pairs(held_out[:replies], cfg.seed)}


def score(backend, encoder, pairs, sampling) -> dict[str, list]:
    """Per-reply items of every metric, as the evaluation computes them."""
    from chattune.evaluate import text_metrics
    from chattune.evaluate.generation import generate_replies
    from chattune.evaluate.relevance import cosine_similarities

    replies = generate_replies(backend, pairs, sampling, batch_size=8)
    texts = [reply.text for reply in replies]
    return {
        "loop_rate": [float(text_metrics.loops(text)) for text in texts],
        "ended": [float(reply.ended) for reply in replies],
        "rougeL": text_metrics.rouge_f1(texts, [pair.reference for pair in pairs], ("rougeL",))["rougeL"],
        "relevance_reference": cosine_similarities(encoder, texts, [pair.reference for pair in pairs]),
        "relevance_context": cosine_similarities(encoder, texts, [pair.context[-1]["content"] for pair in pairs]),
        "distinct_2": [text_metrics.words(text) for text in texts],
        "texts": texts,
    }


def aggregate(key: str, items: list) -> float:
    from chattune.evaluate import text_metrics

    return text_metrics.distinct_n(items, 2) if key == "distinct_2" else statistics.fmean(items)


def table_rows(scored: dict[str, dict], seed: int) -> list[dict]:
    """One row per candidate: each metric, and its change against `off` with the paired bootstrap interval."""
    from chattune.evaluate.bootstrap import paired_bootstrap

    rows = []
    for name, items in scored.items():
        row = {"candidate": name}
        for key in METRICS:
            row[key] = aggregate(key, items[key])
            if name != "off":
                row[f"{key}_ci"] = paired_bootstrap(scored["off"][key], items[key],
                                                    lambda values, key=key: aggregate(key, values), seed=seed)
        rows.append(row)
    return rows


MAX_LOOP_RATE = 0.05  # the goal for the demo's held-out replies


def choose(rows: list[dict]) -> dict:
    """The rule the defaults are chosen by: of the candidates that loop in at most MAX_LOOP_RATE of the replies
    (else of those with the lowest loop rate), the one whose replies are most relevant to what the person said,
    then the one with the higher ROUGE-L; relevance first because it reads meaning, not shared words."""
    allowed = [row for row in rows if row["loop_rate"] <= MAX_LOOP_RATE]
    if not allowed:
        lowest = min(row["loop_rate"] for row in rows)
        allowed = [row for row in rows if row["loop_rate"] == lowest]
    return max(allowed, key=lambda row: (row["relevance_reference"], row["rougeL"]))


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}", flush=True)
    print("| candidate | loop rate | ended | ROUGE-L | relevance (reference) | relevance (user) | distinct-2 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        cells = []
        for key in METRICS:
            cell = f"{row[key]:.3f}"
            if f"{key}_ci" in row:
                low, high = row[f"{key}_ci"]
                cell += f" [{low:+.3f}, {high:+.3f}]"
            cells.append(cell)
        print(f"| {row['candidate']} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a chat run folder (e.g. runs/demo)")
    parser.add_argument("--replies", type=int, default=32, help="conversations per set (default 32, as the demo's "
                        "evaluation)")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--sets", nargs="+", default=["select", "held-out"], choices=["select", "held-out"])
    args = parser.parse_args()
    from chattune.evaluate.relevance import SentenceEncoder
    from chattune.generate.hf import load_hf_backend
    from chattune.generate.sampling import Sampling
    from chattune.runs import Run

    run = Run.open(args.run)
    sets = conversation_sets(run, args.replies)
    backend, encoder = load_hf_backend(str(run.path)), SentenceEncoder.load()
    names = ["off"] + [name for name in args.candidates if name != "off"]
    result = {"run": str(run.path), "max_new_tokens": run.config.eval_max_new_tokens, "sets": {}}
    for set_name, pairs in ((name, sets[name]) for name in args.sets):
        scored, started = {}, time.time()
        for name in names:
            penalty, ngram = CANDIDATES[name]
            sampling = Sampling(temperature=0, repetition_penalty=penalty, no_repeat_ngram_size=ngram,
                                max_new_tokens=run.config.eval_max_new_tokens)
            scored[name] = score(backend, encoder, pairs, sampling)
            print(f"{set_name} {name}: loop rate {statistics.fmean(scored[name]['loop_rate']):.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)
        rows = table_rows(scored, run.config.seed)
        print_table(f"{set_name}: {len(pairs)} conversations, greedy, up to {run.config.eval_max_new_tokens} tokens "
                    f"({time.time() - started:.0f} s); [95% interval of the change vs off]", rows)
        result["sets"][set_name] = {"conversations": len(pairs), "rows": rows,
                                    "replies": {name: items["texts"] for name, items in scored.items()}}
    first = args.sets[0]
    result["chosen"] = choose(result["sets"][first]["rows"])["candidate"]
    print(f"\nchosen on `{first}` (loop rate <= {MAX_LOOP_RATE:.0%}, then relevance, then ROUGE-L): {result['chosen']}")
    write_result("decoding_defaults", result)


if __name__ == "__main__":
    main()
