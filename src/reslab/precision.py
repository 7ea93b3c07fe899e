"""Which numeric precision runs fastest on this machine: ``auto`` picks bfloat16 autocast where
the hardware has bf16 instructions and float32 where it does not.

bfloat16 (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training") keeps
float32's exponent range, so a network trains under bf16 autocast without loss scaling. It only
pays where the hardware computes in it: NVIDIA GPUs from Ampere on, and x86 CPUs with the
AVX512-BF16 or AMX-BF16 instructions (Intel Cooper Lake and Sapphire Rapids on, AMD Zen 4 on).
Elsewhere PyTorch's CPU kernels convert bf16 to float32 and back around every operation: on an
Ice Lake Xeon (AVX-512, no bf16 instructions) a ResNet-20 training step under bf16 autocast ran
slower than in float32, and on a Xeon with AMX-bf16 several times faster
(``experiments/precision-per-cpu``, ``benchmarks/bench_table.py``).

``auto`` decides from the CPU's feature flags (``/proc/cpuinfo``) or the GPU's compute
capability; ``bf16`` and ``fp32`` force a precision. Every command that runs a model takes
``--precision`` and says which precision it chose and why.
"""

from __future__ import annotations

from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp32")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # x86 feature flags of native bf16 arithmetic, as Linux names them
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags: the ``flags`` line of ``/proc/cpuinfo`` (x86 Linux), or of the
    text ``cpuinfo``; empty where there is no such file (macOS, Windows)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes in bf16 natively, and what says so (for the start line)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major >= 8:
            return True, f"the GPU (compute capability {major}.{minor}) has bf16 tensor cores"
        return False, f"the GPU (compute capability {major}.{minor}) has no bf16 tensor cores (Ampere, 8.0, and later do)"
    found = [flag for flag in BF16_CPU_FLAGS if flag in cpu_flags()]
    if found:
        return True, f"the CPU has {' and '.join(found)}"
    return False, f"the CPU has neither {' nor '.join(BF16_CPU_FLAGS)}, so bf16 would be emulated and slower"


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(``'bf16'`` or ``'fp32'``, a line saying why) for a ``--precision`` of ``auto``, ``bf16`` or
    ``fp32`` on ``device``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    fast, reason = native_bf16(device)
    if requested == "auto":
        chosen, why = ("bf16" if fast else "fp32"), f"auto: {reason}"
    else:
        chosen, why = requested, "asked for" + ("" if fast or requested == "fp32" else f"; {reason}")
    return chosen, f"precision: {chosen}{' autocast' if chosen == 'bf16' else ''} ({why})"
