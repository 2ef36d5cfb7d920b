"""bf16 or fp32. Where bf16 is native (CUDA, CPUs with AVX512-BF16 or AMX) its matmuls run ~2-5x faster than fp32;
where a CPU emulates it (AVX2 only: most laptops) they run several times slower, so `auto` never picks it there.
Training (`precision:`) and reading prompts for decoding (`--prompt-precision`) choose the same way."""

from __future__ import annotations

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
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device, setting: str = "precision=") -> bool:
    """`precision` auto, fp32 or bf16 (asked for where it is emulated: an error naming `setting`)."""
    if precision == "bf16" and not bf16_supported(device):
        raise InputError(f"{setting}bf16: this {device.type} has no native bf16; use {setting}auto or fp32")
    return precision == "bf16" or (precision == "auto" and bf16_supported(device))
