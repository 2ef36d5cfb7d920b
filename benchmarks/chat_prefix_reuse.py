"""Prefix reuse in the llama.cpp backend: time to first token of each turn of a 10-turn chat with reuse off (every
turn reads its whole prompt: the conversation so far) and on (a turn reads only what its previous turn did not:
the previous reply's end and the new user message), side by side in one run.

    python benchmarks/chat_prefix_reuse.py                     # SmolLM2-135M q8_0, 2 threads, ~2 min on 2 cores
    python benchmarks/chat_prefix_reuse.py --model runs/demo --repeats 1

The chat goes through `LlamaCppBackend` directly (no server), one batch per backend kept across turns as the
server's engine keeps it; replies are greedy, at most `--tokens` tokens. Each chat is run `--repeats` times and a
turn's best time is reported (the least disturbed by other work on the machine). Replies with reuse on must be the
same tokens as with reuse off; the script says if they are not.
"""

from __future__ import annotations

import argparse
import time

from machine import write_result

USERS = [
    "Hi, I ordered a pair of running shoes last week but they haven't arrived yet. Can you help?",
    "The order number is 48213. It was supposed to arrive on Monday.",
    "It says delivered, but there's nothing at my door and my neighbours haven't seen it either.",
    "I've checked with the building's reception too, they don't have it.",
    "Can you send a replacement pair, or do I have to wait for an investigation?",
    "How long does the investigation usually take?",
    "I need them for a race in ten days. Is there any way to speed this up?",
    "OK. If I buy another pair now, can I get a refund for the lost one later?",
    "Can I also change the size to 43 for the new pair? The old ones were a bit tight.",
    "Great, thanks. Could you summarise what happens next so I can keep a note of it?",
]


def chat(backend, tokens: int) -> list[dict]:
    """The 10 turns through one batch: TTFT, prompt tokens, prompt tokens reused, and reply ids of each turn."""
    from chattune.generate.sampling import Sampling

    batch, messages, turns = backend.new_batch(), [], []
    sampling = Sampling(temperature=0, max_new_tokens=tokens)
    for text in USERS:
        messages.append({"role": "user", "content": text})
        prompt = backend.prompt_ids(messages)
        started = time.perf_counter()
        row, reply = batch.add(prompt, sampling), []
        while not reply:
            reply += batch.step().values()
        ttft = time.perf_counter() - started
        while reply[-1] not in backend.stop_ids and len(reply) < tokens:
            reply += batch.step().values()
        turns.append({"ttft_ms": ttft * 1000, "prompt_tokens": len(prompt), "reused": batch.reused(row),
                      "reply": reply})
        batch.remove(row)
        messages.append({"role": "assistant", "content": backend.decode(reply)})
    return turns


def best_of(backend, tokens: int, repeats: int) -> list[dict]:
    runs = [chat(backend, tokens) for _ in range(repeats)]
    return [{**turns[0], "ttft_ms": min(turn["ttft_ms"] for turn in turns)} for turns in zip(*runs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="run folder or model")
    parser.add_argument("--quant", default="q8_0")
    parser.add_argument("--tokens", type=int, default=48, help="most reply tokens per turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from chattune.generate.llamacpp import LlamaCppBackend
    from chattune.generate.sampling import Sampling

    rows = {}
    for name, reuse in (("reuse off", False), ("reuse on", True)):
        backend = LlamaCppBackend.load(args.model, args.quant, threads=args.threads, prefix_reuse=reuse)
        backend.generate(backend.prompt_ids([{"role": "user", "content": USERS[0]}]),
                         Sampling(temperature=0, max_new_tokens=4), lambda token: True)  # warm-up
        rows[name] = best_of(backend, args.tokens, args.repeats)
        backend.close()
    off, on = rows["reuse off"], rows["reuse on"]
    same = [a["reply"] == b["reply"] for a, b in zip(off, on)]
    print(f"{'turn':>4}{'prompt tok':>11}{'read (on)':>10}{'TTFT off ms':>13}{'TTFT on ms':>12}{'ratio':>7}  same reply")
    for turn, (a, b) in enumerate(zip(off, on), 1):
        print(f"{turn:4}{b['prompt_tokens']:11}{b['prompt_tokens'] - b['reused']:10}{a['ttft_ms']:13.0f}"
              f"{b['ttft_ms']:12.0f}{a['ttft_ms'] / b['ttft_ms']:7.2f}  {same[turn - 1]}")
    print(f"turn 10 TTFT: {off[-1]['ttft_ms']:.0f} ms without reuse, {on[-1]['ttft_ms']:.0f} ms with it "
          f"({off[-1]['ttft_ms'] / on[-1]['ttft_ms']:.1f}x); replies identical in {sum(same)}/{len(same)} turns")
    write_result("chat_prefix_reuse", {"args": vars(args), "turns": rows, "identical_replies": same})


if __name__ == "__main__":
    main()
