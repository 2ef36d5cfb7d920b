"""The GGUF export round-trips, and the llama.cpp backend produces the same greedy tokens as transformers."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from chattune.cli import main
from chattune.decode import HFGenerateBackend, load_backend
from chattune.export_gguf import export_gguf, rope_permute
from chattune.inference import Sampling, load_chatbot
from chattune.models import DEFAULT_MODEL

PROMPTS = [[{"role": "user", "content": "hello how are you 3"}],
           [{"role": "user", "content": "what is your favourite food"}]]


def greedy_ids(backend, messages, tokens: int) -> list[int]:
    out: list[int] = []
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0, max_new_tokens=tokens),
                     lambda token: out.append(token) or True)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    import json

    folder = tmp_path_factory.mktemp("fast-decode")
    data = folder / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"hello how are you {i}"},
                          {"role": "assistant", "content": "i am fine thanks and you"},
                          {"role": "user", "content": "what is your favourite food"},
                          {"role": "assistant", "content": "i like pizza and pasta a lot"}]} for i in range(40)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = folder / "run"
    assert main(["train", "--data", str(data), "--model", tiny_llama, "--output", str(run), "--set", "max_steps=30",
                 "--set", "batch_size=4", "--set", "learning_rate=0.01", "--set", "precision=fp32",
                 "--set", "eval_replies=0"]) == 0
    return run


def test_rope_permute_is_what_the_gguf_loader_undoes():
    weight = torch.arange(4 * 2 * 3, dtype=torch.float32).reshape(8, 3)
    permuted = rope_permute(weight, heads=2)
    # llama.cpp interleaves the two rotary halves of each head: rows (0,2),(1,3) of head 0, then head 1
    assert permuted[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]


def test_gguf_export_reloads_in_transformers_with_same_logits(tiny_run, tmp_path):
    chatbot = load_chatbot(str(tiny_run))
    out = export_gguf(chatbot.model, chatbot.tokenizer, tmp_path / "tiny.gguf", quant="f16")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    ids = torch.tensor([chatbot.tokenizer("hello how are you 3")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(chatbot.model(ids).logits, reloaded(ids).logits, atol=2e-2)


def test_llamacpp_backend_matches_hf_greedy_tokens(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    hf = HFGenerateBackend(load_chatbot(str(tiny_run)))
    fast = load_backend(str(tiny_run), "llamacpp", quant="f16")
    assert (tiny_run / "model-f16.gguf").is_file()  # exported once, next to the run
    for messages in PROMPTS:
        assert fast.prompt_ids(messages) == hf.prompt_ids(messages)
        expected = greedy_ids(hf, messages, 12)
        assert greedy_ids(fast, messages, 12) == expected
        assert hf.decode(expected).startswith("i ")


@pytest.mark.smollm2
def test_llamacpp_matches_hf_on_smollm2_for_32_tokens():
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    hf = HFGenerateBackend(load_chatbot(DEFAULT_MODEL))
    fast = load_backend(DEFAULT_MODEL, "llamacpp", quant="f16")
    messages = [{"role": "user", "content": "Give me three tips for staying focused while studying."}]
    expected = greedy_ids(hf, messages, 32)
    assert len(expected) == 32
    assert greedy_ids(fast, messages, 32) == expected


def test_export_gguf_cli_writes_a_loadable_file(tiny_run, tmp_path):
    out = tmp_path / "exported.gguf"
    assert main(["export-gguf", str(tiny_run), str(out), "--quant", "q8_0"]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name)
    assert reloaded.config.num_hidden_layers == 2


def test_export_gguf_refuses_other_architectures(tiny_gpt2, tmp_path, capsys):
    assert main(["export-gguf", tiny_gpt2, str(tmp_path / "x.gguf")]) == 2
    assert "llama-architecture" in capsys.readouterr().err
    assert not (tmp_path / "x.gguf").exists()
