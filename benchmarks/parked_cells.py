"""What parked KV costs the llama.cpp backend: continuous batching with finished chats kept in the cache up to
PARKED_CELLS (chattune's default, `serve --parked-cells`), kept as long as cells and sequence ids allow (the
behaviour before the cap), and not kept at all, side by side in one run, on two kinds of traffic.

    python benchmarks/parked_cells.py                       # SmolLM2-135M q8_0, 2 threads, ~8 min on 2 cores
    python benchmarks/parked_cells.py --requests 40 --caps 0 2048

- **new prompts**: every request is a new ~200-token prompt (numbered, so nothing is shared), as in serve_load.py;
  parked KV is never reused, so it is pure cost.
- **returning chats**: `--chats` support chats take turns (chat 1 turn 1, chat 2 turn 1, ..., chat 1 turn 2, ...),
  so a chat's next turn arrives `--chats` requests after its last one; parked KV saves re-reading the conversation.

Both run `--rows` requests at a time through one `LlamaCppBatch`, as the server's engine does, greedy, `--tokens`
tokens each. Why parked KV costs anything: in llama.cpp's unified KV cache every token of every step scans the
attention mask over all cells up to the highest one in use, parked or not, so each parked cell slows every step
(8 rows decoding: 41.5 ms a step with ~1.9k cells in use, 54 ms with ~8.3k, on 2 Zen 3 cores).
"""

from __future__ import annotations

import argparse
import time

from machine import write_result

WORDS = ("the customer asked about the refund policy and we said that it depends on the order " * 20)
TURNS = ["Hi, my order 4821{0} has not arrived. It was due on Monday. Can you check where it is?",
         "It says delivered, but it is not at my door and the neighbours have not seen it either.",
         "Can you send a replacement, or do I have to wait for an investigation?"]


def serve(batch, requests, tokens: int, rows: int) -> dict:
    """Run the (prompt ids, then-callback) requests `rows` at a time; tok/s and prompt tokens reused."""
    from chattune.generate.sampling import Sampling

    pending, running, made, reused, prompt_tokens = list(requests), {}, 0, 0, 0
    started = time.perf_counter()
    while pending or running:
        while pending and len(running) < rows:
            prompt, done = pending.pop(0)
            ids = prompt()
            row = batch.add(ids, Sampling(temperature=0, max_new_tokens=tokens))
            running[row] = ([], done)
            reused, prompt_tokens = reused + batch.reused(row), prompt_tokens + len(ids)
        for row, token_id in batch.step().items():
            reply, done = running[row]
            reply.append(token_id)
            if len(reply) == tokens:
                batch.remove(row)
                del running[row]
                done(reply)
                made += len(reply)
    seconds = time.perf_counter() - started
    return {"tok_s": made / seconds, "seconds": seconds, "reused": reused / prompt_tokens,
            "cells_in_use": batch.cache.used, "parked": len(batch.cache.parked)}


def new_prompts(backend, count: int):
    def request(i):
        ids = backend.prompt_ids([{"role": "user", "content": f"Request {i}. {WORDS}"}])[:200]
        return (lambda: ids), (lambda reply: None)
    return [request(i) for i in range(count)]


def returning_chats(backend, chats: int):
    """Turn t of every chat before turn t + 1 of any; a turn's prompt holds the chat's earlier replies."""
    history = [[] for _ in range(chats)]

    def request(chat, turn):
        def prompt():
            return backend.prompt_ids(history[chat] + [{"role": "user", "content": TURNS[turn].format(chat)}])

        def done(reply):
            history[chat] += [{"role": "user", "content": TURNS[turn].format(chat)},
                              {"role": "assistant", "content": backend.decode(reply)}]
        return prompt, done
    return [request(chat, turn) for turn in range(len(TURNS)) for chat in range(chats)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="run folder or model")
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8, help="requests decoded together")
    parser.add_argument("--tokens", type=int, default=48, help="reply tokens per request")
    parser.add_argument("--requests", type=int, default=72, help="new-prompt requests")
    parser.add_argument("--chats", type=int, default=16, help="returning chats (3 turns each)")
    parser.add_argument("--caps", type=int, nargs="+", help="--parked-cells values besides no cap (default: 0 "
                        "and chattune's)")
    args = parser.parse_args()
    from chattune.generate import llamacpp

    backend = llamacpp.LlamaCppBackend.load(args.model, args.quant, threads=args.threads, max_batch=args.rows)
    no_cap = backend.context.n_ctx()  # parked until their cells or sequence ids are needed
    caps = sorted({*(args.caps or [0, llamacpp.PARKED_CELLS]), no_cap})  # no cap: the reference of the ratios
    default, rows = llamacpp.PARKED_CELLS, {}
    for cap in caps:
        backend.parked_cells = cap  # read by each new batch (chattune serve --parked-cells)
        rows[cap] = {"new prompts": serve(backend.new_batch(), new_prompts(backend, args.requests), args.tokens,
                                          args.rows),
                     "returning chats": serve(backend.new_batch(), returning_chats(backend, args.chats),
                                              args.tokens, args.rows)}
    print(f"{'parked cells':>13}{'new prompts tok/s':>19}{'vs no cap':>10}{'cells':>7}"
          f"{'returning chats tok/s':>23}{'vs no cap':>10}{'prompt reused':>15}")
    for cap, row in rows.items():
        new, chats = row["new prompts"], row["returning chats"]
        label = f"{cap}{' (no cap)' if cap == no_cap else ' (default)' if cap == default else ''}"
        print(f"{label:>13}{new['tok_s']:19.1f}{new['tok_s'] / rows[no_cap]['new prompts']['tok_s']:9.2f}x"
              f"{new['cells_in_use']:7}{chats['tok_s']:23.1f}"
              f"{chats['tok_s'] / rows[no_cap]['returning chats']['tok_s']:9.2f}x{chats['reused']:15.0%}")
    write_result("parked_cells", {"args": vars(args), "no_cap": no_cap, "default": default,
                                  "rows": {str(cap): row for cap, row in rows.items()}})


if __name__ == "__main__":
    main()
