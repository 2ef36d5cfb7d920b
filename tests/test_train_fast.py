"""The speed tricks compute the same thing as the plain path: packing (with position ids and no cross-conversation
attention) and the target-only LM head give the model's own loss and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from chattune.data.chat import IGNORE_INDEX, tokenize_conversations
from chattune.data.collate import PadCollator
from chattune.models import load_tokenizer
from chattune.train.fast import PackedCollator, pack_examples, target_only_loss

CONVERSATIONS = [
    [{"role": "user", "content": "hello how are you"}, {"role": "assistant", "content": "i am fine thanks"}],
    [{"role": "user", "content": "what is your favourite food"}, {"role": "assistant", "content": "pizza"},
     {"role": "user", "content": "do you have any pets"}, {"role": "assistant", "content": "a dog called max"}],
    [{"role": "user", "content": "the weather is nice"}, {"role": "assistant", "content": "yes it is today"}],
    [{"role": "user", "content": "good night"}, {"role": "assistant", "content": "good night"}],
]


def test_pack_keeps_every_token_and_respects_max_length():
    examples = [{"input_ids": list(range(n)), "labels": list(range(n))} for n in (5, 3, 7, 2, 4)]
    rows = pack_examples(examples, max_length=8)
    assert all(len(row["input_ids"]) <= 8 for row in rows)
    assert sorted(sum(len(r["input_ids"]) for r in rows) for _ in [0]) == [21]
    assert len(rows) == 3  # 7 | 5+3 | 4+2: first-fit decreasing
    for row in rows:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert all(row["labels"][i] == IGNORE_INDEX for i in starts)


def grads_and_loss(model, compute):
    model.zero_grad()
    loss = compute()
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_packed_target_only_loss_equals_plain_padded_loss(request, fixture):
    folder = request.getfixturevalue(fixture)
    tokenizer = load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS, max_length=128)
    padded = PadCollator(tokenizer.pad_token_id)(examples)
    packed_rows = pack_examples(examples, max_length=64)
    assert len(packed_rows) < len(examples)  # several conversations share a row
    packed = PackedCollator(tokenizer.pad_token_id)(packed_rows)

    plain_loss, plain_grads = grads_and_loss(model, lambda: model(**padded).loss)
    head_loss, head_grads = grads_and_loss(model, lambda: target_only_loss(model, padded))
    packed_loss, packed_grads = grads_and_loss(model, lambda: target_only_loss(model, packed))

    assert head_loss == pytest.approx(plain_loss.item(), rel=1e-5)
    assert packed_loss == pytest.approx(plain_loss.item(), rel=1e-5)
    for name, grad in plain_grads.items():
        assert torch.allclose(head_grads[name], grad, atol=1e-6), name
        assert torch.allclose(packed_grads[name], grad, atol=1e-5), name


def test_packing_blocks_attention_across_conversations(tiny_llama):
    """A conversation's logits do not change when another conversation is packed before it."""
    tokenizer = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS[:2], max_length=128)
    first, second = examples
    alone = model(input_ids=torch.tensor([second["input_ids"]])).logits
    ids = first["input_ids"] + second["input_ids"]
    positions = list(range(len(first["input_ids"]))) + list(range(len(second["input_ids"])))
    # use_cache=False as in training: with a KV cache, transformers does not derive the packed mask
    packed = model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions]), use_cache=False).logits
    assert torch.allclose(packed[0, len(first["input_ids"]):], alone[0], atol=1e-5)


def test_gradient_accumulation_normalises_once(tiny_llama):
    tokenizer = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS, max_length=128)
    collate = PadCollator(tokenizer.pad_token_id)
    whole = target_only_loss(model, collate(examples))
    halves = [collate(examples[:2]), collate(examples[2:])]
    count = sum(int((half["labels"][:, 1:] != IGNORE_INDEX).sum()) for half in halves)
    accumulated = sum(target_only_loss(model, half, count) for half in halves)
    assert accumulated.item() == pytest.approx(whole.item(), rel=1e-5)


def test_plain_trainer_path_trains_without_kv_cache(tiny_llama, monkeypatch, tmp_path, chat_jsonl):
    """Architectures without the target-only head train through the model's own forward: packed rows get their
    block-causal mask only without a KV cache, so training runs with use_cache off and the saved model has it on."""
    import json

    from transformers import TrainerCallback

    from chattune.cli import main
    from chattune.train import sft

    monkeypatch.setattr(sft, "supports_target_only_loss", lambda model: False)
    use_cache_in_steps, trainer_classes = [], []

    class Record(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            use_cache_in_steps.append(model.config.use_cache)

    original = sft.make_trainer

    def recording_make_trainer(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(Record())
        trainer_classes.append(type(trainer).__name__)
        return trainer

    monkeypatch.setattr(sft, "make_trainer", recording_make_trainer)
    run = tmp_path / "run"
    assert main(["train", "--data", chat_jsonl, "--model", tiny_llama, "--output", str(run), "--set", "max_steps=2",
                 "--set", "method=full", "--set", "precision=fp32", "--set", "eval_replies=0"]) == 0
    assert trainer_classes == ["Trainer"] and use_cache_in_steps == [False, False]
    assert json.loads((run / "model" / "config.json").read_text())["use_cache"] is True


def test_compiled_decoder_layers_compute_the_same_loss(tiny_llama):
    from chattune.train.fast import compile_decoder_layers

    tokenizer = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS, max_length=128)
    batch = PackedCollator(tokenizer.pad_token_id, width=64)(pack_examples(examples, max_length=64))
    assert batch["input_ids"].shape[1] == 64  # fixed width for compiled code
    eager_loss, eager_grads = grads_and_loss(model, lambda: target_only_loss(model, batch))
    compile_decoder_layers(model)
    compiled_loss, compiled_grads = grads_and_loss(model, lambda: target_only_loss(model, batch))
    assert compiled_loss == pytest.approx(eager_loss.item(), rel=1e-4)
    for name, grad in eager_grads.items():
        assert torch.allclose(compiled_grads[name], grad, atol=1e-4), name


def test_fast_trainer_runs_the_decoder_under_bf16_autocast(tiny_llama, tmp_path):
    """The target-only loss calls the decoder directly, past accelerate's autocast wrapper of model.forward: the
    trainer must enter autocast itself, or bf16 training silently runs in fp32."""
    from rich.console import Console

    from chattune.config import load_config
    from chattune.train import sft
    from chattune.precision import bf16_supported
    from chattune.train.fast import FastTrainer

    if not bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16")
    cfg = load_config(overrides=[f"model={tiny_llama}", "precision=bf16", "max_steps=1"])
    tokenizer = load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS, max_length=128)
    trainer = sft.make_trainer(cfg, tmp_path, model, tokenizer, examples, examples, True, Console(quiet=True))
    assert isinstance(trainer, FastTrainer)
    dtypes = []
    model.model.layers[0].mlp.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model, batch)
    assert dtypes == [torch.bfloat16]


@pytest.mark.parametrize("onednn, aten, capped", [
    ("ALL", "AVX512", False), ("avx512_core_bf16", "AVX512", False), ("AVX2", "AVX512", True),
    ("AVX512_CORE_VNNI", "AVX512", True), ("ALL", "AVX2", True),
])
def test_precision_auto_takes_fp32_where_the_process_is_capped_below_bf16(monkeypatch, onednn, aten, capped):
    """ONEDNN_MAX_CPU_ISA=AVX2 or ATEN_CPU_CAPABILITY=avx2 on a CPU with AVX512-BF16 make bf16 emulated: `auto` must
    not pick it, and asking for bf16 is the usual one-line error."""
    from chattune import precision
    from chattune.errors import InputError

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: aten)
    assert precision.cpu_isa_capped() is capped
    if capped:
        assert precision.bf16_supported(torch.device("cpu")) is False
        assert precision.use_bf16("auto", torch.device("cpu")) is False
        with pytest.raises(InputError, match="no native bf16"):
            precision.use_bf16("bf16", torch.device("cpu"))
