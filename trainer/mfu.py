"""Model FLOPs utilisation: the peak a device can reach (data sheets for GPUs, a matmul measured on CPUs)
and the share of it a run's tokens per second use (PaLM's definition; FLOPs per token in trainer/model.py)."""

from __future__ import annotations

import logging
import os
import time

import torch

from gristmill.config import LoopConfig

log = logging.getLogger("gristmill.trainer")

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets (SXM parts).
GPU_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                  "4090": 165e12}


def peak_flops(device: torch.device, p: LoopConfig, dtype: torch.dtype) -> tuple[float, str]:
    """Peak FLOP/s of one device for MFU, and where the number comes from."""
    if p.peak_tflops:
        return p.peak_tflops * 1e12, "config"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_FLOPS.items():
            if key in name:
                return value, f"data sheet ({name}, bf16 dense)"
        return float("nan"), f"unknown GPU {name}: set pretrain.peak_tflops"
    # CPU: no data sheet; measure what a large matmul reaches with this worker's threads, once per
    # process (cached). A measurement taken while other processes start reads low (the demo once
    # printed MFU 206%): the driver measures before it starts Ray, and its workers on the same
    # machine take its number (run_training, start_logging); the best of five windows besides.
    key = (dtype, torch.get_num_threads())
    if key not in _CPU_PEAK:
        n = 2048
        g = torch.Generator().manual_seed(0)  # not the global RNG: another run may be drawing its weights
        a, b = torch.randn(n, n, dtype=dtype, generator=g), torch.randn(n, n, dtype=dtype, generator=g)
        a @ b
        best = 0.0
        for _ in range(5):
            t0, reps = time.perf_counter(), 0
            while time.perf_counter() - t0 < 0.2:
                a @ b
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
        _CPU_PEAK[key] = (best, f"measured {dtype} matmul on {torch.get_num_threads()} CPU threads")
    return _CPU_PEAK[key]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX-512 BF16 or AMX); elsewhere PyTorch emulates
    bf16 and autocast makes a CPU step tens of times slower. Unknown (no /proc/cpuinfo): assume not."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def use_bf16(p: LoopConfig, device: torch.device, speaks: bool) -> bool:
    """Whether a run computes in bf16: as ``precision`` says (auto: on GPUs), but never on a CPU that only
    emulates it (``speaks``: this rank says why)."""
    bf16 = p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda")
    if bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        if speaks:
            log.warning("pretrain.precision is bf16 but this CPU has no native bf16 (no avx512_bf16 or amx_bf16): "
                        "PyTorch emulates it, and a bf16 step ran 27x slower than fp32 on an AVX2 EPYC (83 s "
                        "against 3 s); training in fp32. Set pretrain.precision: fp32 to silence this.")
        return False
    return bf16


def run_peak(device: torch.device, p: LoopConfig, dtype: torch.dtype, measured: dict | None) -> tuple[float, str]:
    """A worker's peak FLOP/s for MFU: the driver's measurement (:func:`driver_cpu_peak`) when it was taken
    on this host with this thread count and dtype, else :func:`peak_flops`."""
    if (device.type == "cpu" and not p.peak_tflops and measured and measured["host"] == os.uname().nodename
            and measured["threads"] == torch.get_num_threads() and measured["dtype"] == str(dtype)):
        return measured["flops"], measured["source"]
    return peak_flops(device, p, dtype)


def driver_cpu_peak(p: LoopConfig, threads: int) -> dict:
    """The CPU peak measured in the driver before Ray (if any) starts (nothing else is running yet), with
    the thread count and dtype a worker must have to use it."""
    bf16 = p.precision == "bf16" and cpu_has_native_bf16()
    dtype = torch.bfloat16 if bf16 else torch.float32
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        value, source = peak_flops(torch.device("cpu"), p, dtype)
    finally:
        torch.set_num_threads(before)
    return {"flops": value, "source": source + " (by the driver, before training started)", "threads": threads,
            "dtype": str(dtype), "host": os.uname().nodename}


_CPU_PEAK: dict[tuple, tuple[float, str]] = {}


def mfu(flops_per_token: float, tokens_per_s: float, world: int, peak: float) -> float | None:
    """Model FLOPs utilisation of one device, or None when it cannot be known: no peak, or a
    measured CPU peak that the model itself beat (the machine was busy while it was measured)."""
    if not peak == peak or peak <= 0:
        return None
    value = flops_per_token * tokens_per_s / world / peak
    return round(value, 6) if value <= 1.0 else None
