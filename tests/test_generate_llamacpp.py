"""The llama.cpp backend produces the same greedy tokens as the HF backend, and seeds each request on its own."""

import pytest
from generate_helpers import lora_run

from chattune.generate.backend import load_backend
from chattune.generate.hf import load_hf_backend
from chattune.generate.together import decode_together
from chattune.generate.sampling import Sampling
from chattune.models import DEFAULT_MODEL, load_tokenizer

PROMPTS = [[{"role": "user", "content": "hello how are you 3"}],
           [{"role": "user", "content": "what is your favourite food"}]]


def greedy_ids(backend, messages, tokens: int) -> list[int]:
    out: list[int] = []
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0, max_new_tokens=tokens),
                     lambda token: out.append(token) or True)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_llama):
    return lora_run(tmp_path_factory, tiny_llama)


def test_llamacpp_backend_matches_hf_greedy_tokens(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    hf = load_hf_backend(str(tiny_run))
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
    hf = load_hf_backend(DEFAULT_MODEL)
    fast = load_backend(DEFAULT_MODEL, "llamacpp", quant="f16")
    messages = [{"role": "user", "content": "Give me three tips for staying focused while studying."}]
    expected = greedy_ids(hf, messages, 32)
    assert len(expected) == 32
    assert greedy_ids(fast, messages, 32) == expected


def test_llamacpp_batch_equals_solo_and_seeds_hold_in_a_crowd(tiny_run):
    pytest.importorskip("llama_cpp", reason="the llama.cpp backend is an optional extra: pip install '.[llamacpp]'")
    fast = load_backend(str(tiny_run), "llamacpp", quant="f16")
    prompts = [fast.prompt_ids(m) for m in PROMPTS] + [fast.prompt_ids([{"role": "user", "content": "a story"}])]
    samplings = [Sampling(temperature=0, max_new_tokens=12), Sampling(temperature=1.0, seed=5, max_new_tokens=12),
                 Sampling(temperature=0.8, top_p=0.9, seed=9, max_new_tokens=7)]
    solo = []
    for prompt, sampling in zip(prompts, samplings):
        solo.append([])
        fast.generate(prompt, sampling, lambda token: solo[-1].append(token) or True)
    together: list[list[int]] = [[] for _ in prompts]
    decode_together(fast, prompts, samplings, [lambda t, row=row: together[row].append(t) or True
                                               for row in range(len(prompts))])
    assert together == solo and len(together[2]) <= 7
    end = fast.stop_ids
    assert all(len(row) == 12 or row[-1] in end for row in together[:2])
    assert fast.decode(together[0]).startswith("i ")
