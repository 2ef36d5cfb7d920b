"""Linear weights packed for oneDNN (generate/packed.py): the same outputs as F.linear, one row's result independent
of the rows beside it, the same greedy replies as the unpacked model, no silent backward, and only the decode-only
loaders pack. Prompts read in bf16 (`--prompt-precision`): fp32 KV and logits close to an fp32 read, and a seeded
request still gives the same tokens alone and in a crowd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from serve_helpers import PROMPTS, chat_run, one_torch_thread

from chattune.generate.backend import load_backend
from chattune.errors import InputError
from chattune.generate.hf import HFBackend, load_hf_backend
from chattune.generate.packed import PackedLinear, pack_linears, packing_works
from chattune.generate.sampling import Sampling
from chattune.generate.together import tokens_together

needs_onednn = pytest.mark.skipif(not packing_works(), reason="this torch build has no usable oneDNN linear")


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, tiny_llama) -> str:
    return str(chat_run(tmp_path_factory, tiny_llama))


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_a_packed_linear_gives_what_f_linear_gives_for_2d_3d_and_strided_inputs(bias):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200, bias=bias)
    packed = PackedLinear(linear)
    with torch.no_grad():
        for x in (torch.randn(5, 96), torch.randn(2, 7, 96), torch.randn(96, 4).t()):
            # tolerance: float32 sums of 96 products in another order
            torch.testing.assert_close(packed(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_one_rows_result_does_not_depend_on_the_rows_decoded_beside_it():
    """What lets a seeded request give the same tokens alone and in a crowd: bit-equal, not merely close."""
    torch.manual_seed(0)
    packed = PackedLinear(torch.nn.Linear(576, 1536, bias=False))
    rows = torch.randn(200, 576)
    with torch.no_grad():
        together = packed(rows)
        for count in (1, 3, 8, 64):
            assert torch.equal(packed(rows[:count]), together[:count])


@needs_onednn
def test_a_packed_linear_refuses_an_input_that_needs_a_gradient():
    packed = PackedLinear(torch.nn.Linear(8, 4))
    with pytest.raises(RuntimeError, match="no backward"):
        packed(torch.randn(2, 8, requires_grad=True))
    with torch.no_grad():
        assert packed(torch.randn(2, 8, requires_grad=True)).shape == (2, 4)


@needs_onednn
def test_a_packed_model_gives_the_same_logits_and_greedy_replies(run_folder):
    plain, packed = load_hf_backend(run_folder), load_hf_backend(run_folder, packed=True)
    assert not any(isinstance(m, PackedLinear) for m in plain.model.modules())
    linears = [m for m in packed.model.modules() if isinstance(m, PackedLinear)]
    assert len(linears) == 2 * 7 + 1  # 2 layers x (q, k, v, o, gate, up, down) + the LM head
    ids = torch.tensor([plain.prompt_ids(user(PROMPTS[0]))])
    with torch.no_grad():
        torch.testing.assert_close(packed.model(ids).logits, plain.model(ids).logits, rtol=1e-4, atol=1e-4)
    sampling = Sampling(temperature=0, max_new_tokens=16)
    conversations = [user(prompt) for prompt in PROMPTS]
    with one_torch_thread():
        assert [r.text for r in packed.replies(conversations, sampling)] == \
            [r.text for r in plain.replies(conversations, sampling)]


@needs_onednn
def test_serving_packs_and_exporting_does_not(run_folder):
    """`load_backend` (chat, serve) packs; `load_hf_backend`'s default, which the exporters use, keeps the weights
    readable."""
    served = load_backend(run_folder, "hf")
    assert isinstance(served.model.lm_head, PackedLinear)
    exported = load_hf_backend(run_folder)
    assert exported.model.lm_head.weight.shape[0] == len(exported.tokenizer)


def test_nothing_is_packed_where_onednn_is_unusable(monkeypatch, tiny_llama):
    from chattune.generate import packed as module
    from chattune.models import load_model

    monkeypatch.setattr(module, "packing_works", lambda: False)
    model, _ = load_model(tiny_llama)
    assert pack_linears(model) is model
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_the_probe_leaves_the_global_rng_where_it_was():
    packing_works.cache_clear()
    before = torch.random.get_rng_state()
    packing_works()
    assert torch.equal(torch.random.get_rng_state(), before)


@needs_onednn
def test_a_model_with_nothing_to_pack_is_left_as_it_was(tiny_llama):
    """No fp32 linear (here a bf16 model): nothing is packed, and the weights are not copied either."""
    from chattune.models import load_model

    model, _ = load_model(tiny_llama)
    model.to(torch.bfloat16)
    pointers = [p.data_ptr() for p in model.parameters()]
    assert pack_linears(model) is model
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert [p.data_ptr() for p in model.parameters()] == pointers


@needs_onednn
def test_under_bf16_autocast_a_packed_linear_uses_its_bf16_copy_and_outside_it_fp32():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 200)
    packed, x = PackedLinear(linear, bf16=True), torch.randn(7, 96)
    with torch.no_grad():
        assert torch.equal(packed(x), PackedLinear(linear)(x))
        with torch.autocast("cpu", torch.bfloat16):
            read = packed(x)
            expected = F.linear(x, linear.weight, linear.bias)  # what autocast runs for a plain Linear
    assert read.dtype == expected.dtype == torch.bfloat16
    # tolerance: bf16 keeps 8 bits of mantissa; the two sum the products in another order
    torch.testing.assert_close(read.float(), expected.float(), rtol=2e-2, atol=2e-2)


@pytest.fixture(scope="module")
def bf16_prompts(run_folder) -> tuple[HFBackend, HFBackend]:
    """The same run packed, reading prompts in fp32 and in bf16 (built directly: emulated bf16 is slow, not wrong,
    so this runs on any CPU)."""
    fp32 = load_hf_backend(run_folder, packed=True)
    model = pack_linears(load_hf_backend(run_folder).model, bf16=True)
    return fp32, HFBackend(model, fp32.tokenizer, fp32.prompt.system_prompt, prompt_bf16=True)


@needs_onednn
def test_a_prompt_read_in_bf16_leaves_fp32_kv_and_logits_close_to_an_fp32_read(bf16_prompts):
    fp32, bf16 = bf16_prompts
    ids = fp32.prompt_ids(user(PROMPTS[1]))
    with torch.no_grad():
        (kv32, logits32), (kv16, logits16) = fp32.new_batch()._read(ids), bf16.new_batch()._read(ids)
    assert {t.dtype for layer in kv16 for t in layer} == {logits16.dtype} == {torch.float32}
    for (k32, v32), (k16, v16) in zip(kv32, kv16):
        torch.testing.assert_close(k16, k32, rtol=0.05, atol=0.05)
        torch.testing.assert_close(v16, v32, rtol=0.05, atol=0.05)
    torch.testing.assert_close(logits16, logits32, rtol=0.05, atol=0.1)
    assert int(logits16.argmax()) == int(logits32.argmax())


@needs_onednn
def test_with_prompts_read_in_bf16_a_seeded_request_gives_the_same_tokens_alone_and_in_a_crowd(bf16_prompts):
    """Each prompt is read alone, so reading it in bf16 keeps the crowd out of a request's tokens."""
    _, backend = bf16_prompts
    sampling = Sampling(temperature=1.0, top_p=0.95, seed=7, max_new_tokens=12)
    prompts = [backend.prompt_ids(user(prompt)) for prompt in PROMPTS]
    with one_torch_thread():
        alone = [tokens_together(backend, [prompt], sampling)[0] for prompt in prompts[:3]]
        crowd = [tokens_together(backend, [prompt, *prompts[3:]], sampling)[0] for prompt in prompts[:3]]
    assert alone == crowd


def test_bf16_prompts_asked_for_where_bf16_is_emulated_are_one_clear_error(monkeypatch, run_folder):
    from chattune import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    with pytest.raises(InputError, match="--prompt-precision bf16: this cpu has no native bf16"):
        load_backend(run_folder, "hf", prompt_precision="bf16")
    assert not load_backend(run_folder, "hf").prompt_bf16  # auto: fp32 there
    with pytest.raises(InputError, match="--prompt-precision: .* for --backend hf"):
        load_backend(run_folder, "llamacpp", prompt_precision="fp32")
