"""Sampling: its defaults are the CLI's, the server's and both backends', its checks, and the per-request token picker."""

from dataclasses import replace

import pytest
import torch

from chattune.cli import build_parser
from chattune.errors import InputError
from chattune.generate.pick import TokenPicker, draw, logits_warpers
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
    # the same logits at every step, so the same token again and again: the loop guard would ban it
    draws = lambda sampling: [picker(logits) for picker in [TokenPicker(replace(sampling, no_repeat_ngram_size=0))]
                              for _ in range(20)]  # noqa: E731
    with torch.random.fork_rng():
        before = torch.get_rng_state()
        seeded = draws(Sampling(temperature=1.0, seed=3))
        assert torch.equal(torch.get_rng_state(), before)  # the global RNG is never used
    assert seeded == draws(Sampling(temperature=1.0, seed=3)) != draws(Sampling(temperature=1.0, seed=4))
    assert set(draws(Sampling(temperature=0))) == {int(logits.argmax())}
    assert draws(Sampling(temperature=1.5, top_k=1)) == [int(logits.argmax())] * 20


def test_a_draw_follows_the_distribution_and_never_picks_a_token_of_probability_0():
    """The inverse-CDF draw is the categorical distribution: 20,000 draws land within 1.5 points of each token's
    probability (a standard error is <0.4 points), and tokens cut to probability 0 never come up, at either end."""
    probs = torch.tensor([0.0, 0.5, 0.0, 0.3, 0.15, 0.05, 0.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([draw(probs, generator) for _ in range(20_000)]), minlength=len(probs))
    assert (counts[probs == 0] == 0).all()
    assert torch.allclose(counts / 20_000, probs, atol=0.015)
    assert draw(torch.tensor([0.0, 0.0, 1.0]), generator) == 2


def test_cli_and_server_defaults_are_samplings():
    from chattune.cli import _sampling

    default = Sampling()
    for verb in (["chat", "runs/x"], ["generate", "runs/x", "--prompt", "hi"]):  # not a run: chattune's defaults
        assert _sampling(build_parser().parse_args(verb)) == default
    flags = build_parser().parse_args(["chat", "runs/x", "--no-repeat-ngram-size", "5", "--temperature", "0"])
    assert _sampling(flags) == replace(default, no_repeat_ngram_size=5, temperature=0)
    # a request that leaves the sampling fields out decodes with the server's defaults (the run's), all of them
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    run_default = replace(default, no_repeat_ngram_size=5, repetition_penalty=1.3, temperature=0.2)
    assert request.sampling(run_default) == run_default
    given = ChatRequest(messages=[{"role": "user", "content": "hi"}], temperature=0.9, seed=4)
    assert given.sampling(run_default) == replace(run_default, temperature=0.9, seed=4)


@pytest.mark.parametrize("fields, message", [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
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


@pytest.mark.parametrize("penalty, ngram", [(1.0, 2), (1.0, 3), (1.3, 3), (1.2, 1), (1.5, 0)])
def test_the_pickers_loop_guards_are_generates_processors(penalty, ngram):
    """Token by token over a small vocabulary (so n-grams recur), the greedy picker equals transformers' repetition
    penalty then no-repeat n-gram processors over prompt + reply, then argmax: `model.generate`'s rule."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    processors = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(penalty)]
                                     + ([NoRepeatNGramLogitsProcessor(ngram)] if ngram else []))
    rng = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 12, (9,), generator=rng).tolist()
    picker = TokenPicker(Sampling(temperature=0, repetition_penalty=penalty, no_repeat_ngram_size=ngram),
                         prompt_ids=prompt)
    sequence, banned_some = list(prompt), False
    for _ in range(30):
        logits = torch.randn(12, generator=rng) * 3
        expected = processors(torch.tensor([sequence]), logits[None].clone())[0]
        banned_some |= bool(torch.isinf(expected).any())
        if torch.isinf(expected).all():
            break  # every token banned: generate would pick token 0 of an all -inf row; no reply goes on from here
        token = picker(logits)
        assert token == int(expected.argmax())
        sequence.append(token)
    assert banned_some or not ngram  # the n-gram rule acted, so the equality above tested it
