"""Training memory: give freed tensors back to the OS, keep the activations of a step within a budget
(`memory: low|balanced|fast`), warn before a run that will not fit, and report the peak.

    plan = plan_memory(model, cfg.memory, rows=8, row_tokens=256)
    apply_memory_plan(model, plan)                          # activation checkpointing on plan.checkpointed layers
    TrainingArguments(per_device_train_batch_size=plan.rows, gradient_accumulation_steps=plan.accumulation * ...)

What a step keeps alive is mostly activations: for SmolLM2-135M with LoRA on all linear layers, ~60 KB per token
per decoder layer in fp32, so 8 packed rows of 256 tokens hold ~3.6 GB across its 30 layers. A checkpointed layer
keeps only its input (hidden_size floats per token) and runs its forward again during the backward pass.
"""

from __future__ import annotations

import ctypes
import math
import resource
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from chattune.models import unwrap_peft

MODES = ("low", "balanced", "fast")
# balanced: activations of one micro-batch are kept under this. The demo's batch (8 x 256 tokens, 1.2 GB of
# activations per 1,024) is split into 4 micro-batches of 512 tokens: 2,761 MB peak RSS with glibc left alone
BALANCED_ACTIVATION_BYTES = 768 * 2**20
# balanced first splits a batch into micro-batches (same optimizer step, fewer activations alive) down to this many
# tokens each, then checkpoints layers. Measured in the training benchmark (LoRA, 8 x 256 tokens, fp32, AMD EPYC
# Zen 3, 2 cores): 1 x 2,048 151 real tok/s at 6,421 MB; 2 x 1,024 159 at 4,305 MB; 4 x 512 129 at 2,761 MB
MIN_MICRO_BATCH_TOKENS = 512
# glibc: requests of at least this size are served by mmap and unmapped on free (memory=low only)
MMAP_THRESHOLD_BYTES = 128 * 2**10
_M_MMAP_THRESHOLD = -3  # mallopt parameter number, from glibc's malloc.h


def release_freed_memory() -> bool:
    """Fix glibc's mmap threshold, so every tensor of 128 KiB or more is returned to the OS when freed (memory=low
    does this before training; balanced and fast leave the threshold alone).

    By default glibc raises the threshold each time a large block is freed (up to 32 MiB), after which activations
    come from the heap, where the interleaving of freed and live tensors keeps the freed ones resident. The price of
    the fixed threshold is that every large tensor is fresh memory the kernel must map and zero, 4 KiB at a time: a
    LoRA step of SmolLM2-135M on 2 x 1,024 tokens took 4.4 million minor page faults instead of 0.07 million and ran
    at 87 instead of 159 real tok/s (2,787 vs 4,305 MB peak RSS; AMD EPYC Zen 3, 2 cores, fp32). Smaller
    micro-batches lower the peak as far for less (4 x 512 tokens: 2,761 MB at 129 tok/s), so balanced uses those.
    A no-op (False) off glibc (macOS, musl)."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def collect_and_trim() -> None:
    """After training, before the evaluation loads its models: free what only reference cycles still hold (a
    Trainer and its callbacks point at each other, so the trained model, optimizer and data stay alive until the
    cyclic collector happens to run) and give glibc's free heap pages back to the OS (malloc_trim), so the
    evaluation's allocations reuse memory instead of growing the peak."""
    import gc

    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Give glibc's free heap pages back to the OS (malloc_trim: whole free pages anywhere in the heap, not only at
    its top). A no-op off glibc.

    Also run after every optimizer step under memory=balanced and low (`callbacks.TrimHeap`): packed rows of
    varying lengths give every micro-batch tensors of new sizes, and the heap they leave behind fragments, so RSS
    crept up ~12 MB a step: the demo's training (memory=balanced, bf16, AMD EPYC Zen 4, 2 cores) grew from 2.4 GB
    at its first step to 2.97 GB at step 24 and 3.27-3.47 GB at step 45, against an estimated 2.2 GB. Trimmed after
    each step, 24 steps peaked at 2.67 GB in 232 s (218 s untrimmed; the freed pages are faulted in again)."""
    libc = _glibc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _glibc():
    """The C library when it is glibc's (the allocator knobs above are glibc's), else None (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@dataclass(frozen=True)
class MemoryPlan:
    mode: str
    rows: int  # rows per micro-batch
    accumulation: int  # micro-batches per configured batch (the optimizer step sees the same rows either way)
    layers: int  # decoder layers of the model
    checkpointed: tuple[int, ...]  # indices of the layers whose activations are recomputed in backward
    activation_bytes: int  # estimated activations held by one micro-batch under this plan

    def describe(self) -> str:
        share = f"{len(self.checkpointed)}/{self.layers} layers checkpointed"
        if self.accumulation > 1:
            share = f"batches split in {self.accumulation} micro-batches of {self.rows} rows, {share}"
        return f"memory={self.mode}: {share}, ~{self.activation_bytes / 2**30:.1f} GB of activations per micro-batch"


def decoder_layers(model) -> list:
    """The repeated blocks of a causal LM (through a PEFT wrapper): what checkpointing works on."""
    inner = unwrap_peft(model)
    decoder = inner.get_decoder()
    return list(decoder.h if hasattr(decoder, "h") else decoder.layers)


def saved_bytes_per_token(model, tokens: int = 64) -> tuple[float, float]:
    """(bytes kept for backward per token per decoder layer, bytes of one layer's input per token), measured by
    counting what autograd saves in a forward of `tokens` tokens: exact for this architecture, adapter and dropout,
    where a formula would have to know each of them."""
    import torch
    from torch.autograd.graph import saved_tensors_hooks

    inner = unwrap_peft(model)
    parameters = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        # Kept until the graph goes, so no storage is freed and reused under a new tensor during the forward (the
        # count above is by address), but detached: a saved output returned as itself would hold its own grad_fn,
        # a cycle through C++ that gc cannot see, and the graph, with every weight it saved, stayed alive for the
        # rest of the process (`make demo` evaluated beside ~0.6 GB of it).
        return tensor.detach()

    was_training = model.training
    model.train()
    ids = torch.zeros((1, tokens), dtype=torch.long, device=model.device)
    with torch.enable_grad(), saved_tensors_hooks(pack, lambda tensor: tensor):
        hidden = inner.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    model.train(was_training)
    layers = len(decoder_layers(model))
    return sum(storages.values()) / tokens / layers, hidden.element_size() * hidden.shape[-1]


def activation_budget(device) -> int:
    """What `balanced` lets a step's activations take: BALANCED_ACTIVATION_BYTES of a machine's RAM, or on a GPU
    half of its free memory (a GPU's whole point is large batches; splitting them there only loses speed)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    return BALANCED_ACTIVATION_BYTES


def plan_memory(model, mode: str, *, rows: int, row_tokens: int, budget: int = BALANCED_ACTIVATION_BYTES) -> MemoryPlan:
    """How to hold the activations of a batch of `rows` x `row_tokens` tokens: everything (fast); every layer
    checkpointed (low); or, for balanced, the batch split into micro-batches (down to MIN_MICRO_BATCH_TOKENS) and
    then just enough layers checkpointed, spread evenly, for the activations to fit `budget`."""
    layers = len(decoder_layers(model))
    per_layer, layer_input = saved_bytes_per_token(model)
    accumulation = 1
    if mode == "balanced":
        while (layers * per_layer * rows * row_tokens > budget and rows % 2 == 0
               and rows // 2 * row_tokens >= MIN_MICRO_BATCH_TOKENS):
            rows, accumulation = rows // 2, accumulation * 2
    tokens = rows * row_tokens
    kept, recomputed = per_layer * tokens, layer_input * tokens  # per layer, without and with checkpointing
    if mode == "fast" or (mode == "balanced" and layers * kept <= budget):
        count = 0
    elif mode == "low":
        count = layers
    else:  # live: (layers - count) kept + count inputs + the one layer being recomputed <= budget
        count = min(layers, math.ceil((layers * kept + kept - budget) / max(kept - recomputed, 1.0)))
    chosen = tuple(round(index * layers / count) for index in range(count)) if count else ()
    activations = (layers - count) * kept + count * recomputed + (kept if count else 0)
    return MemoryPlan(mode, rows, accumulation, layers, chosen, int(activations))


def apply_memory_plan(model, plan: MemoryPlan) -> None:
    """Turn on transformers' activation checkpointing for the planned layers only (non-reentrant: it needs no
    inputs that require grad, so frozen embeddings under LoRA work)."""
    if not plan.checkpointed:
        return
    inner = unwrap_peft(model)
    inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    chosen = set(plan.checkpointed)
    for index, layer in enumerate(decoder_layers(model)):
        layer.gradient_checkpointing = index in chosen


@contextmanager
def kept_checkpointing(model):
    """Put back each module's checkpointing choice after code that turns checkpointing off and on again for every
    layer (TRL does, around its rollouts and reference log-probabilities), so a plan's selection survives it."""
    chosen = {module: (module.gradient_checkpointing, getattr(module, "_gradient_checkpointing_func", None))
              for module in model.modules() if hasattr(module, "gradient_checkpointing")}
    try:
        yield
    finally:
        for module, (enabled, function) in chosen.items():
            module.gradient_checkpointing = enabled
            if function is not None:
                module._gradient_checkpointing_func = function


def estimate_peak_bytes(model, plan: MemoryPlan, loss_chunk_bytes: int) -> int:
    """Weights, gradients and AdamW's two moments of the trainable ones, the planned activations and the LM-head
    chunk with its gradient: what training needs at its peak, before Python and the data (~0.5 GB)."""
    weights = sum(parameter.numel() * parameter.element_size() for parameter in model.parameters())
    trainable = sum(parameter.numel() * 4 for parameter in model.parameters() if parameter.requires_grad)
    return weights + 3 * trainable + plan.activation_bytes + 3 * loss_chunk_bytes + 512 * 2**20


def available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo: what can be used without swapping (None where there is no /proc)."""
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)
