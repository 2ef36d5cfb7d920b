"""A run as a plain Hugging Face model folder: merged safetensors, the tokenizer with its chat template, and
generation_config.json with the sampling chattune chats with.

    write_hf_folder(backend.model, backend.tokenizer, run_sampling("runs/demo"), folder)
    AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)   # all a user needs

The weights are saved in the precision the run is scored and chatted in (fp32 on CPU), so the folder gives the run's
greedy tokens exactly (export/verify.py checks it).
"""

from __future__ import annotations

import os
from pathlib import Path

from chattune.generate.sampling import Sampling, generation_config


def write_hf_folder(model, tokenizer, sampling: Sampling, folder: Path) -> None:
    """`model` is the run with its LoRA already merged (`load_hf_backend`), so the folder needs no peft; `sampling`
    is the run's decoding defaults (`run_sampling`)."""
    model.generation_config = generation_config(tokenizer, sampling)
    model.save_pretrained(folder)  # model.safetensors (sharded above 5 GB), config.json, generation_config.json
    tokenizer.save_pretrained(folder)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():  # safetensors writes the weights owner-only; the folder is meant to be shared
        path.chmod(0o666 & ~umask)
