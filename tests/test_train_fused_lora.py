"""Fused LoRA linears compute peft's numbers (outputs and gradients of x, A and B; with dropout, under bf16
autocast), and the int8 base stays close to them while evaluation keeps the plain weights."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from chattune.cli import main
from chattune.train import fused_lora
from chattune.train.fused_lora import Int8Weight, fuse_lora, quantize_rows


def lora_model(folder, dropout=0.0, target_modules="all-linear"):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                             target_modules=target_modules))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would hide any error in the adapter's path
            torch.nn.init.normal_(parameter, std=0.1)
    return model


def step(model, input_ids, autocast=False):
    """Loss, and the gradients of every LoRA weight and of the input embeddings' output."""
    model.zero_grad()
    torch.manual_seed(1)  # the same dropout draws for both paths
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_gives_peft_loss_and_gradients(tiny_llama, dropout):
    model = lora_model(tiny_llama, dropout)
    model.train()
    input_ids = torch.randint(3, 200, (2, 24))
    plain_loss, plain = step(model, input_ids)
    handle = fuse_lora(model)
    assert len(handle.layers) == 2 * 7  # q k v o gate up down in each of the 2 layers
    fused_loss, fused = step(model, input_ids)
    assert fused_loss == pytest.approx(plain_loss.item(), rel=1e-6)
    assert plain.keys() == fused.keys() and len(plain) == 2 * 2 * 7
    for name, grad in plain.items():
        assert torch.allclose(fused[name], grad, rtol=1e-5, atol=1e-7), name
    handle.remove()
    assert step(model, input_ids)[0] == pytest.approx(plain_loss.item(), rel=1e-6)
    assert not any("_chattune_int8" in vars(layer) or "forward" in vars(layer) for layer in model.modules())


def test_fused_lora_under_bf16_autocast_stays_within_bf16_rounding(tiny_llama):
    model = lora_model(tiny_llama)
    input_ids = torch.randint(3, 200, (2, 24))
    reference_loss, reference = step(model, input_ids)  # fp32
    plain_loss, plain = step(model, input_ids, autocast=True)
    fuse_lora(model)
    fused_loss, fused = step(model, input_ids, autocast=True)
    # peft under autocast and the fused path both round to bf16, in different places: both are held to fp32
    assert abs(fused_loss - reference_loss) <= 2 * abs(plain_loss - reference_loss) + 1e-3
    for name, grad in reference.items():
        assert fused[name].dtype == torch.float32
        fused_error = (fused[name] - grad).norm() / grad.norm()
        assert fused_error < max(2 * (plain[name] - grad).norm() / grad.norm(), 0.02), name


def test_int8_rows_round_trip_within_half_a_step():
    x = torch.randn(16, 64) * torch.linspace(0.1, 10, 16)[:, None]
    values, scale = quantize_rows(x)
    assert values.dtype == torch.int8 and values.abs().max() <= 127
    assert ((values.float() * scale - x).abs() <= scale / 2 + 1e-6).all()
    weight = Int8Weight.of(x)
    assert weight.scale.shape == (1, 16) and weight.values.abs().max() == fused_lora.WEIGHT_MAX


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_int8_base_trains_close_to_fp32_and_evaluates_exactly(tiny_llama):
    model = lora_model(tiny_llama)
    input_ids = torch.randint(3, 200, (4, 32))
    model.train()
    plain_loss, plain = step(model, input_ids)
    with torch.no_grad():
        model.eval()
        plain_logits = model(input_ids=input_ids).logits
        model.train()
    handle = fuse_lora(model, int8_base=True)
    int8_loss, int8 = step(model, input_ids)
    assert int8_loss == pytest.approx(plain_loss.item(), rel=0.01)
    for name, grad in plain.items():  # per-token activations and per-row weights in int8: the same direction
        assert cosine(int8[name], grad) > 0.98, name
    with torch.no_grad():
        model.eval()  # evaluation reads the plain fp32 weights, not the int8 copy
        assert torch.equal(model(input_ids=input_ids).logits, plain_logits)
    handle.remove()


def test_the_input_is_quantized_once_for_the_layers_that_share_it(tiny_llama, monkeypatch):
    model = lora_model(tiny_llama)
    fuse_lora(model, int8_base=True)
    calls = []
    real = fused_lora.quantize_rows
    monkeypatch.setattr(fused_lora, "quantize_rows", lambda x: calls.append(x.shape) or real(x))
    model.train()
    model(input_ids=torch.randint(3, 200, (1, 8))).loss  # noqa: B018 - forward only
    # per layer: q/k/v share one input, o its own, gate/up share one, down its own -> 4 of 7
    assert len(calls) == 2 * 4


def test_layers_peft_must_keep_are_left_alone(tiny_llama, tiny_gpt2):
    gpt2 = lora_model(tiny_gpt2, target_modules=["c_attn"])  # Conv1D, fan_in_fan_out
    assert fuse_lora(gpt2).layers == []
    llama = lora_model(tiny_llama)
    llama.merge_adapter()
    assert fuse_lora(llama).layers == []


def test_int8_base_is_refused_for_full_fine_tuning_and_off_the_cpu(tmp_path, chat_jsonl, tiny_llama, capsys,
                                                                   monkeypatch):
    run = tmp_path / "run"
    args = ["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), "--set", "int8_base=true"]
    assert main([*args, "--set", "method=full"]) == 2
    assert "int8_base=True is not allowed" in capsys.readouterr().err
    assert main([*args[:-1], "int8_base=maybe"]) == 2
    assert "true, false or auto" in capsys.readouterr().err
    monkeypatch.setattr("chattune.train.sft.int8_base_supported", lambda device: False)
    assert main([*args, "--set", "max_steps=2"]) == 2
    assert "CPUs only" in capsys.readouterr().err


def test_int8_base_probe_needs_an_exact_int8_matmul(monkeypatch):
    fused_lora._int_mm_exact.cache_clear()
    assert fused_lora.int8_base_supported("cpu")
    assert not fused_lora.int8_base_supported("meta")
    saturating = torch._int_mm  # an AVX2 kernel fed full-range weights: int16 pair sums saturate

    monkeypatch.setattr(torch, "_int_mm", lambda a, b: saturating(a, b).clamp(-2**15, 2**15 - 1))
    fused_lora._int_mm_exact.cache_clear()
    assert not fused_lora.int8_base_supported("cpu")
    fused_lora._int_mm_exact.cache_clear()


def train_run(tmp_path, chat_jsonl, model, *extra):
    import json

    run = tmp_path / "run"
    assert main(["train", "--data", chat_jsonl, "--model", model, "--output", str(run), "--set", "batch_size=4",
                 "--set", "learning_rate=0.01", "--set", "precision=fp32", "--set", "eval_replies=0", *extra]) == 0
    return json.loads((run / "metrics.json").read_text())


def test_a_lora_run_with_int8_base_learns(tmp_path, chat_jsonl, tiny_llama, capsys):
    metrics = train_run(tmp_path, chat_jsonl, tiny_llama, "--set", "max_steps=30", "--set", "lora.dropout=0.0")
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"] - 0.5
    probe = metrics["int8_base"]  # auto, the default: on, after a training batch's loss stayed within 1%
    assert probe["used"] and probe["probe_loss_int8"] == pytest.approx(probe["probe_loss_plain"], rel=0.01)
    assert "int8 base: on" in capsys.readouterr().err


def test_auto_drops_int8_when_the_loss_moves_too_much(tmp_path, chat_jsonl, tiny_llama, capsys, monkeypatch):
    monkeypatch.setattr("chattune.train.sft.INT8_LOSS_TOLERANCE", 0.0)  # any rounding is then too much
    metrics = train_run(tmp_path, chat_jsonl, tiny_llama, "--set", "max_steps=2")
    assert metrics["int8_base"]["used"] is False
    assert "int8 base: off" in capsys.readouterr().err
    metrics = train_run(tmp_path, chat_jsonl, tiny_llama, "--set", "max_steps=2", "--set", "int8_base=false",
                        "--overwrite")
    assert metrics["int8_base"] is None
