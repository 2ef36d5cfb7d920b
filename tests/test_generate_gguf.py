"""The GGUF export: the rotary permutation, a round trip through transformers' GGUF loader, and the CLI verb."""

import pytest
import torch
from generate_helpers import lora_run
from transformers import AutoModelForCausalLM

from chattune.cli import main
from chattune.generate.gguf import export_gguf, rope_permute
from chattune.generate.hf import load_hf_backend


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    return lora_run(tmp_path_factory, tiny_llama)


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


def test_export_gguf_cli_writes_a_loadable_file(tiny_run, tmp_path):
    out = tmp_path / "exported.gguf"
    assert main(["export-gguf", str(tiny_run), str(out), "--quant", "q8_0"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    assert reloaded.config.num_hidden_layers == 2


def test_export_gguf_refuses_other_architectures(tiny_gpt2, tmp_path, capsys):
    assert main(["export-gguf", tiny_gpt2, str(tmp_path / "x.gguf")]) == 2
    assert "llama-architecture" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
