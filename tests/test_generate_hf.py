"""The HF backend: batched decoding equals one-at-a-time and `model.generate`, sampling draws from the request's own
generator (never the global torch RNG), the tokenizer is never changed, and run folders load as trained."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import torch
from generate_helpers import lora_run
from serve_helpers import LEARNED, PROMPTS, chat_run, one_torch_thread, solo_tokens

from chattune.generate.together import decode_together
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.sampling import Sampling
from chattune.models import load_model
from chattune.runs import Run


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def chat_backend(tmp_path_factory, tiny_llama) -> HFBackend:
    return load_hf_backend(str(chat_run(tmp_path_factory, tiny_llama)))


def test_hf_batch_equals_solo_greedy_and_a_stopped_row_leaves_the_others(chat_backend):
    backend = chat_backend
    sampling = Sampling(temperature=0, max_new_tokens=24)
    with one_torch_thread():
        solo = [solo_tokens(backend, prompt, sampling) for prompt in PROMPTS]
        batched: list[list[int]] = [[] for _ in PROMPTS]

        def on_token(row: int):
            # row 1 behaves like a client that left after 3 tokens
            return lambda t: batched[row].append(t) or row != 1 or len(batched[row]) < 3

        samplings = [replace(sampling, max_new_tokens=5) if row == 2 else sampling for row in range(len(PROMPTS))]
        decode_together(backend, [backend.prompt_ids(user(p)) for p in PROMPTS], samplings,
                               [on_token(row) for row in range(len(PROMPTS))])
    assert backend.decode(solo[0]) == LEARNED[PROMPTS[0]]
    assert batched[1] == solo[1][:3] and batched[2] == solo[2][:5]  # stopped by its client, by its own max
    assert [b for row, b in enumerate(batched) if row not in (1, 2)] == \
        [s for row, s in enumerate(solo) if row not in (1, 2)]
    assert len({len(s) for s in solo}) > 1  # rows ended at different steps (end of turn vs max_new_tokens)


def test_a_leaving_row_frees_its_place_and_its_columns_without_changing_the_others(chat_backend):
    """A row that leaves hands its place to the last row (its KV is not copied around the batch), and the left
    columns only it used go once they are a quarter of the width; the rows that stay decode as they would alone."""
    backend = chat_backend
    sampling = Sampling(temperature=0, max_new_tokens=16)
    long_prompt = "tell me a story " * 8
    prompts = [long_prompt, *PROMPTS[:4]]
    with one_torch_thread():
        solo = [solo_tokens(backend, prompt, sampling) for prompt in prompts]
        batch = backend.new_batch()
        rows = [batch.add(backend.prompt_ids(user(prompt)), sampling) for prompt in prompts]
        tokens = {row: [] for row in rows}
        for row, token_id in batch.step().items():
            tokens[row].append(token_id)
        width, buffer = batch.width, batch.kv[0][0].data_ptr()
        batch.remove(rows[1])  # a short row: the last one takes its place, in the same buffer
        assert batch.rows == [rows[0], rows[4], rows[2], rows[3]] and batch.kv[0][0].data_ptr() == buffer
        batch.remove(rows[0])  # the long one: the columns only it used go
        assert batch.width < width * 3 // 4
        while batch.rows:
            for row, token_id in batch.step().items():
                tokens[row].append(token_id)
                if token_id in backend.stop_ids or len(tokens[row]) >= sampling.max_new_tokens:
                    batch.remove(row)
    assert [tokens[row] for row in rows[2:]] == solo[2:]


def test_hf_batch_sampling_at_a_tiny_temperature_is_greedy(chat_backend):
    backend = chat_backend
    prompts = PROMPTS[:4]
    with one_torch_thread():
        greedy = [solo_tokens(backend, p, Sampling(temperature=0, max_new_tokens=12)) for p in prompts]
        sampled: list[list[int]] = [[] for _ in prompts]
        decode_together(backend, [backend.prompt_ids(user(p)) for p in prompts],
                               [Sampling(temperature=1e-4, top_p=0.9, max_new_tokens=12)] * len(prompts),
                               [lambda t, row=row: sampled[row].append(t) or True for row in range(len(prompts))])
    assert sampled == greedy


def model_generate_greedy(backend: HFBackend, prompts: list[list[int]], max_new_tokens: int,
                          **options) -> list[list[int]]:
    """transformers' own greedy `generate` on the same left-padded prompts: the reference the loop must match."""
    width, pad_id = max(len(p) for p in prompts), backend.tokenizer.pad_token_id
    input_ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        output = backend.model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                        max_new_tokens=max_new_tokens, eos_token_id=backend.stop_ids,
                                        pad_token_id=pad_id, **options)
    rows = []
    for row in output[:, width:].tolist():  # generate pads a row that ended; cut it after its stop token
        ends = [index for index, token in enumerate(row) if token in backend.stop_ids]
        rows.append(row[: ends[0] + 1] if ends else row)
    return rows


def position_sensitive_gpt2(folder: str) -> HFBackend:
    """The random tiny GPT-2 with its absolute position embeddings scaled up, so that a row whose padding shifted its
    positions would pick other tokens (RoPE models only see relative positions, which padding does not shift)."""
    model, tokenizer = load_model(folder)
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(30)
    return HFBackend(model, tokenizer)


@pytest.mark.parametrize("model", ["trained llama", "random gpt2"])
def test_greedy_batch_equals_model_generate(model, chat_backend, tiny_gpt2):
    backend = chat_backend if model == "trained llama" else position_sensitive_gpt2(tiny_gpt2)
    prompts = [backend.prompt_ids(user(p)) for p in PROMPTS]
    # batching alone: without loop guards, which batched `generate` would apply to its left padding too
    sampling = Sampling(temperature=0, max_new_tokens=20, repetition_penalty=1.0, no_repeat_ngram_size=0)
    with one_torch_thread():
        expected = model_generate_greedy(backend, prompts, sampling.max_new_tokens, repetition_penalty=1.0,
                                         no_repeat_ngram_size=0)
        batched: list[list[int]] = [[] for _ in prompts]
        decode_together(backend, prompts, [sampling] * len(prompts),
                               [lambda t, row=row: batched[row].append(t) or True for row in range(len(prompts))])
        replies = backend.replies([user(p) for p in PROMPTS], sampling)
    assert batched == expected
    assert [r.text for r in replies] == [backend.decode(row).strip() for row in expected]
    assert [r.ended for r in replies] == [row[-1] in backend.stop_ids for row in expected]
    if model == "trained llama":  # both ways of ending occur: the learned replies stop, the others run out
        assert {r.ended for r in replies} == {True, False}


@pytest.mark.parametrize("guards", [{"repetition_penalty": 1.5, "no_repeat_ngram_size": 0},
                                    {"repetition_penalty": 1.0, "no_repeat_ngram_size": 2},
                                    {"repetition_penalty": 1.2, "no_repeat_ngram_size": 3}])
def test_the_loop_guards_are_generates(tiny_gpt2, guards):
    backend = HFBackend(*load_model(tiny_gpt2))  # random weights: flat logits, which the penalty easily reorders
    sampling = Sampling(temperature=0, max_new_tokens=20, **guards)
    changed = []
    with one_torch_thread():
        for prompt in PROMPTS:  # one at a time: generate would also count its own padding ids
            ids = backend.prompt_ids(user(prompt))
            expected = model_generate_greedy(backend, [ids], sampling.max_new_tokens, **guards)
            unpenalized = model_generate_greedy(backend, [ids], sampling.max_new_tokens, repetition_penalty=1.0,
                                                no_repeat_ngram_size=0)
            got: list[int] = []
            backend.generate(ids, sampling, lambda t: got.append(t) or True)
            assert [got] == expected
            changed.append(expected != unpenalized)
    assert any(changed)  # the guards changed some reply, so the equality above says something


def test_a_seeded_reply_leaves_the_global_rng_and_the_tokenizer_alone(chat_backend):
    backend = chat_backend
    conversations = [user(p) for p in PROMPTS]
    seeded = Sampling(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=16, seed=7)
    padding_side = backend.tokenizer.padding_side
    assert padding_side == "right"  # as training pads; the old chat code switched it to "left" for good
    with one_torch_thread(), torch.random.fork_rng():
        before = torch.get_rng_state()
        first = backend.replies(conversations, seeded)
        assert torch.equal(torch.get_rng_state(), before)
        backend.replies(conversations, replace(seeded, seed=None))  # unseeded: a fresh generator, not the global one
        assert torch.equal(torch.get_rng_state(), before)
        torch.manual_seed(123)  # whatever the global RNG holds, a seed replays its reply
        again = backend.replies(conversations, seeded)
        other = backend.replies(conversations, replace(seeded, seed=8))
        streamed = solo_tokens(backend, PROMPTS[3], seeded)
    assert again == first and other != first
    assert backend.tokenizer.padding_side == padding_side
    # streaming (`generate`, a batch of one) draws the same way as a batch of one reply
    assert backend.decode(streamed).strip() == backend.replies(conversations[3:4], seeded)[0].text


def test_rows_with_the_same_prompt_read_it_once_and_sample_as_if_alone(chat_backend):
    """k samples of one context (align's toxic-prone filter and evaluation, OpenAI's n): the prompt's forward pass
    runs once for all of them, and each row still draws exactly the reply it draws alone with its seed."""
    backend = chat_backend
    conversations = [user(PROMPTS[0])] * 3 + [user(PROMPTS[1])] * 2 + [user(PROMPTS[0])]
    seeded = Sampling(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=12, seed=5)
    prompt_reads = []
    hook = backend.model.register_forward_pre_hook(
        lambda module, args, kwargs: prompt_reads.append(kwargs["input_ids"].shape) if kwargs["input_ids"].shape[1]
        > 1 else None, with_kwargs=True)
    try:
        with one_torch_thread():
            together = backend.replies(conversations, seeded)
    finally:
        hook.remove()
    with one_torch_thread():
        alone = [backend.replies([conversation], replace(seeded, seed=seeded.seed + row))[0]
                 for row, conversation in enumerate(conversations)]
    assert len(prompt_reads) == 2  # two distinct prompts among six rows
    assert together == alone
    assert len({reply.text for reply in together[:3]}) > 1  # the shared prompt still gives each row its own draw


def test_top_k_reaches_the_loop(chat_backend):
    backend = chat_backend
    conversations = [user(p) for p in PROMPTS]
    with one_torch_thread():
        greedy = backend.replies(conversations, Sampling(temperature=0, max_new_tokens=12))
        only_the_likeliest = backend.replies(conversations, Sampling(temperature=1.5, top_p=1.0, top_k=1,
                                                                     max_new_tokens=12))
        unfiltered = backend.replies(conversations, Sampling(temperature=1.5, top_p=1.0, top_k=0, max_new_tokens=12,
                                                             seed=0))
    assert only_the_likeliest == greedy  # top_k=1 leaves one token to draw
    assert unfiltered != greedy  # the same temperature without top_k does sample


def test_a_run_loads_with_its_system_prompt(tmp_path_factory, tiny_llama, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(chat_run(tmp_path_factory, tiny_llama), run)
    with (run / "config.yaml").open("a") as config:
        config.write("system_prompt: be brief\n")
    backend = load_hf_backend(str(run))
    prompt = backend.tokenizer.decode(backend.prompt_ids(user("hi")))
    assert prompt.startswith("<|im_start|>system\nbe brief<|im_end|>") and prompt.endswith("<|im_start|>assistant\n")
    given = [{"role": "system", "content": "be long"}, *user("hi")]  # a conversation's own system turn wins
    assert backend.tokenizer.decode(backend.prompt_ids(given)).count("<|im_start|>system") == 1


def test_an_adapter_run_loads_merged_into_its_base(tmp_path_factory, tiny_llama):
    from peft import PeftModel

    run = Run.open(lora_run(tmp_path_factory, tiny_llama))
    assert run.is_adapter
    backend = load_hf_backend(str(run.path))
    assert not isinstance(backend.model, PeftModel)
    assert not any("lora" in name for name, _ in backend.model.named_parameters())  # merged: a plain model
    unmerged = PeftModel.from_pretrained(load_model(tiny_llama)[0], run.weights).eval()
    base = load_model(tiny_llama)[0].eval()
    ids = torch.tensor([backend.prompt_ids(user("hello how are you 3"))])
    with torch.no_grad():
        assert torch.allclose(backend.model(ids).logits, unmerged(ids).logits, atol=1e-4)
        assert not torch.allclose(backend.model(ids).logits, base(ids).logits, atol=1e-2)  # and the adapter counts
