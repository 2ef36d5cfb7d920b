"""Shared by the generate tests: a LoRA run of the tiny Llama trained by `chattune train`, built once per session."""

from __future__ import annotations

import json
from pathlib import Path

_RUNS: dict[str, Path] = {}  # base model folder -> its run; the GGUF and llama.cpp tests share one


def lora_run(tmp_path_factory, base_model: str) -> Path:
    """A run folder (config.yaml + adapter/) that learned two replies in 30 steps, through the real CLI."""
    if base_model in _RUNS:
        return _RUNS[base_model]
    from chattune.cli import main

    folder = tmp_path_factory.mktemp("lora-run")
    data = folder / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"hello how are you {i}"},
                          {"role": "assistant", "content": "i am fine thanks and you"},
                          {"role": "user", "content": "what is your favourite food"},
                          {"role": "assistant", "content": "i like pizza and pasta a lot"}]} for i in range(40)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = folder / "run"
    assert main(["train", "--data", str(data), "--model", base_model, "--output", str(run), "--set", "max_steps=30",
                 "--set", "batch_size=4", "--set", "learning_rate=0.01", "--set", "precision=fp32",
                 "--set", "eval_replies=0"]) == 0
    _RUNS[base_model] = run
    return run
