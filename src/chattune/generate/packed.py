"""Linear weights reordered once into oneDNN's own blocked layout, for models that only decode on a CPU.

    model = pack_linears(model)   # every fp32 nn.Linear on the CPU; the model then runs forward only, without grad
    model = pack_linears(model, bf16=True)   # each also with a bf16 copy, used under bf16 autocast (prompts)

A decode step multiplies a few rows (1 to 8 streams) by every weight of the model. PyTorch's default CPU matmul
(MKL) reads each weight in its plain row-major layout at every call. oneDNN, given the weight reordered once (what
torch.compile's freezing pass does for CPU linears, through the same two ops), ran the matmuls of a SmolLM2-135M
decode step 1.6-1.9x faster at 1 to 8 rows on 2 cores, and the LM head 2.4-4.8x; a 200-token prompt 1.2x
(benchmarks/generate_throughput.py has the side-by-side rows). oneDNN also gives one row the same result whatever
other rows share the call (MKL's differs by ~1e-5), so a request's tokens do not depend on the crowd it decodes in.
Reading a prompt is compute-bound (200 rows: the packed fp32 matmuls ran at ~200 GFLOP/s, the fp32 peak of 2 Zen 4
cores); where bf16 is native, a bf16 copy of each weight ran them 2.06x faster (210 -> 102 ms for 30 layers).

Decoding only: the packed weight has no autograd (a backward through it would be silently wrong, so the forward
refuses inputs that need a gradient), and the Linear's `weight` is gone, so a model whose weights are read (export,
training, a GGUF conversion) must not be packed. Where the ops are missing or disagree with F.linear (a CPU build
without oneDNN, another architecture), nothing is packed and decoding runs as before.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

ROWS_HINT = 8  # the row count oneDNN picks its layout for: the serving batch; 1 and 200 rows ran as fast with it


class PackedLinear(torch.nn.Module):
    """`linear` with its weight in oneDNN's layout (same outputs up to float rounding, ~1e-6 relative). With
    `bf16`, a second copy of the weight in bf16 serves the calls made under bf16 autocast (reading a prompt where
    bf16 is native: `HFBackend(prompt_bf16=True)`), as autocast would run a plain Linear."""

    def __init__(self, linear: torch.nn.Linear, bf16: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # plain attributes, not parameters or buffers: `.to()` and state_dict() cannot handle an opaque oneDNN tensor
        weight = linear.weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, ROWS_HINT)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.packed_bf16 = torch.ops.mkldnn._reorder_linear_weight(weight.bfloat16(), ROWS_HINT) if bf16 else None
        self.bias_bf16 = None if self.bias is None or not bf16 else self.bias.bfloat16()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("a PackedLinear only decodes: it has no backward (load the model unpacked to train)")
        if (self.packed_bf16 is not None and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return torch.ops.mkldnn._linear_pointwise(x.bfloat16(), self.packed_bf16, self.bias_bf16, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: torch.nn.Module, bf16: bool = False) -> torch.nn.Module:
    """`model` with each fp32 CPU `nn.Linear` replaced by a PackedLinear, in place (tied weights stay with the
    embedding, which keeps its own copy); unchanged where oneDNN is unusable (see `packing_works`). `bf16`: each
    also keeps a bf16 copy for bf16 autocast (+2 bytes per weight: 212 MB for SmolLM2-135M)."""
    if not packing_works():
        return model
    packed = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            weight = child.weight if type(child) is torch.nn.Linear else None  # not subclasses (LoRA layers, ...)
            if weight is not None and weight.device.type == "cpu" and weight.dtype == torch.float32:
                setattr(module, name, PackedLinear(child, bf16))
                packed += 1
    if not packed:  # nothing was packed (a bf16 model, no nn.Linear): the weights need no copy either
        return model
    # transformers maps a safetensors file into memory, and every page of it read stays in RSS while any tensor
    # still points into the mapping; copying out what was not packed (embeddings, norms: ~20% of SmolLM2) lets
    # it go. Without this, SmolLM2 decoding packed held 1.47 GB RSS instead of 1.06 GB.
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = tensor.data.clone()
    return model


@functools.cache
def packing_works() -> bool:
    """oneDNN's linear ops exist in this torch build and agree with F.linear on a small probe."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():  # the probe leaves a seeded run's RNG alone
            probe = torch.nn.Linear(64, 48)
            x = torch.randn(3, 64)
            return torch.allclose(PackedLinear(probe)(x), F.linear(x, probe.weight, probe.bias), atol=1e-5)
    except (RuntimeError, AttributeError):  # an op missing from this build, or unsupported on this CPU
        return False
