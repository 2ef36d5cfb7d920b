"""The llama.cpp backend produces the same greedy tokens as the HF backend, and seeds each request on its own."""

import pytest
from generate_helpers import lora_run

from chattune.generate.backend import load_backend
from chattune.generate.hf import load_hf_backend
from chattune.generate.llamacpp import FRESH_SEED, LlamaCppBackend
from chattune.generate.sampling import Sampling
from chattune.models import DEFAULT_MODEL, load_tokenizer

PROMPTS = [[{"role": "user", "content": "hello how are you 3"}],
           [{"role": "user", "content": "what is your favourite food"}]]


def greedy_ids(backend, messages, tokens: int) -> list[int]:
    out: list[int] = []
    backend.generate(backend.prompt_ids(messages), Sampling(temperature=0, max_new_tokens=tokens),
                     lambda token: out.append(token) or True)
    return out


class FakeLlama:
    """Stands in for `llama_cpp.Llama`: records the seed and the sampling arguments, yields `tokens`."""

    def __init__(self, tokens: list[int]):
        self.tokens, self.seeds, self.calls = tokens, [], []

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def generate(self, prompt_ids, **kwargs):
        self.calls.append(kwargs)
        yield from self.tokens


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


def test_every_request_sets_its_own_seed_and_stops_at_its_limits(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    llm = FakeLlama([5, 6, end, 7])
    backend = LlamaCppBackend(llm, tokenizer, system_prompt="be brief")
    tokens: list[int] = []
    for sampling in (Sampling(), Sampling(seed=7), Sampling(), Sampling(max_new_tokens=2)):
        backend.generate([1, 2], sampling, lambda token: tokens.append(token) or True)
    # an unseeded request after a seeded one is random again, not a replay of seed 7
    assert llm.seeds == [FRESH_SEED, 7, FRESH_SEED, FRESH_SEED]
    assert tokens == [5, 6, end] * 3 + [5, 6]  # stops on the end-of-turn token, or at max_new_tokens
    assert tokenizer.decode(backend.prompt_ids(PROMPTS[0])).startswith("<|im_start|>system\nbe brief<|im_end|>")
