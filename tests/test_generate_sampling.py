"""Sampling: its defaults are the CLI's, the server's and both backends', its checks, and which requests batch."""

import pytest

from chattune.cli import build_parser
from chattune.errors import InputError
from chattune.generate.hf import logits_warpers
from chattune.generate.llamacpp import LlamaCppBackend
from chattune.generate.sampling import Sampling, batch_key
from chattune.models import load_tokenizer
from chattune.serve.schemas import ChatRequest


class RecordingLlama:
    """Stands in for `llama_cpp.Llama`: records what the backend asks it to sample with."""

    def __init__(self):
        self.calls: list[dict] = []

    def set_seed(self, seed: int) -> None:
        pass

    def generate(self, prompt_ids, **kwargs):
        self.calls.append(kwargs)
        yield 0


def llamacpp_sampling_arguments(tokenizer, sampling: Sampling) -> dict:
    llm = RecordingLlama()
    LlamaCppBackend(llm, tokenizer).generate([1, 2], sampling, lambda token: True)
    return llm.calls[0]


def hf_sampling_values(sampling: Sampling) -> dict:
    return {name: value for warper in logits_warpers(sampling) for name, value in vars(warper).items()
            if name in ("temperature", "top_k", "top_p")}


def test_both_backends_sample_with_the_same_values(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    for sampling in (Sampling(), Sampling(temperature=1.3, top_p=0.5, top_k=7), Sampling(top_k=0)):
        fields = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
        llama = llamacpp_sampling_arguments(tokenizer, sampling)
        assert {"temperature": llama["temp"], "top_k": llama["top_k"], "top_p": llama["top_p"]} == fields
        assert (llama["min_p"], llama["repeat_penalty"]) == (0.0, 1.0)  # filters HF does not apply stay off
        hf = hf_sampling_values(sampling)
        assert hf == {k: v for k, v in fields.items() if k != "top_k" or v > 0}  # top_k 0: no top-k warper
    # in generate()'s order: the temperature first, then top_k, then top_p
    names = [type(warper).__name__ for warper in logits_warpers(Sampling())]
    assert names == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    assert Sampling().top_k == 50  # transformers' generate() default, which the HF numbers were measured with


def test_cli_and_server_defaults_are_samplings():
    default = Sampling()
    for verb in (["chat", "runs/x"], ["generate", "runs/x", "--prompt", "hi"]):
        args = build_parser().parse_args(verb)
        flags = Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                         max_new_tokens=args.max_new_tokens, seed=args.seed)
        assert flags == default
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    assert (request.temperature, request.top_p, request.seed) == (default.temperature, default.top_p, default.seed)


@pytest.mark.parametrize("fields, message", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_sampling_is_an_input_error(fields, message):
    with pytest.raises(InputError, match=message):
        Sampling(**fields)


def test_a_seed_fixes_the_generator_and_no_seed_draws_a_fresh_one():
    import torch

    def draw(sampling: Sampling) -> list[float]:
        return torch.rand(4, generator=sampling.generator()).tolist()

    assert draw(Sampling(seed=3)) == draw(Sampling(seed=3)) != draw(Sampling(seed=4))
    assert draw(Sampling()) != draw(Sampling())


def test_batching_rule():
    greedy, warm = Sampling(temperature=0, top_p=0.5), Sampling(temperature=0.7)
    assert batch_key(greedy) == batch_key(Sampling(temperature=0)) != batch_key(warm)
    assert batch_key(warm) != batch_key(Sampling(temperature=0.7, top_p=0.5))
    assert batch_key(Sampling(seed=1)) is None  # a seeded reply is reproducible only alone
    assert batch_key(warm) != batch_key(Sampling(temperature=0.7, top_k=5))  # a batch shares one set of warpers
