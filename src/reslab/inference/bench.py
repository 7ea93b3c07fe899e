"""Measure a model's training or inference speed, always against the same model run eager,
fp32, NCHW (the baseline) in the same process.

For each setup: ``warmup`` steps are run and discarded, then ``repeats`` timed steps, taken in
turn with the baseline's (round robin), so that load from other processes slows both alike;
the median step time gives images/s and latency per batch. An inference step is a forward
pass under ``torch.inference_mode``; a training step is forward, cross-entropy, backward and an
SGD-with-momentum update.

Peak memory is the extra memory one step needs beyond what was held before it. CUDA:
``torch.cuda.max_memory_allocated`` during the step minus the allocation before it. CPU: the
growth of the process's peak resident set (VmHWM, reset through ``/proc/self/clear_refs`` after
``malloc_trim`` returns freed memory), i.e. activations, gradients and workspaces; ``None``
where that cannot be read (not Linux/glibc).

Precision ``bf16``: inference casts weights and inputs to bfloat16; training uses autocast
with fp32 weights. ``fold_bn`` (inference only) folds BN into the convolutions
(:func:`reslab.inference.fold.fold_bn`).
"""

from __future__ import annotations

import copy
import ctypes
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from reslab.inference.fold import fold_bn

MODES = ("train", "infer")
PRECISIONS = ("fp32", "bf16")
MOMENTUM = 0.9
LEARNING_RATE = 1e-3  # small: the weights must stay finite over many steps on random labels


@dataclass(frozen=True)
class BenchSetup:
    """How a step runs: numeric precision, memory format, folded BN."""

    precision: str = "fp32"
    channels_last: bool = False
    fold_bn: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def label(self) -> str:
        parts = (["fold-bn"] if self.fold_bn else []) + [self.precision, "channels_last" if self.channels_last else "NCHW"]
        return " + ".join(parts) if self != BASELINE else "eager fp32 NCHW"


BASELINE = BenchSetup()


@dataclass
class Measurement:
    """Timed steps of one setup."""

    setup: BenchSetup
    mode: str
    batch_size: int
    seconds: list[float] = field(default_factory=list)
    peak_memory_bytes: Optional[int] = None

    @property
    def latency_ms(self) -> float:
        """Median time of one step (one batch), in milliseconds."""
        return 1000.0 * statistics.median(self.seconds)

    @property
    def images_per_second(self) -> float:
        return self.batch_size / statistics.median(self.seconds)

    def to_dict(self) -> dict:
        return {"setup": self.setup.label, "mode": self.mode, "batch_size": self.batch_size,
                "images_per_second": self.images_per_second, "latency_ms": self.latency_ms,
                "peak_memory_mb": None if self.peak_memory_bytes is None else self.peak_memory_bytes / 2**20,
                "repeats": len(self.seconds)}


class InferenceStep:
    """A forward pass of a prepared copy of the model on a fixed random batch."""

    def __init__(self, model: nn.Module, setup: BenchSetup, batch_size: int, input_size: int, device: torch.device) -> None:
        dtype = torch.bfloat16 if setup.precision == "bf16" else torch.float32
        memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
        prepared = fold_bn(model) if setup.fold_bn else copy.deepcopy(model).eval()
        self.model = prepared.to(device=device, dtype=dtype, memory_format=memory_format)
        self.images = torch.randn(batch_size, 3, input_size, input_size, device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def __call__(self) -> None:
        with torch.inference_mode():
            self.model(self.images)


class TrainingStep:
    """Forward, cross-entropy on random labels, backward and an SGD update of a model copy."""

    def __init__(self, model: nn.Module, setup: BenchSetup, batch_size: int, input_size: int, device: torch.device) -> None:
        if setup.fold_bn:
            raise ValueError("fold_bn is for inference: a folded model has no BN to train; drop --fold-bn or use --mode infer")
        memory_format = torch.channels_last if setup.channels_last else torch.contiguous_format
        self.model = copy.deepcopy(model).train().to(device=device, memory_format=memory_format)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.images = torch.randn(batch_size, 3, input_size, input_size, device=device).contiguous(memory_format=memory_format)
        num_classes = [m for m in self.model.modules() if isinstance(m, nn.Linear)][-1].out_features
        self.labels = torch.randint(0, num_classes, (batch_size,), device=device)
        self.device_type = device.type
        self.autocast = setup.precision == "bf16"

    def __call__(self) -> None:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.autocast):
            loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def make_step(model: nn.Module, mode: str, setup: BenchSetup, batch_size: int, input_size: int,
              device: torch.device) -> "InferenceStep | TrainingStep":
    """The callable that runs one step of ``mode`` ('train' or 'infer') in ``setup``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    step_class = TrainingStep if mode == "train" else InferenceStep
    return step_class(model, setup, batch_size, input_size, device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    step()
    _synchronize(device)
    return time.perf_counter() - start


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field_name}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def step_memory(step, device: torch.device) -> Optional[int]:
    """Bytes one step needs beyond what is held before it (see the module docstring)."""
    if device.type == "cuda":
        _synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        before = _proc_status_kib("VmRSS")
        step()
        return 1024 * max(0, _proc_status_kib("VmHWM") - before)
    except (OSError, AttributeError):
        return None


def run_benchmark(model: nn.Module, mode: str, setups: Sequence[BenchSetup], *, batch_size: int, input_size: int,
                  device: torch.device = torch.device("cpu"), repeats: int = 10, warmup: int = 3) -> list[Measurement]:
    """Measure each setup (see the module docstring); timed steps alternate between setups."""
    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need repeats >= 1, warmup >= 0 and batch_size >= 1, got {repeats}, {warmup}, {batch_size}")
    steps = [make_step(model, mode, setup, batch_size, input_size, device) for setup in setups]
    results = [Measurement(setup, mode, batch_size) for setup in setups]
    for step in steps:
        for _ in range(warmup):
            step()
    for _ in range(repeats):
        for step, result in zip(steps, results):
            result.seconds.append(_timed(step, device))
    for step, result in zip(steps, results):
        result.peak_memory_bytes = step_memory(step, device)
    return results


def compare_with_baseline(model: nn.Module, mode: str, setup: BenchSetup, **options) -> tuple[Measurement, Measurement]:
    """(baseline, setup) measurements; the baseline is eager fp32 NCHW without folding."""
    baseline, measured = run_benchmark(model, mode, [BASELINE, setup], **options)
    return baseline, measured

