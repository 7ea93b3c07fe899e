"""Export a model for deployment: ONNX (with a dynamic batch dimension) and TorchScript, each
checked against PyTorch on random inputs of several batch sizes.

ONNX uses PyTorch's TorchScript-based exporter (``dynamo=False``), which needs only the
``onnx`` package; the torch.export-based exporter would also need ``onnxscript``. Files are
written atomically (see :mod:`reslab.checkpoint`).
"""

from __future__ import annotations

import importlib
import io
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from torch import Tensor, nn

from reslab.checkpoint import atomic_write_bytes
from reslab.errors import MissingDependencyError

PathLike = Union[str, os.PathLike]
ONNX_OPSET = 17
EXPORT_EXTRA = "pip install 'reslab[export]'"  # the optional packages of ONNX export: onnx, onnxruntime
INPUT_NAME, OUTPUT_NAME = "images", "logits"
VERIFY_BATCH_SIZES = (1, 3)
TORCHSCRIPT_METHODS = ("script", "trace")


def _example_input(input_size: int, batch_size: int, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, input_size, input_size, generator=generator)


def require_onnx(verify: bool = True) -> None:
    """Raise MissingDependencyError, naming the pip command, unless ``onnx`` (and, to
    ``verify``, ``onnxruntime``) can be imported; call it before any work."""
    missing = []
    for module in ("onnx", "onnxruntime") if verify else ("onnx",):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        skip = " (or --no-verify to skip the check)" if missing == ["onnxruntime"] else ""
        raise MissingDependencyError(f"ONNX export needs {' and '.join(missing)}, not installed: {EXPORT_EXTRA}{skip}")


def export_onnx(model: nn.Module, path: PathLike, input_size: int, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (in eval mode, on the CPU) as ONNX with inputs ``images`` (N, 3, S, S)
    and outputs ``logits`` (N, classes), N dynamic."""
    require_onnx(verify=False)
    model = model.cpu().eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation and constant-folding notices
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (_example_input(input_size, 2),), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        except RuntimeError as exc:  # an opset it does not know, or one too old for an operator of the model
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"ONNX export at opset {opset} failed ({reason}); try the default opset {ONNX_OPSET}") from exc
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def export_torchscript(model: nn.Module, path: PathLike, input_size: int, method: str = "script") -> Path:
    """Write ``model`` (eval mode, CPU) as TorchScript, compiled (``'script'``, keeps control
    flow) or traced on an example batch (``'trace'``); load it with ``torch.jit.load``."""
    if method not in TORCHSCRIPT_METHODS:
        raise ValueError(f"TorchScript method must be one of {TORCHSCRIPT_METHODS}, got {method!r}")
    model = model.cpu().eval()
    with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export but still works
        warnings.simplefilter("ignore", DeprecationWarning)
        if method == "script":
            compiled = torch.jit.script(model)
        else:
            compiled = torch.jit.trace(model, _example_input(input_size, 2), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(compiled, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


@dataclass(frozen=True)
class Agreement:
    """How closely an exported model reproduces PyTorch's outputs."""

    max_difference: float  # largest |exported(x) - model(x)|
    max_output: float  # largest |model(x)|, the scale of the logits

    @property
    def relative(self) -> float:
        """The difference relative to the logits' scale (at least 1)."""
        return self.max_difference / max(1.0, self.max_output)


def _agreement(model: nn.Module, run: Callable[[Tensor], Tensor], input_size: int,
               batch_sizes: Sequence[int]) -> Agreement:
    """Compare ``run`` with ``model`` on a random batch of each size."""
    model = model.cpu().eval()
    difference = largest = 0.0
    with torch.inference_mode():
        for seed, batch in enumerate(batch_sizes, start=1):
            x = _example_input(input_size, batch, seed)
            expected, got = model(x), run(x)
            if got.shape != expected.shape:
                raise ValueError(f"exported model gives shape {tuple(got.shape)} for batch {batch}, PyTorch {tuple(expected.shape)}")
            difference = max(difference, float((got - expected).abs().max()))
            largest = max(largest, float(expected.abs().max()))
    return Agreement(difference, largest)


def verify_onnx(path: PathLike, model: nn.Module, input_size: int,
                batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES) -> Agreement:
    """Compare onnxruntime running ``path`` with ``model`` on batches of ``batch_sizes`` images."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(f"checking the ONNX file needs onnxruntime, not installed: {EXPORT_EXTRA} "
                                     "(or pass --no-verify)") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])

    return _agreement(model, run, input_size, batch_sizes)


def verify_torchscript(path: PathLike, model: nn.Module, input_size: int,
                       batch_sizes: Sequence[int] = VERIFY_BATCH_SIZES) -> Agreement:
    """Compare the TorchScript file, loaded back, with ``model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(str(path), map_location="cpu").eval()
    return _agreement(model, loaded, input_size, batch_sizes)
