"""Shared by the benchmarks: machine description and CPU flags, a measured matmul peak per precision, and dated
result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def machine_info() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "precision_flags": precision_flags()}


def cpu_flags() -> set[str]:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return set()
    line = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


# the flags that decide the training precision (chattune's bf16_supported) and the kernels behind it
PRECISION_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")


def precision_flags() -> dict[str, bool]:
    flags = cpu_flags()
    return {flag: flag in flags for flag in PRECISION_FLAGS}


def matmul_peak_gflops(dtype: str = "float32", seconds: float = 3.0, size: int = 1024) -> float:
    """Best matmul rate in `dtype` within about `seconds`: the ceiling a model's FLOP utilisation is measured
    against. It must be the precision the run uses: a bf16 peak on a CPU without native bf16 is emulated (minutes,
    and meaningless), an fp32 peak under a bf16 run overstates its utilisation."""
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ b  # warm-up: oneDNN picks and caches its kernel
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine_info(), **data}, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"results: {path}")
    return path
