"""Sampling: its defaults are the CLI's, the server's and both backends', its checks, and the per-request token picker."""

import pytest

from chattune.cli import build_parser
from chattune.errors import InputError
from chattune.generate.pick import TokenPicker, logits_warpers
from chattune.generate.sampling import Sampling
from chattune.serve.schemas import ChatRequest


def hf_sampling_values(sampling: Sampling) -> dict:
    return {name: value for warper in logits_warpers(sampling) for name, value in vars(warper).items()
            if name in ("temperature", "top_k", "top_p")}


def test_warpers_follow_generate():
    for sampling in (Sampling(), Sampling(temperature=1.3, top_p=0.5, top_k=7), Sampling(top_k=0)):
        fields = {"temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
        assert hf_sampling_values(sampling) == {k: v for k, v in fields.items() if k != "top_k" or v > 0}
    # in generate()'s order: the temperature first, then top_k, then top_p
    names = [type(warper).__name__ for warper in logits_warpers(Sampling())]
    assert names == ["TemperatureLogitsWarper", "TopKLogitsWarper", "TopPLogitsWarper"]
    assert Sampling().top_k == 50  # transformers' generate() default, which the HF numbers were measured with


def test_a_picker_draws_from_its_own_generator():
    import torch

    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    draws = lambda sampling: [picker(logits) for picker in [TokenPicker(sampling)] for _ in range(20)]  # noqa: E731
    with torch.random.fork_rng():
        before = torch.get_rng_state()
        seeded = draws(Sampling(temperature=1.0, seed=3))
        assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never used
    assert seeded == draws(Sampling(temperature=1.0, seed=3)) != draws(Sampling(temperature=1.0, seed=4))
    assert set(draws(Sampling(temperature=0))) == {int(logits.argmax())}
    assert draws(Sampling(temperature=1.5, top_k=1)) == [int(logits.argmax())] * 20


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
