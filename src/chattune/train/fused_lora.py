"""LoRA linears computed as one autograd node, optionally with the frozen base weight read in int8 on the CPU.

    handle = fuse_lora(model, int8_base=True)   # before training; handle.layers are the layers it took over
    ...train...
    handle.remove()                              # back to peft's own forward, int8 copies freed

peft computes a LoRA linear as `base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the two small matmuls,
each call allocates the adapter's [tokens, out] output, a scaled copy of it and the sum, the backward pass walks
the same chain again, and under bf16 autocast x is cast to fp32 and back. Here one autograd Function computes
`y = x W^T`, then `y += scaling * (dropout(x) A^T) B^T` in place (`addmm_`), and its backward
`dx = dy W + scaling * ((dy B) A) * mask` the same way: the same numbers (tests/test_train_fused_lora.py), without
the temporaries. It saves x, the rank-r `dropout(x) A^T` and, with adapter dropout, a 1-byte mask instead of
peft's dropped 4-byte copy of x (SmolLM2 LoRA on all linears with dropout 0.05: 67.8 -> 44.4 KB of activations per
token per layer).

`int8_base` (CPU only): the frozen W is quantized once to 7-bit integers with one scale per output row (see
WEIGHT_MAX), and each call quantizes its input to int8 with one scale per token, so `x W^T` is an int8 x int8
matmul (`torch._int_mm`: VNNI where the CPU has it, AVX2 otherwise). The backward's `dy W` reads the same int8
copy, transposed, with W's row scales folded into dy first. The adapter A, B, their gradients and everything else
stay in fp32 (or the autocast dtype). This is QLoRA's bargain (a quantized frozen base under a full-precision
adapter) spent on speed rather than memory: the int8 copy adds 1 byte per base weight. Evaluation is never
quantized: the int8 path runs only while the layer is in training mode, so eval losses and every reported figure
come from the plain weights.

Only plain LoRA on an `nn.Linear` is taken over; DoRA and other variants, merged or multi-adapter layers and
GPT-2's Conv1D keep peft's forward.
"""

from __future__ import annotations

import functools
import types
import weakref
from dataclasses import dataclass, field

import torch

INT8_MAX = 127
# Weights use 7 bits. Without VNNI (AVX2), the int8 matmul multiplies pairs of bytes into a saturating int16, so
# full-range operands give wrong sums (1-2% error on quantized Gaussians, 19% on uniform bytes, measured with
# torch held to AVX2); with the second operand within +-64 it is exact. One range everywhere keeps a run's numbers
# the same on VNNI and AVX2 CPUs; 7-bit weights cost SmolLM2's held-out loss +0.1% (8-bit: +0.6%).
WEIGHT_MAX = 63


def quantize_rows(x: torch.Tensor, top: int = INT8_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric integers in [-top, top] with one scale per row of a 2-D tensor: (int8 values, float scales of
    shape [rows, 1])."""
    scale = x.abs().amax(dim=-1, keepdim=True).float().clamp_min(1e-12) / top
    return torch.round(x / scale).to(torch.int8), scale


@dataclass
class Int8Weight:
    """A frozen weight [out, in] in int8, one scale per output row ([1, out], broadcast over a matmul's rows)."""

    values: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor) -> Int8Weight:
        values, scale = quantize_rows(weight.detach().float(), WEIGHT_MAX)
        return cls(values, scale.t().contiguous())


class _InputCache:
    """The last input quantized, known by identity: q/k/v (and gate/up) receive the same tensor object, which is
    then quantized once instead of three times. A weak reference: holding the tensor would keep its autograd graph
    (every activation before it) alive; a dead one never matches, so a new tensor at a freed one's address cannot
    be mistaken for it. `_version` catches an in-place change."""

    def __init__(self):
        self.tensor, self.version, self.quantized = None, -1, None

    def get(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tensor is None or self.tensor() is not x or x._version != self.version:
            self.tensor, self.version = weakref.ref(x), x._version
            self.quantized = quantize_rows(x.detach().reshape(-1, x.shape[-1]))
        return self.quantized

    def clear(self) -> None:
        self.tensor, self.quantized = None, None


def _int8_matmul(quantized: tuple[torch.Tensor, torch.Tensor], weight_t: torch.Tensor, scale: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    values, row_scale = quantized
    out = torch._int_mm(values, weight_t).to(torch.float32)
    return out.mul_(row_scale).mul_(scale).to(dtype)


class _LoRALinear(torch.autograd.Function):
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T for a frozen W (and b); gradients for x, A and B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling, int8, quantized_x, dropout_p):
        x2 = x.reshape(-1, x.shape[-1])
        noise = None
        if dropout_p:  # F.dropout's own draw (same numbers for the same seed); kept as a 1-byte mask
            noise = torch.empty_like(x2).bernoulli_(1 - dropout_p).div_(1 - dropout_p)
        h = (x2 * noise if noise is not None else x2) @ lora_a.t()
        if int8 is not None:
            y = _int8_matmul(quantized_x, int8.values.t(), int8.scale, x.dtype)
            if bias is not None:
                y += bias
        else:
            y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        y.addmm_(h, lora_b.t(), alpha=scaling)
        mask = noise.bool() if noise is not None else None
        ctx.save_for_backward(x2, h, weight, lora_a, lora_b, mask)
        ctx.scaling, ctx.int8, ctx.shape, ctx.dropout_p = scaling, int8, x.shape, dropout_p
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, h, weight, lora_a, lora_b, mask = ctx.saved_tensors
        noise = None if mask is None else mask.to(x2.dtype).div_(1 - ctx.dropout_p)
        dy2 = dy.reshape(-1, dy.shape[-1])
        grad_b = torch.mm(dy2.t(), h).mul_(ctx.scaling)
        dh = torch.mm(dy2, lora_b).mul_(ctx.scaling)
        grad_a = torch.mm(dh.t(), x2 * noise if noise is not None else x2)
        grad_x = None
        if ctx.needs_input_grad[0]:
            if ctx.int8 is not None:  # dy W = (dy * row scales of W) @ int8(W)
                scaled = quantize_rows(dy2 * ctx.int8.scale)
                grad_x = _int8_matmul(scaled, ctx.int8.values, 1.0, dy2.dtype)
            else:
                grad_x = torch.mm(dy2, weight)
            through_adapter = dh @ lora_a
            grad_x += through_adapter * noise if noise is not None else through_adapter
            grad_x = grad_x.view(ctx.shape)
        return grad_x, None, None, grad_a, grad_b, None, None, None, None


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if args or kwargs or layer.disable_adapters or layer.merged:  # anything unusual: peft's own path
        return type(layer).forward(layer, x, *args, **kwargs)
    name = layer.active_adapters[0]
    weight, bias = layer.base_layer.weight, layer.base_layer.bias
    lora_a, lora_b = layer.lora_A[name].weight, layer.lora_B[name].weight
    int8 = layer._chattune_int8 if layer.training else None
    # quantized before any cast: q/k/v then share one quantization of the same input tensor
    quantized = layer._chattune_inputs.get(x) if int8 is not None else None
    scaling, device = layer.scaling[name], x.device.type
    dropout = layer.lora_dropout[name]
    dropout_p = dropout.p if isinstance(dropout, torch.nn.Dropout) and dropout.training else 0.0
    if not torch.is_autocast_enabled(device):
        return _LoRALinear.apply(x, weight, bias, lora_a, lora_b, scaling, int8, quantized, dropout_p)
    dtype = torch.get_autocast_dtype(device)  # autocast does not reach into a Function: cast as it would
    if int8 is None:  # training steps cast the frozen weight once; evaluation casts per call, as autocast does
        weight = _frozen_cast(layer, weight, dtype) if layer.training else weight.to(dtype)
    with torch.autocast(device, enabled=False):
        return _LoRALinear.apply(x.to(dtype), weight, None if bias is None else bias.to(dtype),
                                 lora_a.to(dtype), lora_b.to(dtype), scaling, int8, quantized, dropout_p)


def _frozen_cast(layer, weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The frozen base weight in the autocast dtype, cast once: autocast casts a weight that needs no gradient
    again at every call (SmolLM2: 106M weights per micro-batch, forward and recomputation)."""
    key = (dtype, weight.data_ptr(), weight._version)
    cached = layer.__dict__.get("_chattune_cast")
    if cached is None or cached[0] != key:
        cached = layer.__dict__["_chattune_cast"] = (key, weight.detach().to(dtype))
    return cached[1]


def _fusable(module) -> bool:
    from peft.tuners.lora import Linear as LoraLinear

    if type(module) is not LoraLinear or type(module.base_layer) is not torch.nn.Linear:
        return False
    if len(module.active_adapters) != 1 or module.fan_in_fan_out or module.merged:
        return False
    name = module.active_adapters[0]
    return name not in module.lora_variant and isinstance(module.lora_dropout[name], (torch.nn.Identity,
                                                                                       torch.nn.Dropout))


@dataclass
class FusedLoRA:
    """The layers `fuse_lora` took over; `remove()` gives them back to peft and frees the int8 copies."""

    layers: list = field(default_factory=list)
    int8: bool = False
    inputs: _InputCache = field(default_factory=_InputCache)  # shared by the layers: consecutive ones share inputs

    def drop_int8(self) -> None:
        """Keep the fused layers, with their base in the plain weights."""
        for layer in self.layers:
            layer._chattune_int8 = None
        self.inputs.clear()
        self.int8 = False

    def compare_int8(self, loss_of) -> tuple[float, float]:
        """`loss_of()` (one training batch's loss) with the int8 base and with the plain weights, the same random
        draws for both (adapter dropout). The model is left in training mode."""
        int8 = [layer._chattune_int8 for layer in self.layers]
        losses = []
        for use_int8 in (True, False):
            for layer, weight in zip(self.layers, int8):
                layer._chattune_int8 = weight if use_int8 else None
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                losses.append(float(loss_of()))
        for layer, weight in zip(self.layers, int8):
            layer._chattune_int8 = weight
        self.inputs.clear()
        return losses[0], losses[1]

    def remove(self) -> None:
        for layer in self.layers:
            for attribute in ("forward", "_chattune_int8", "_chattune_inputs", "_chattune_cast"):
                layer.__dict__.pop(attribute, None)
        self.layers = []
        self.inputs.clear()


@functools.cache
def _int_mm_exact() -> bool:
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-INT8_MAX, INT8_MAX + 1, (16, 256), dtype=torch.int8, generator=generator)
    b = torch.randint(-WEIGHT_MAX, WEIGHT_MAX + 1, (24, 256), dtype=torch.int8, generator=generator)
    try:
        return torch.equal(torch._int_mm(a, b.t()).long(), a.long() @ b.long().t())
    except (RuntimeError, AttributeError):  # an op missing from this build
        return False


def int8_base_supported(device: torch.device | str) -> bool:
    """torch._int_mm gives exact sums for our operand ranges on this device: CPUs (CUDA has its own shape rules,
    and bf16 anyway)."""
    return torch.device(device).type == "cpu" and _int_mm_exact()


def fuse_lora(model: torch.nn.Module, int8_base: bool = False) -> FusedLoRA:
    """Take over every plain LoRA linear of `model` (see the module docstring); `int8_base` quantizes their frozen
    base weights for the training forward and backward."""
    handle = FusedLoRA(int8=int8_base)
    for module in model.modules():
        if not _fusable(module):
            continue
        module.forward = types.MethodType(_fused_forward, module)
        module._chattune_int8 = Int8Weight.of(module.base_layer.weight) if int8_base else None
        module._chattune_inputs = handle.inputs
        handle.layers.append(module)
    handle.int8 = int8_base and bool(handle.layers)  # GPT-2's Conv1D layers: nothing to read in int8
    return handle
