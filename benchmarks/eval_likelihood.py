"""Held-out likelihood (loss, perplexity, token accuracy) with the LM head at every position against at the scored
reply tokens only, side by side in one run on the same conversations.

    python benchmarks/eval_likelihood.py                          # the demo's data and the offline default model
    python benchmarks/eval_likelihood.py --conversations 104 --rounds 3

The conversations are the first `--conversations` held-out ones of configs/demo.yaml's split, tokenized as training
and `chattune eval` score them. Each round times both paths; the table gives the best round of each, their ratio and
the numbers each computed (they must agree: the same token accuracy, the loss up to summation order).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from machine import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parent.parent / "configs" / "demo.yaml"))
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from chattune.config import load_config
    from chattune.data.chat import tokenize_conversations
    from chattune.data.collate import PadCollator
    from chattune.data.load import load_chat_split
    from chattune.evaluate import likelihood
    from chattune.models import load_model

    cfg = load_config(args.config, [f"eval_limit={args.conversations}"])
    _, held_out, _ = load_chat_split(cfg)
    model, tokenizer = load_model(cfg.model)
    examples, _ = tokenize_conversations(tokenizer, held_out, cfg.max_length, cfg.loss_on, cfg.long_conversations)
    collator = PadCollator(tokenizer.pad_token_id)
    targeted = likelihood.supports_target_only_loss
    paths = {"full LM head": lambda model: False, "LM head at scored tokens": targeted}
    likelihood.conversation_likelihoods(model, examples[:8], collator, cfg.eval_batch_size)  # warm-up
    best, scores = {}, {}
    for _ in range(args.rounds):
        for name, supports in paths.items():
            likelihood.supports_target_only_loss = supports
            started = time.perf_counter()
            rows = likelihood.conversation_likelihoods(model, examples, collator, cfg.eval_batch_size)
            best[name] = min(best.get(name, float("inf")), time.perf_counter() - started)
            scores[name] = likelihood.summarize_likelihoods(rows)
    likelihood.supports_target_only_loss = targeted
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    print(f"{len(examples)} of the first {len(held_out)} held-out conversations of {cfg.data} (those with a reply "
          f"within max_length), {cfg.model} in {dtype}, best of {args.rounds} rounds")
    print(f"{'path':26s} {'seconds':>8s} {'loss':>9s} {'accuracy':>9s} {'tokens':>7s} {'speed-up':>9s}")
    base = best["full LM head"]
    rows = []
    for name in paths:
        rows.append({"path": name, "seconds": round(best[name], 2), **scores[name], "speedup": base / best[name]})
        print(f"{name:26s} {best[name]:8.2f} {scores[name]['loss']:9.5f} {scores[name]['token_accuracy']:9.4f} "
              f"{scores[name]['tokens']:7d} {base / best[name]:8.2f}x")
    write_result("eval_likelihood", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
