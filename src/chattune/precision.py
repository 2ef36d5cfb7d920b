"""bf16 or fp32. Where bf16 is native (CUDA, CPUs with AVX512-BF16 or AMX) its matmuls run ~2-5x faster than fp32;
where a CPU emulates it (AVX2 only: most laptops) they run several times slower, so `auto` never picks it there.
Training (`precision:`) and reading prompts for decoding (`--prompt-precision`) choose the same way."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from chattune.errors import InputError


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.is_file() else ""
    return ("avx512_bf16" in flags or "amx_bf16" in flags) and not cpu_isa_capped()


# oneDNN ISAs with bf16 dot products (ONEDNN_MAX_CPU_ISA names; ALL/DEFAULT: no cap)
_ONEDNN_BF16_ISAS = ("ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                     "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2")


def cpu_isa_capped() -> bool:
    """The CPU has bf16 instructions but the process is told not to use them: ATen's kernels capped below AVX-512
    (ATEN_CPU_CAPABILITY=avx2) or oneDNN's below AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA=AVX2). bf16 then runs
    emulated, so `auto` must take fp32 as on a CPU without it."""
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").strip().upper()
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512") or onednn not in _ONEDNN_BF16_ISAS


def use_bf16(precision: str, device: torch.device, setting: str = "precision=") -> bool:
    """`precision` auto, fp32 or bf16 (asked for where it is emulated: an error naming `setting`)."""
    if precision == "bf16" and not bf16_supported(device):
        raise InputError(f"{setting}bf16: this {device.type} has no native bf16; use {setting}auto or fp32")
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))
