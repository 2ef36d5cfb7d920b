"""Serving under load: `chattune serve` with continuous batching against the same server decoding one request at a
time (`--max-batch 1`, the baseline), side by side in one run, for both backends; then a soak.

    python benchmarks/serve_load.py                                   # both backends, 1/4/8/16 clients, 5-min soak
    python benchmarks/serve_load.py --backends llamacpp --levels 1 8 --seconds 20 --soak-seconds 0

Each level runs N streaming clients for `--seconds`: the first requests arrive as a Poisson process (exponential
gaps, mean `--arrival-gap`), and every client sends its next request after an exponential think time (mean
`--think`), so arrivals are spread out, never all at t=0. A request is a ~200-token user prompt (numbered, so no
two prompts are equal), greedy, `max_tokens` `--tokens`. Reported per level: aggregate completion tok/s (usage tokens of all requests / wall time), time to first
token p50/p95, inter-token latency p50/p95 (gaps between content chunks), errors, and 503s.

The soak: 32 clients against the batched server for `--soak-seconds`; it reports errors (anything but an intended
503), server RSS at the start (idle), after the first tenth of the soak (warm) and at the end, with the growth from
each, and whether every completed reply is in the SQLite store exactly once.
Results: printed tables with batched/baseline ratios, and dated JSON plus the same tables as markdown in
benchmarks/results/. Run it on a quiet machine (the load average before and after is recorded with the figures).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import write_result

sys.path.insert(0, str(Path(__file__).parent))
from generate_throughput import PROMPT  # noqa: E402  the bakery question of the one-stream benchmark

PROMPT_TOKENS = 200  # the TTFT target is for a 200-token prompt (chat template and system prompt included)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`chattune serve` in a subprocess on a free local port."""

    def __init__(self, model: str, backend: str, quant: str, max_batch: int, threads: int, folder: Path,
                 prompt_precision: str = "auto"):
        self.port, self.db = free_port(), folder / f"{backend}-{max_batch}-{time.time_ns()}.sqlite"
        command = [sys.executable, "-m", "chattune.cli", "serve", model, "--port", str(self.port), "--db",
                   str(self.db), "--backend", backend, "--quant", quant, "--max-batch", str(max_batch),
                   "--threads", str(threads), "--no-access-log"]
        if backend == "hf":
            command += ["--prompt-precision", prompt_precision]
        self.log = open(folder / f"server-{self.port}.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    async def wait_ready(self, client) -> None:
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, f"server exited; see {self.log.name}"
            assert time.monotonic() < deadline, "server did not start"
            try:
                if (await client.get(f"{self.url}/health")).status_code == 200:
                    return
            except Exception:  # not listening yet
                await asyncio.sleep(0.5)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


REQUESTS = itertools.count()


def prompt_words(model: str) -> str:
    """PROMPT's story cut so that the chat-formatted prompt (numbered, as sent, its question kept) is at most
    PROMPT_TOKENS tokens."""
    from chattune.generate.prompt import ChatPrompt
    from chattune.models import load_tokenizer

    chat = ChatPrompt(load_tokenizer(model))
    story, question = PROMPT.rsplit(". ", 1)
    words = story.split()

    def text(n: int) -> str:
        return " ".join(words[:n]) + ". " + question

    def length(n: int) -> int:
        return len(chat.ids([{"role": "user", "content": f"Request 99999. {text(n)}"}]))

    count = max(n for n in range(1, len(words) + 1) if length(n) <= PROMPT_TOKENS)
    print(f"prompt: {length(count)} tokens as sent (chat template included)", flush=True)
    return text(count)


async def one_request(client, url: str, tokens: int, text: str) -> dict:
    """One streamed chat completion: its id, usage tokens, TTFT, gaps between content chunks, status."""
    prompt = f"Request {next(REQUESTS)}. {text}"  # numbered first: no two requests share a prompt prefix
    body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    started, stamps, usage, reply_id = time.perf_counter(), [], None, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return {"status": response.status_code}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                return {"status": 500}
            reply_id = event["id"]
            if event.get("usage"):
                usage = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"status": 200 if usage is not None else 500, "id": reply_id, "tokens": usage or 0,
            "ttft": stamps[0] - started if stamps else None, "gaps": gaps}


async def run_level(url: str, clients: int, seconds: float, args) -> list[dict]:
    """`clients` streaming clients for `seconds`; Poisson arrivals of the first requests, exponential think times."""
    import httpx

    rng, results = random.Random(clients), []
    starts = [sum(rng.expovariate(1 / args.arrival_gap) for _ in range(i + 1)) for i in range(clients)]
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=30), limits=limits) as client:
        began = time.perf_counter()

        async def loop(delay: float) -> None:
            await asyncio.sleep(delay)
            while time.perf_counter() - began < seconds:
                try:
                    results.append(await one_request(client, url, args.tokens, args.prompt))
                except (httpx.HTTPError, OSError) as error:
                    results.append({"status": f"{type(error).__name__}"})
                await asyncio.sleep(rng.expovariate(1 / args.think))

        await asyncio.gather(*(loop(delay) for delay in starts))
        wall = time.perf_counter() - began
    for result in results:
        result["wall"] = wall
    return results


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def summarise(results: list[dict]) -> dict:
    done = [r for r in results if r["status"] == 200]
    ttfts = [r["ttft"] for r in done if r["ttft"] is not None]
    gaps = [g for r in done for g in r["gaps"]]
    wall = results[0]["wall"] if results else 0
    return {"requests": len(done), "busy_503": sum(r["status"] == 503 for r in results),
            "errors": sum(r["status"] not in (200, 503) for r in results),
            "tokens_per_s": sum(r["tokens"] for r in done) / wall if wall else 0.0,
            "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
            "itl_p50_ms": (percentile(gaps, 50) or 0) * 1000, "itl_p95_ms": (percentile(gaps, 95) or 0) * 1000}


async def load_rows(backend: str, args, folder: Path) -> dict:
    import httpx

    rows = {}
    for label, max_batch in (("baseline", 1), ("batched", args.max_batch))[0 if args.baseline else 1:]:
        server = Server(args.model, backend, args.quant, max_batch, args.threads, folder, args.prompt_precision)
        try:
            async with httpx.AsyncClient() as client:
                await server.wait_ready(client)
            await run_level(server.url, 1, 3, args)  # warm-up: first-call allocations, caches
            rows[label] = {}
            for clients in args.levels:
                rows[label][clients] = summarise(await run_level(server.url, clients, args.seconds, args))
                print(f"{backend:8} {label:8} {clients:>2} clients: {json.dumps(rows[label][clients])}", flush=True)
        finally:
            server.stop()
    return rows


async def soak(backend: str, args, folder: Path) -> dict:
    import httpx

    server = Server(args.model, backend, args.quant, args.max_batch, args.threads, folder, args.prompt_precision)
    try:
        async with httpx.AsyncClient() as client:
            await server.wait_ready(client)
        await run_level(server.url, 1, 3, args)
        rss_start = server.rss_mb()
        samples: list[float] = []
        sampler = asyncio.create_task(sample_rss(server, samples, args.soak_seconds / RSS_SAMPLES))
        results = await run_level(server.url, args.soak_clients, args.soak_seconds, args)
        sampler.cancel()
        rss_end = server.rss_mb()
    finally:
        server.stop()
    # growth after the first tenth: the start is an idle server, and the hf backend's KV buffers and the allocator
    # fill once under load (a 300 s hf soak reached its level within 30 s and stayed there)
    warm = samples[max(1, len(samples) // 10)] if len(samples) > 1 else rss_start
    ids = [r["id"] for r in results if r["status"] == 200]
    with sqlite3.connect(server.db) as db:
        stored = dict(db.execute("SELECT id, COUNT(*) FROM replies GROUP BY id").fetchall())
    return {**summarise(results), "clients": args.soak_clients, "seconds": args.soak_seconds,
            "rss_start_mb": rss_start, "rss_end_mb": rss_end, "rss_growth": rss_end / rss_start - 1,
            "rss_samples_mb": samples, "rss_warm_mb": warm, "rss_growth_after_warmup": rss_end / warm - 1,
            "replies_completed": len(ids), "stored_exactly_once": all(stored.get(i) == 1 for i in ids),
            "rows_in_store": sum(stored.values())}


RSS_SAMPLES = 20  # server RSS readings spread over the soak


async def sample_rss(server: Server, samples: list[float], every: float) -> None:
    while True:
        samples.append(server.rss_mb())
        await asyncio.sleep(every)


def table(backend: str, rows: dict) -> str:
    """The level rows of one backend as a markdown table: the batched server, each level against its own 1-client
    figure and against the `--max-batch 1` baseline at the same level."""
    lines = ["| clients | tok/s | vs 1 client | baseline tok/s | vs baseline | TTFT p50 / p95 s "
             "| inter-token p50 / p95 ms | requests | errors | 503s |", "|" + "---|" * 10]
    one = rows["batched"].get(1)
    for clients, ours in rows["batched"].items():
        base = rows.get("baseline", {}).get(clients)
        cells = [clients, f"{ours['tokens_per_s']:.1f}",
                 f"{ours['tokens_per_s'] / one['tokens_per_s']:.2f}x" if one else "-",
                 f"{base['tokens_per_s']:.1f}" if base else "-",
                 f"{ours['tokens_per_s'] / max(base['tokens_per_s'], 1e-9):.2f}x" if base else "-",
                 f"{ours['ttft_p50_s'] or 0:.2f} / {ours['ttft_p95_s'] or 0:.2f}",
                 f"{ours['itl_p50_ms']:.0f} / {ours['itl_p95_ms']:.0f}", ours["requests"], ours["errors"],
                 ours["busy_503"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return f"{backend}\n\n" + "\n".join(lines) + "\n"


def soak_table(soak: dict) -> str:
    return ("| clients | seconds | replies | errors | 503s | tok/s | TTFT p50 / p95 s | RSS start / warm / end MB "
            "| RSS growth from start / from warm | stored exactly once |\n|" + "---|" * 10 + "\n"
            f"| {soak['clients']} | {soak['seconds']:.0f} | {soak['replies_completed']} | {soak['errors']} | "
            f"{soak['busy_503']} | {soak['tokens_per_s']:.1f} | {soak['ttft_p50_s'] or 0:.2f} / "
            f"{soak['ttft_p95_s'] or 0:.2f} | {soak['rss_start_mb']:.0f} / {soak['rss_warm_mb']:.0f} / "
            f"{soak['rss_end_mb']:.0f} | {soak['rss_growth']:+.1%} / {soak['rss_growth_after_warmup']:+.1%} | "
            f"{soak['stored_exactly_once']} ({soak['rows_in_store']} rows) |\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--backends", nargs="*", default=["hf", "llamacpp"], help="none: the soak only")
    parser.add_argument("--quant", default="f16", help="GGUF for llamacpp (default f16: cached once exported)")
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 4, 8, 16])
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the --max-batch 1 server (halves the run)")
    parser.add_argument("--seconds", type=float, default=30, help="per level")
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="--threads for the server (torch, hf backend)")
    parser.add_argument("--prompt-precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="--prompt-precision for the hf server (auto: bf16 where the CPU has it natively)")
    parser.add_argument("--arrival-gap", type=float, default=0.3, help="mean seconds between first arrivals")
    parser.add_argument("--think", type=float, default=0.2, help="mean seconds between a client's requests")
    parser.add_argument("--soak-backend", default="llamacpp")
    parser.add_argument("--soak-clients", type=int, default=32)
    parser.add_argument("--soak-seconds", type=float, default=300, help="0 skips the soak")
    args = parser.parse_args()
    args.prompt = prompt_words(args.model)
    folder = Path(tempfile.mkdtemp(prefix="serve-load-"))
    data = {"args": vars(args), "load_average_before": os.getloadavg(), "load": {}}
    tables = []
    for backend in args.backends:
        data["load"][backend] = rows = asyncio.run(load_rows(backend, args, folder))
        if 1 in rows["batched"] and 8 in rows["batched"]:  # the target: 8 streams vs 1 on the same server
            data.setdefault("ratio_8_vs_1", {})[backend] = (rows["batched"][8]["tokens_per_s"]
                                                            / rows["batched"][1]["tokens_per_s"])
        tables.append(table(backend, rows))
        print("\n" + tables[-1], flush=True)
    if args.soak_seconds > 0:
        data["soak"] = asyncio.run(soak(args.soak_backend, args, folder))
        tables.append(f"soak ({args.soak_backend})\n\n" + soak_table(data["soak"]))
        print("\n" + tables[-1])
    data["load_average_after"] = os.getloadavg()
    path = write_result("serve_load", data)
    command = "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])
    path.with_suffix(".md").write_text(f"`{command}`\n\n" + "\n".join(tables))
    print(f"server logs: {folder}", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
