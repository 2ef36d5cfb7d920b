"""Ship a run: `chattune export RUN --format hf|gguf|ollama [--push REPO_ID]`.

    export.run.export_run("runs/demo", "gguf", quant="q8_0")   # the stage: write, verify, describe, push

    hf.py       merged safetensors + tokenizer with its chat template + generation_config.json
    gguf.py     GGUF for llama.cpp (f16, q8_0, q4_1 written here; q4_k_m by llama.cpp's own quantizer)
    ollama.py   the GGUF plus a Modelfile (chat template in Ollama's Go-template syntax, stops, sampling, system)
    card.py     the model card README.md: data, method, base vs tuned with intervals, use, limits, how to load
    verify.py   the exported model's greedy replies to 3 held-out prompts against the run's
    hub.py      push to the Hugging Face Hub (or --dry-run: what would be pushed, no network)
"""
