"""The model card (README.md) of an export: Hugging Face metadata, then what a user downstream needs to know.

    text = model_card(Run.open("runs/demo"), "hf", verification, name="demo-chat", files=[...], location="me/demo-chat")

Front matter (huggingface_hub's ModelCardData): base_model, library_name, license (from the base model, when known
offline), pipeline_tag, tags. Body, all read from the run folder: the training data and what cleaning dropped
(data_report.json), the method and hyperparameters (config.yaml, metrics.json), base vs tuned with 95% intervals
(eval.json, else the likelihoods of metrics.json), intended use and limits, how to load it, and the export's own
check against the run. The Hub needs a dataset id for `datasets:`; chattune's corpora and local files have none, so
the data is named in the body instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from chattune.evaluate.report import number, run_summary, verdict
from chattune.runs import Run

# chattune's offline model aliases -> (Hub id, licence) of the model they ship
KNOWN_BASES = {"smollm2-135m-instruct": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
EXAMPLE_PROMPT = "hi! how was your weekend?"


def base_model(name: str) -> tuple[str | None, str | None]:
    """(Hub id, licence) of a run's base model, from what is on this machine: an alias, the README of a local
    folder, or the cached model card of a Hub id. Never the network."""
    from huggingface_hub import metadata_load, try_to_load_from_cache

    if name in KNOWN_BASES:
        return KNOWN_BASES[name]
    if Path(name).exists():  # a local folder: no Hub id to link; its own card may name the licence
        readme = Path(name) / "README.md"
        return None, ((metadata_load(readme) or {}).get("license") if readme.is_file() else None)
    cached = try_to_load_from_cache(name, "README.md")  # a path when the model's card is in the local HF cache
    return name, ((metadata_load(cached) or {}).get("license") if isinstance(cached, str) else None)


def front_matter(run: Run, fmt: str) -> str:
    from huggingface_hub import ModelCardData

    hub_id, licence = base_model(run.config.model)
    tags = ["chattune", "conversational", "lora" if run.config.method == "lora" else "full-fine-tune"]
    tags += {"hf": ["safetensors"], "gguf": ["gguf"], "ollama": ["gguf", "ollama"]}[fmt]
    data = ModelCardData(base_model=hub_id, library_name="transformers" if fmt == "hf" else None, license=licence,
                         pipeline_tag="text-generation", tags=tags)
    return data.to_yaml()


def model_card(run: Run, fmt: str, verification: dict, *, name: str, files: list[str], location: str) -> str:
    """`name` titles the card; `location` is where users load it from: the Hub repo id, or the export folder."""
    cfg = run.config
    hub_id, _ = base_model(cfg.model)
    base = f"[{hub_id}](https://huggingface.co/{hub_id})" if hub_id else f"`{cfg.model}`"
    method = f"LoRA (r={cfg.lora.r}, alpha={cfg.lora.alpha}) merged into the base weights" \
        if cfg.method == "lora" else "full fine-tuning"
    sections = [
        f"---\n{front_matter(run, fmt)}\n---",
        f"# {name}\n\n{base} fine-tuned for chat with chattune ({method}) on `{cfg.data}`. Exported as "
        f"{_FORMATS[fmt]}.",
        _data_section(run),
        _training_section(run),
        _evaluation_section(run),
        _use_section(run),
        _load_section(run, fmt, files, location, name),
        _check_section(verification),
    ]
    return "\n\n".join(sections) + "\n"


_FORMATS = {"hf": "merged safetensors with the tokenizer, its chat template and chattune's sampling defaults",
            "gguf": "GGUF for llama.cpp (chat template included)",
            "ollama": "GGUF with an Ollama Modelfile (chat template, stop tokens, sampling, system prompt)"}


def _data_section(run: Run) -> str:
    report, cfg = run.data_report(), run.config
    data = report["data"]
    dropped = ", ".join(f"{reason} {count:,}" for reason, count in data["dropped"].items()) or "nothing"
    changed = ", ".join(f"{what} {count:,}" for what, count in data["changed"].items()) or "nothing"
    lines = [
        "## Training data",
        "",
        f"- Source: `{data['source']}` (read as {data['format']}): {data['conversations_read']:,} conversations read, "
        f"{data['conversations']:,} kept after cleaning ({data['turns']:,} turns).",
        f"- Cleaning dropped: {dropped}. Changed: {changed}.",
    ]
    if report["eval_data"]:
        lines.append(f"- Held-out conversations from `{report['eval_data']['source']}`.")
    split = f"a seeded split by conversation (eval_fraction {cfg.eval_fraction}, seed {cfg.data_split_seed})" \
        if not report["eval_data"] else "the separate held-out file"
    lines.append(f"- Split: {report['train_conversations']:,} train / {report['eval_conversations']:,} held-out "
                 f"conversations, {split}; no conversation is on both sides.")
    cut = report["dropped_no_reply_within_max_length"]
    lines.append(f"- Trained tokens: {report['train_tokens']['trained_total']:,} of {report['train_tokens']['total']:,}"
                 f" ({'assistant replies and their end-of-turn token' if cfg.loss_on == 'assistant' else 'all'}); "
                 f"{cut['train']} train / {cut['eval']} held-out conversations had no reply within max_length "
                 f"{cfg.max_length} and were left out.")
    for warning in data["warnings"]:
        lines.append(f"- Reading warning: {warning}")
    if cfg.system_prompt:
        lines.append(f"- System prompt added to every conversation without one: \"{cfg.system_prompt}\"")
    return "\n".join(lines)


def _training_section(run: Run) -> str:
    cfg, metrics = run.config, run.metrics()
    log_rows = [json.loads(line) for line in run.metrics_log_path.read_text(encoding="utf-8").splitlines()
                if line.strip()] if run.metrics_log_path.is_file() else []
    rows = run_summary(cfg.to_dict(), metrics, log_rows, run.data_report())
    if cfg.method == "lora":
        rows.insert(2, ("LoRA", f"r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, "
                                f"target modules: {cfg.lora.target_modules}"))
    length = f"max_steps {cfg.max_steps}" if cfg.max_steps > 0 else f"{cfg.epochs:g} epochs"
    rows.append(("schedule", f"{length}, warmup {cfg.warmup_ratio:g}, weight decay {cfg.weight_decay:g}, grad clip "
                             f"{cfg.max_grad_norm:g}, early stopping patience {cfg.early_stopping_patience}"))
    rows.append(("loss on", "assistant replies only" if cfg.loss_on == "assistant" else "every token"))
    table = "\n".join(f"| {label} | {value} |" for label, value in rows)
    return f"## Training\n\n| | |\n|---|---|\n{table}"


def _evaluation_section(run: Run) -> str:
    if not run.eval_path.is_file():
        metrics = run.metrics()
        rows = [f"| {key.replace('_', ' ')} | {number(metrics['base'][key])} | {number(metrics['tuned'][key])} |"
                for key in ("loss", "perplexity", "token_accuracy")]
        return ("## Evaluation\n\nLikelihood of the held-out conversations' replies (metrics.json; no interval: run "
                "`chattune eval RUN --compare-base` for them).\n\n| metric | base | tuned |\n|---|---|---|\n"
                + "\n".join(rows))
    evaluation = run.evaluation()
    data, boot = evaluation["data"], evaluation["bootstrap"]
    intro = (f"`chattune eval` ({evaluation['task']}): {data['conversations']:,} held-out conversations from "
             f"`{data['source']}` ({data['split']} split), one greedy reply of up to "
             f"{evaluation['sampling']['max_new_tokens']} tokens to each of {data['pairs']:,}. Changes come with a "
             f"paired bootstrap {boot['confidence']:.0%} interval over conversations ({boot['resamples']:,} "
             "resamples): better/worse when it excludes 0.")
    rows = []
    for row in evaluation["metrics"]:
        interval = f"[{number(row['ci'][0], True)}, {number(row['ci'][1], True)}]" if "ci" in row else "–"
        rows.append(f"| {row['label']} | {number(row.get('base'))} | {number(row['tuned'])} | "
                    f"{number(row.get('delta'), True)} | {interval} | {verdict(row)} |")
    return (f"## Evaluation\n\n{intro}\n\n| metric | base | tuned | change | 95% interval | verdict |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


def _use_section(run: Run) -> str:
    cfg, report = run.config, run.data_report()
    safety = "the toxicity rows above are measured on held-out replies only" if run.eval_path.is_file() else \
        "its replies' toxicity was not measured (`chattune eval RUN --compare-base` does)"
    return (f"## Intended use and limits\n\nA small chat model for conversations like its "
            f"{report['train_conversations']:,} training conversations from `{cfg.data}`: it learned their tone, "
            "length and topics, not facts. It can be confidently wrong, repeat itself, or drift off topic in long "
            f"conversations, and it has no safety tuning beyond its base model's; {safety}. Check its replies before "
            "they reach people, and do not use it for medical, legal or financial advice.")


def _load_section(run: Run, fmt: str, files: list[str], where: str, name: str) -> str:
    system = run.config.system_prompt
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": EXAMPLE_PROMPT})
    if fmt == "hf":
        sampling = "temperature, top_p, top_k and stop tokens from generation_config.json"
        flag = f" --system {json.dumps(system)}" if system else ""
        return (f"## How to use\n\nWith transformers:\n\n```python\nfrom transformers import AutoModelForCausalLM, "
                f"AutoTokenizer\n\nmodel = AutoModelForCausalLM.from_pretrained(\"{where}\")\ntokenizer = "
                f"AutoTokenizer.from_pretrained(\"{where}\")\nmessages = {json.dumps(messages, ensure_ascii=False)}\n"
                "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
                f"return_dict=True)\noutput = model.generate(**inputs)  # {sampling}\n"
                "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))\n```"
                f"\n\nWith chattune:\n\n```bash\nchattune chat {where}{flag}        # streaming terminal chat\n"
                f"chattune serve {where}        # OpenAI-compatible API and web chat on http://127.0.0.1:8000\n```")
    gguf = next(file for file in files if file.endswith(".gguf"))
    text = (f"## How to use\n\nWith llama.cpp (the chat template is in the file):\n\n```bash\nllama-cli -m {gguf} -cnv"
            + (f" -sys {json.dumps(system)}" if system else "") + "\n```\n\nWith llama-cpp-python:\n\n```python\n"
            f"from llama_cpp import Llama\n\nllm = Llama(model_path=\"{gguf}\")\nprint(llm.create_chat_completion("
            f"messages={json.dumps(messages, ensure_ascii=False)})[\"choices\"][0][\"message\"][\"content\"])\n```")
    if fmt == "ollama":
        text += ("\n\nWith Ollama (the Modelfile carries the template, stop tokens, sampling and system prompt):\n\n"
                 f"```bash\nollama create {name} -f Modelfile\nollama run {name}\n```")
    return text


def _check_section(verification: dict) -> str:
    return (f"## Export check\n\nAt export, the exported model ({verification['target']}) and the trained run replied "
            f"greedily to {verification['prompts']} held-out prompts, up to {verification['max_new_tokens']} tokens "
            f"each: {verification['same_replies']}/{verification['prompts']} replies identical; at every position of "
            f"the run's replies the exported model picked the run's token {verification['equal_tokens']}/"
            f"{verification['tokens']} times ({verification['share']:.1%}; required: "
            f"{verification['tolerance']:.0%}).")
