"""The machine a measurement ran on, and what its CPU computes natively (chosen at run time)."""

from __future__ import annotations

import platform

import torch

# the instruction sets that decide which dtype a CPU multiplies fastest (named with every figure)
MATMUL_FLAGS = ("avx2", "avx_vnni", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """Which of :data:`MATMUL_FLAGS` this CPU has (from ``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return []
    return [f for f in MATMUL_FLAGS if f in flags]


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (torch's own probe of AVX512-BF16 / AMX)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(probe()) for probe in probes if probe is not None)


def describe_cpu() -> str:
    """'Intel(R) Xeon(R) Processor [avx2 avx512f avx512_bf16 amx_bf16 ...]' for reports."""
    return f"{cpu_name()} [{' '.join(cpu_flags()) or 'flags unknown'}]"
