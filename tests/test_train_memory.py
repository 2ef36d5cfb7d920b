"""`memory: low|balanced|fast`: checkpointing changes what is kept, never the loss or the gradients; `low` really
holds less (measured in a subprocess); the allocator setting and the peak-memory warning."""

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from chattune.config import load_config
from chattune.data.chat import tokenize_conversations
from chattune.models import load_tokenizer
from chattune.train.common import add_lora
from chattune.train.fast import PackedCollator, pack_examples, target_only_loss
from chattune.train.memory import (MIN_MICRO_BATCH_TOKENS, apply_memory_plan, plan_memory, release_freed_memory,
                                   saved_bytes_per_token)
from test_train_fast import CONVERSATIONS, grads_and_loss


def lora_model(folder):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.config.use_cache = False
    return add_lora(model, load_config(overrides=["lora.dropout=0.0"]))


def eight_layer_lora_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=256))
    model.config.use_cache = False
    return add_lora(model, load_config(overrides=["lora.dropout=0.0"]))


@pytest.mark.parametrize("fused", [False, True])
def test_measuring_the_activations_leaves_nothing_alive(tiny_llama, fused):
    """The measurement's forward never runs backward: its graph (and every weight it saved) must go with it. A
    pack hook that kept saved outputs as themselves made a cycle gc cannot see, and `make demo` evaluated beside
    ~0.6 GB of a dead graph."""
    import gc
    import weakref

    from chattune.train.fused_lora import fuse_lora

    model = lora_model(tiny_llama)
    fuse_lora(model, int8_base=fused)
    saved_bytes_per_token(model)
    weight = weakref.ref(model.base_model.model.model.layers[0].mlp.down_proj.base_layer.weight)
    del model
    gc.collect()
    assert weight() is None


def test_plans_checkpoint_none_all_or_just_enough_layers():
    model = eight_layer_lora_model()
    per_layer, layer_input = saved_bytes_per_token(model)
    assert layer_input == 64 * 4  # hidden_size fp32 floats: all a checkpointed layer keeps
    assert per_layer > 5 * layer_input  # a kept layer holds its norms, projections, attention and MLP too
    assert plan_memory(model, "fast", rows=8, row_tokens=256).checkpointed == ()
    assert plan_memory(model, "low", rows=8, row_tokens=256).checkpointed == tuple(range(8))
    assert plan_memory(model, "balanced", rows=8, row_tokens=128, budget=10**12).checkpointed == ()
    # room for about half of the layers' activations (a micro-batch of MIN_MICRO_BATCH_TOKENS is not split
    # further): about half of the layers are checkpointed, spread over the stack
    row_tokens = MIN_MICRO_BATCH_TOKENS // 8
    budget = int(4.5 * per_layer * 8 * row_tokens)
    half = plan_memory(model, "balanced", rows=8, row_tokens=row_tokens, budget=budget)
    assert half.accumulation == 1 and 4 <= len(half.checkpointed) <= 5 and half.activation_bytes <= budget
    assert half.checkpointed[0] == 0 and half.checkpointed[-1] >= 6
    assert plan_memory(model, "balanced", rows=8, row_tokens=row_tokens, budget=1).checkpointed == tuple(range(8))


def test_balanced_splits_the_batch_before_it_checkpoints():
    model = eight_layer_lora_model()
    per_layer, _ = saved_bytes_per_token(model)
    # 8 rows of 512 tokens need twice the budget: two micro-batches of 4 rows (2,048 tokens each) fit it
    plan = plan_memory(model, "balanced", rows=8, row_tokens=512, budget=int(8 * per_layer * 2048 * 1.01))
    assert (plan.rows, plan.accumulation, plan.checkpointed) == (4, 2, ())
    # never below MIN_MICRO_BATCH_TOKENS per micro-batch: then layers are checkpointed instead
    plan = plan_memory(model, "balanced", rows=8, row_tokens=256, budget=int(per_layer * 2048))
    assert plan.rows * 256 == MIN_MICRO_BATCH_TOKENS and plan.checkpointed
    assert plan_memory(model, "fast", rows=8, row_tokens=512, budget=1).accumulation == 1


@pytest.mark.parametrize("mode", ["low", "balanced"])
def test_checkpointed_layers_compute_the_same_loss_and_gradients(tiny_llama, mode):
    tokenizer = load_tokenizer(tiny_llama)
    examples, _ = tokenize_conversations(tokenizer, CONVERSATIONS, max_length=128)
    batch = PackedCollator(tokenizer.pad_token_id)(pack_examples(examples, max_length=64))
    plain = lora_model(tiny_llama)
    plain.train()
    plain_loss, plain_grads = grads_and_loss(plain, lambda: target_only_loss(plain, batch))
    checkpointed = lora_model(tiny_llama)
    checkpointed.train()
    plan = plan_memory(checkpointed, mode, rows=4, row_tokens=64, budget=1)
    assert plan.checkpointed
    apply_memory_plan(checkpointed, plan)
    loss, grads = grads_and_loss(checkpointed, lambda: target_only_loss(checkpointed, batch))
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert grads.keys() == plain_grads.keys() and grads  # the LoRA weights get gradients through recomputation
    for name, grad in plain_grads.items():
        assert torch.allclose(grads[name], grad, atol=1e-6), name


PEAK_SCRIPT = """
import json, sys, torch
from pathlib import Path
from transformers import LlamaConfig, LlamaForCausalLM
from chattune.config import load_config
from chattune.train.common import add_lora
from chattune.train.fast import target_only_loss
from chattune.train.memory import apply_memory_plan, plan_memory, release_freed_memory
release_freed_memory()
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=8,
                                     num_attention_heads=4, num_key_value_heads=2, vocab_size=512))
model.config.use_cache = False
model = add_lora(model, load_config(overrides=["lora.dropout=0.0"]))
apply_memory_plan(model, plan_memory(model, sys.argv[1], rows=8, row_tokens=512))
ids = torch.randint(0, 512, (8, 512))
def status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
    return int(line.split()[1]) / 1024
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS: imports peak higher
before = status("VmRSS:")
target_only_loss(model, {"input_ids": ids, "labels": ids}).backward()
print(json.dumps({"growth_mb": status("VmHWM:") - before}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the peak from /proc/self/status")
def test_memory_low_lowers_the_peak_of_a_training_step():
    def growth(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, mode], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["growth_mb"]

    fast, low = growth("fast"), growth("low")
    # fast keeps ~8 layers x 4096 tokens of activations (hundreds of MB); low keeps each layer's input only
    assert fast > 150, fast
    assert low < fast / 3, (low, fast)


def test_release_freed_memory_sets_the_glibc_threshold():
    assert release_freed_memory() is sys.platform.startswith("linux")


@pytest.mark.parametrize("mode, fixed", [("low", True), ("balanced", False), ("fast", False)])
def test_only_memory_low_fixes_the_glibc_threshold(tiny_llama, monkeypatch, mode, fixed):
    # a fixed threshold costs a page fault per 4 KiB of every large tensor (measured: 4.4 million faults and 1.8x
    # slower steps in the training benchmark); balanced lowers its peak with smaller micro-batches instead
    from rich.console import Console

    from chattune.train import sft

    calls = []
    monkeypatch.setattr(sft, "release_freed_memory", lambda: calls.append(mode) or True)
    sft.fit_memory(load_config(overrides=[f"memory={mode}"]), lora_model(tiny_llama), Console(quiet=True))
    assert calls == ([mode] if fixed else [])


def test_training_warns_when_the_estimated_peak_exceeds_free_memory(tiny_llama, monkeypatch):
    from rich.console import Console

    from chattune.train import sft

    monkeypatch.setattr(sft, "available_bytes", lambda: 1024)
    console = Console(record=True, width=200)
    model = lora_model(tiny_llama)
    sft.fit_memory(load_config(overrides=["memory=fast"]), model, console)
    text = console.export_text()
    assert "memory=fast: 0/2 layers checkpointed" in text
    assert "warning: training needs ~" in text and "set memory=low" in text


def test_balanced_budget_is_fixed_on_cpu_and_half_the_free_memory_on_a_gpu(monkeypatch):
    import torch

    from chattune.train.memory import BALANCED_ACTIVATION_BYTES, activation_budget

    assert activation_budget(torch.device("cpu")) == BALANCED_ACTIVATION_BYTES
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    assert activation_budget(torch.device("cuda", 0)) == 20 * 2**30


@pytest.mark.parametrize("mode, trims", [("low", True), ("balanced", True), ("fast", False)])
def test_balanced_and_low_return_freed_heap_pages_after_every_step(tmp_path, monkeypatch, mode, trims):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from chattune.train import callbacks
    from chattune.train.common import shared_callbacks

    calls = []
    monkeypatch.setattr(callbacks, "trim_heap", lambda: calls.append(1))
    trimming = [c for c in shared_callbacks(load_config(overrides=[f"memory={mode}", "report_to=none"]), tmp_path,
                                            progress=None) if isinstance(c, callbacks.TrimHeap)]
    assert bool(trimming) is trims
    for callback in trimming:
        callback.on_step_end(TrainingArguments(str(tmp_path)), TrainerState(), TrainerControl())
    assert calls == ([1] if trims else [])


TRIM = """
import ctypes, torch
from chattune.train.memory import trim_heap
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
block = torch.ones(8 * 2**20 // 4)
del block  # freeing an mmapped 8 MB block raises glibc's mmap threshold: what follows comes from the heap
kept, freed = [], []
for i in range(240):  # tensors of varying sizes, as micro-batches of packed rows leave; every other one is freed
    (kept if i % 2 else freed).append(torch.ones((1 + i % 3) * 2**20 // 4))
del freed
before = rss()
trim_heap()
print(before - rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_trimming_the_heap_gives_freed_pages_back_to_the_os():
    # 120 freed tensors of 1-3 MB (~240 MB) between live ones: freed, they stay in RSS until trimmed
    returned = int(subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, check=True).stdout)
    assert returned > 100 * 2**20
