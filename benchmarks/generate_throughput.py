"""Chat decoding speed: plain transformers `generate` against chattune's backends, side by side in one run.

    python benchmarks/generate_throughput.py                      # the offline default model, ~3 min on 2 cores
    python benchmarks/generate_throughput.py --model runs/demo    # a fine-tuned run (exports its GGUF once)

One stream: time to first token for a ~200-token prompt, and decode tokens/s over `--tokens` greedy tokens (the
end-of-turn token is suppressed by forcing a fixed length, so every row decodes the same number of tokens).
Rows: HF generate fp32 (the baseline), HF generate bf16, chattune's llama.cpp backend. Then chattune's hf batch
(the serving engine) at 1 and `--streams` rows with MKL's matmul against weights packed for oneDNN, and, where the
CPU has native bf16, packed with prompts read in bf16 (`--prompt-precision`): prompt reading and decode step time,
and their ratios. Then aggregate tokens/s of 8 concurrent streams through `chattune serve`
against one stream through it, for both backends (benchmarks/serve_load.py measures serving under load properly).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from machine import write_result

PROMPT = ("I run a small bakery and I'm trying to get more people to come in on weekday mornings. We sell "
          "bread, croissants, muffins and coffee, and we're next to a train station. Most of our customers are "
          "commuters who grab a coffee and leave, but we'd like them to buy a pastry too, and we'd like to see "
          "more families and remote workers during the day. We have a small seating area with six tables and "
          "free wifi, but it's often empty after nine. ") * 2 + "What three things should I try first, and why?"


def time_stream(generate) -> dict:
    """Run `generate(on_token)` and time the first token and the rest."""
    stamps = []
    started = time.perf_counter()
    generate(lambda token: stamps.append(time.perf_counter()) or True)
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return {"ttft_ms": (stamps[0] - started) * 1000, "decode_tokens_per_s": decode, "tokens": len(stamps)}


def hf_row(model_name: str, dtype, tokens: int) -> dict:
    import torch
    from transformers.generation.streamers import BaseStreamer

    from chattune.generate.hf import load_hf_backend

    backend = load_hf_backend(model_name)
    backend.model.to(dtype)
    prompt_ids = torch.tensor([backend.prompt_ids([{"role": "user", "content": PROMPT}])])

    def generate(on_token):
        class Sink(BaseStreamer):
            first = True

            def put(self, value):
                if self.first:
                    self.first = False
                else:
                    on_token(int(value.reshape(-1)[0]))

            def end(self):
                pass

        with torch.no_grad():
            backend.model.generate(input_ids=prompt_ids, attention_mask=torch.ones_like(prompt_ids),
                                   max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, streamer=Sink(),
                                   pad_token_id=backend.tokenizer.pad_token_id)

    generate(lambda token: True)  # warm-up
    return {**time_stream(generate), "prompt_tokens": prompt_ids.shape[1]}


def hf_batch_row(model_name: str, packed: bool, rows: int, tokens: int, prompt_precision: str = "fp32") -> dict:
    """chattune's hf backend (the engine `serve` runs): reading `rows` numbered copies of the prompt, then decode
    steps of all rows together; `packed` reorders the linear weights for oneDNN (generate/packed.py), else MKL."""
    from chattune.generate.hf import load_hf_backend
    from chattune.generate.sampling import Sampling

    backend = load_hf_backend(model_name, packed=packed, prompt_precision=prompt_precision)
    prompts = [backend.prompt_ids([{"role": "user", "content": f"{PROMPT} (#{row})"}]) for row in range(rows)]
    sampling = Sampling(temperature=0, max_new_tokens=tokens)
    rounds = []
    for _ in range(2):  # the first round warms up; the faster of the two is kept
        batch = backend.new_batch()
        for prompt in prompts:
            batch.add(prompt, sampling)
        started = time.perf_counter()
        batch.step()  # every row's prompt is read, and its first token picked
        read_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        for _ in range(tokens - 1):
            batch.step()
        rounds.append({"read_ms": read_ms, "step_ms": (time.perf_counter() - started) * 1000 / (tokens - 1)})
    return {**min(rounds, key=lambda r: r["step_ms"]), "rows": rows, "prompt_tokens": len(prompts[0])}


def llamacpp_row(model_name: str, quant: str, tokens: int) -> dict:
    from chattune.generate.llamacpp import LlamaCppBackend
    from chattune.generate.sampling import Sampling

    # no prefix reuse: every call reads the whole prompt, so TTFT is that of a new prompt (with reuse, a repeat of
    # the same prompt measured ~9 ms)
    backend = LlamaCppBackend.load(model_name, quant, prefix_reuse=False)
    backend.stop_ids = []  # fixed length, as in the HF rows
    prompt_ids = backend.prompt_ids([{"role": "user", "content": PROMPT}])
    sampling = Sampling(temperature=0, max_new_tokens=tokens)

    def generate(on_token):
        backend.generate(prompt_ids, sampling, on_token)

    generate(lambda token: True)
    return {**time_stream(generate), "prompt_tokens": len(prompt_ids)}


def reference_row(tokens: int) -> dict:
    """llama-cpp-python as its README uses it, on the packaged SmolLM2 Q4_1 file: the bar to match."""
    from llama_cpp import Llama

    from chattune.generate.llamacpp import gguf_path
    from chattune.models import DEFAULT_MODEL, load_tokenizer

    llm = Llama(model_path=str(gguf_path(DEFAULT_MODEL, "q4_1")), n_ctx=4096, verbose=False)
    tokenizer = load_tokenizer(DEFAULT_MODEL)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                           add_generation_prompt=True)

    def generate(on_token):
        llm.reset()
        for _ in llm.create_completion(prompt, max_tokens=tokens, temperature=0, stream=True):
            on_token(0)

    generate(lambda token: True)
    return {**time_stream(generate), "prompt_tokens": len(llm.tokenize(prompt.encode(), special=True))}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_rows(model_name: str, backend: str, tokens: int, streams: int) -> dict:
    import httpx

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "chattune.cli", "serve", model_name, "--port", str(port),
                               "--backend", backend], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)

        def one(index: int, out: list):
            body = {"model": model_name, "temperature": 0, "max_tokens": tokens,
                    "messages": [{"role": "user", "content": f"{PROMPT} (#{index})"}]}
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600)
            out.append(response.json()["usage"]["completion_tokens"])

        def aggregate(n: int) -> float:
            counts: list[int] = []
            threads = [threading.Thread(target=one, args=(i, counts)) for i in range(n)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return sum(counts) / (time.perf_counter() - started)

        aggregate(1)  # warm-up
        single = aggregate(1)
        many = aggregate(streams)
        return {"one_stream_tokens_per_s": single, f"{streams}_streams_tokens_per_s": many, "ratio": many / single}
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="run folder or model")
    parser.add_argument("--tokens", type=int, default=64, help="decoded tokens per stream")
    parser.add_argument("--quant", default="q8_0", help="GGUF weights for the llama.cpp backend")
    parser.add_argument("--streams", type=int, default=8)
    args = parser.parse_args()
    import torch

    rows = {
        "HF generate fp32": hf_row(args.model, torch.float32, args.tokens),
        "HF generate bf16": hf_row(args.model, torch.bfloat16, args.tokens),
        "llama.cpp q4_1 (reference)": reference_row(args.tokens),
        "chattune llamacpp q4_1": llamacpp_row(args.model, "q4_1", args.tokens),
        f"chattune llamacpp {args.quant}": llamacpp_row(args.model, args.quant, args.tokens),
    }
    print(f"{'one stream':28}{'prompt tok':>11}{'TTFT ms':>9}{'decode tok/s':>14}")
    for name, row in rows.items():
        print(f"{name:28}{row['prompt_tokens']:11}{row['ttft_ms']:9.0f}{row['decode_tokens_per_s']:14.1f}")
    base = rows["HF generate fp32"]["decode_tokens_per_s"]
    reference = rows["llama.cpp q4_1 (reference)"]["decode_tokens_per_s"]
    for name, row in rows.items():
        print(f"  {name}: {row['decode_tokens_per_s'] / base:.2f}x HF fp32, "
              f"{row['decode_tokens_per_s'] / reference:.2f}x llama.cpp reference decode")
    from chattune.precision import bf16_supported

    variants = [("MKL", False, "fp32"), ("oneDNN packed", True, "fp32")]
    if bf16_supported(torch.device("cpu")):  # emulated bf16 would only be slower
        variants.append(("packed, bf16 prompts", True, "bf16"))
    packing = {f"{rows} rows, {name}": hf_batch_row(args.model, packed, rows, args.tokens, precision)
               for rows in (1, args.streams) for name, packed, precision in variants}
    print(f"{'chattune hf batch':28}{'prompt tok':>11}{'read ms':>9}{'ms/step':>9}")
    for name, row in packing.items():
        print(f"{name:28}{row['prompt_tokens']:11}{row['read_ms']:9.0f}{row['step_ms']:9.1f}")
    for rows in (1, args.streams):
        plain, packed = packing[f"{rows} rows, MKL"], packing[f"{rows} rows, oneDNN packed"]
        print(f"  {rows} rows: packed weights {plain['step_ms'] / packed['step_ms']:.2f}x faster decode steps, "
              f"{plain['read_ms'] / packed['read_ms']:.2f}x faster prompt reading")
        if (bf16 := packing.get(f"{rows} rows, packed, bf16 prompts")) is not None:
            print(f"  {rows} rows: bf16 prompts {packed['read_ms'] / bf16['read_ms']:.2f}x faster prompt reading "
                  f"than packed fp32")
    # the server reads prompts in bf16 where the CPU has it natively (--prompt-precision auto)
    serving = {backend: serve_rows(args.model, backend, args.tokens, args.streams) for backend in ("llamacpp", "hf")}
    for backend, row in serving.items():
        print(f"chattune serve --backend {backend}: 1 stream {row['one_stream_tokens_per_s']:.1f} tok/s, "
              f"{args.streams} streams {row[f'{args.streams}_streams_tokens_per_s']:.1f} tok/s aggregate "
              f"({row['ratio']:.2f}x)")
    write_result("generate_throughput", {"args": vars(args), "one_stream": rows, "hf_batch": packing,
                                         "serve": serving})


if __name__ == "__main__":
    main()
