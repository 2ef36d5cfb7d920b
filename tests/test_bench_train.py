"""The training benchmark measures its MFU peak in the precision the run uses, quickly: on a CPU without native
bf16 it must not time an emulated bf16 matmul (that alone stalled `make bench` for minutes)."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import train_throughput  # noqa: E402


def test_peak_is_fp32_only_without_native_bf16_and_returns_within_its_bound(monkeypatch):
    calls = []
    real = train_throughput.matmul_peak_gflops
    monkeypatch.setattr(train_throughput, "matmul_peak_gflops",
                        lambda dtype, **kw: calls.append(dtype) or real(dtype, seconds=1.0))
    started = time.perf_counter()
    peaks = train_throughput.measure_peaks(native_bf16=False)
    assert list(peaks) == ["fp32"] and calls == ["float32"]
    assert peaks["fp32"] > 1.0  # GFLOP/s
    assert time.perf_counter() - started < 10


def test_with_native_bf16_both_precisions_get_their_own_peak(monkeypatch):
    monkeypatch.setattr(train_throughput, "matmul_peak_gflops", lambda dtype: {"float32": 100.0, "bfloat16": 400.0}[dtype])
    assert train_throughput.measure_peaks(native_bf16=True) == {"fp32": 100.0, "bf16": 400.0}


def test_the_main_table_runs_each_precision_with_the_default_memory_mode_and_with_fast():
    # the rows are PRECISIONS keys by construction: a row name that run_chattune cannot look up crashed `make bench`
    assert train_throughput.chattune_rows(["fp32"]) == ["fp32", "fp32 fast", "fp32 plain base"]
    assert train_throughput.chattune_rows(["fp32", "bf16"]) == ["fp32", "bf16", "fp32 fast", "bf16 fast",
                                                                "fp32 plain base", "bf16 plain base"]


def test_default_peak_measurement_keeps_to_its_time_bound():
    from machine import matmul_peak_gflops

    started = time.perf_counter()
    matmul_peak_gflops("float32")
    assert time.perf_counter() - started < 10


def test_useful_flops_count_the_head_only_for_trained_tokens():
    shape = {"body_params": 100, "head_params": 1000}
    row = {"real_tokens_per_s": 10.0, "target_tokens_per_s": 2.0}
    assert train_throughput.useful_flops_per_s(row, "lora", shape) == 4 * (10 * 100 + 2 * 1000)
    assert train_throughput.useful_flops_per_s(row, "full", shape) == 6 * (10 * 100 + 2 * 1000)


def test_throughput_counts_every_micro_batch_of_an_accumulated_step():
    meter = train_throughput.Meter(collator=None)
    # 3 optimizer steps of 2 micro-batches each, 100 real tokens per micro-batch, one batch prefetched past the end
    meter.batches = [{"all": 128, "real": 100, "targets": 40} for _ in range(7)]
    meter.step_ends = [10.0, 20.0, 30.0]
    row = train_throughput.summarise(meter, warmup=1, accumulation=2)
    assert row["steps_timed"] == 2 and row["seconds"] == 20.0
    assert row["real_tokens_per_s"] == 4 * 100 / 20.0  # 2 steps x 2 micro-batches, not 2 micro-batches
    assert row["target_tokens_per_s"] == 4 * 40 / 20.0 and row["all_tokens_per_s"] == 4 * 128 / 20.0
