"""The GGUF export: the rotary permutation, a round trip through transformers' GGUF loader, GPT-2 and q4_k_m through
llama.cpp, the pre-tokenizer name llama.cpp splits text with, `chattune export --format gguf` with its check, and the
deprecated `export-gguf` verb."""

import json

import pytest
import torch
from generate_helpers import lora_run
from tokenizers import Regex, pre_tokenizers
from transformers import AutoModelForCausalLM

from chattune.cli import main
from chattune.export.gguf import LLAMA3_SPLIT, export_gguf, rope_permute, tokenizer_pre
from chattune.generate.hf import load_hf_backend
from chattune.models import DEFAULT_MODEL, load_tokenizer


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    return lora_run(tmp_path_factory, tiny_llama)


@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory, tiny_gpt2):
    """A LoRA run of the tiny GPT-2, whose tokenizer has no chat template (the fallback template applies)."""
    return lora_run(tmp_path_factory, tiny_gpt2)


def test_rope_permute_is_what_the_gguf_loader_undoes():
    weight = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(8, 3)
    permuted = rope_permute(weight, heads=2)
    # llama.cpp interleaves the two rotary halves of each head: rows (0,2),(1,3) of head 0, then head 1
    assert permuted[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]


def test_gguf_export_reloads_in_transformers_with_same_logits(tiny_run, tmp_path):
    hf = load_hf_backend(str(tiny_run))
    out = export_gguf(hf.model, hf.tokenizer, tmp_path / "tiny.gguf", quant="f16")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    ids = torch.tensor([hf.tokenizer("hello how are you 3")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(hf.model(ids).logits, reloaded(ids).logits, atol=2e-2)


def test_export_gguf_cli_writes_a_loadable_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "exported.gguf"
    assert main(["export-gguf", str(tiny_run), str(out), "--quant", "q8_0"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    assert reloaded.config.num_hidden_layers == 2
    assert "export-gguf is deprecated" in capsys.readouterr().err  # an alias for one release


def test_export_gguf_refuses_other_architectures(tiny_gpt2, tmp_path, capsys):
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    folder = tmp_path / "tiny-neox"
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=2, vocab_size=len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert main(["export-gguf", str(folder), str(tmp_path / "x.gguf")]) == 2
    assert "llama-architecture" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()


def _with_pre_tokenizer(tokenizer, pre_tokenizer):
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizer
    return tokenizer


def test_tokenizer_pre_names_the_split_llama_cpp_must_use(tiny_llama):
    assert tokenizer_pre(load_tokenizer(tiny_llama)) == "gpt-2"  # byte-level with GPT-2's regex
    smollm = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False)])
    assert tokenizer_pre(_with_pre_tokenizer(load_tokenizer(tiny_llama), smollm)) == "smollm"
    llama3 = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    assert tokenizer_pre(_with_pre_tokenizer(load_tokenizer(tiny_llama), llama3)) == "llama-bpe"
    assert tokenizer_pre(_with_pre_tokenizer(load_tokenizer(tiny_llama), pre_tokenizers.Whitespace())) == "default"


def test_export_verb_writes_a_gguf_of_the_fallback_template_model_that_passes_its_check(gpt2_run, tmp_path, capsys):
    pytest.importorskip("llama_cpp", reason="the GGUF check runs in llama.cpp: pip install '.[llamacpp]'")
    out = tmp_path / "gguf"
    assert main(["export", str(gpt2_run), "--format", "gguf", "--quant", "f16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "export.json").read_text())
    check = manifest["verification"]
    assert check["target"] == "llama.cpp f16" and check["passed"] and check["prompts"] == 3
    assert check["share"] >= check["tolerance"] == 0.95
    assert all(example["same_prompt"] for example in check["examples"])  # llama.cpp tokenizes like HF (pre: gpt-2)
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "export.json", "run-f16.gguf"]
    assert "llama-cli -m run-f16.gguf" in (out / "README.md").read_text()
    assert "equal tokens" in printed and "passed" in printed


def test_q4_k_m_is_made_by_llama_cpps_quantizer(tiny_llama, tmp_path):
    pytest.importorskip("llama_cpp", reason="q4_k_m is made by llama.cpp's quantizer: pip install '.[llamacpp]'")
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = load_tokenizer(tiny_llama)
    torch.manual_seed(0)  # rows of 256: K-quants need whole 256-value super-blocks (narrower rows fall back to Q5_0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                         max_position_embeddings=512, tie_word_embeddings=True))
    out = export_gguf(model, tokenizer, tmp_path / "tiny-q4_k_m.gguf", quant="q4_k_m")
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.ffn_gate.weight"] == "Q4_K"
    assert types["token_embd.weight"] == "Q6_K"  # the tied output head gets 6 bits in Q4_K_M
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tiny-q4_k_m.gguf"]  # no f16 left behind


def test_export_verb_checks_a_q4_k_m_export_against_its_tolerance(tiny_run, tmp_path):
    pytest.importorskip("llama_cpp", reason="q4_k_m is made by llama.cpp's quantizer: pip install '.[llamacpp]'")
    out = tmp_path / "q4"
    assert main(["export", str(tiny_run), "--format", "gguf", "--quant", "q4_k_m", "--out", str(out)]) == 0
    check = json.loads((out / "export.json").read_text())["verification"]
    assert check["target"] == "llama.cpp q4_k_m" and check["tolerance"] == 0.70 and check["share"] >= 0.70


@pytest.mark.smollm2
def test_smollm2_run_exports_to_q8_0_and_passes_its_check(tmp_path):
    pytest.importorskip("llama_cpp", reason="the GGUF check runs in llama.cpp: pip install '.[llamacpp]'")
    data = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Hi! What should I cook tonight? I have {i} eggs."},
                          {"role": "assistant", "content": "An omelette: quick, cheap, and good with anything."}]}
            for i in range(12)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run, out = tmp_path / "run", tmp_path / "gguf"
    assert main(["train", "--data", str(data), "--model", DEFAULT_MODEL, "--output", str(run), "--set", "max_steps=3",
                 "--set", "batch_size=4", "--set", "eval_replies=0", "--set", "precision=fp32"]) == 0
    assert main(["export", str(run), "--format", "gguf", "--quant", "q8_0", "--out", str(out)]) == 0
    check = json.loads((out / "export.json").read_text())["verification"]
    assert check["passed"] and check["share"] >= 0.90 and all(e["same_prompt"] for e in check["examples"])
