"""A run folder's files, and the training state that lets a stopped run continue exactly.

``DIR/config.json`` holds the resolved :class:`TrainConfig` and the environment (torch, device,
threads, reslab version, git commit). ``DIR/checkpoint.pt`` holds everything a resumed run needs
to take exactly the steps the uninterrupted run would have taken: model, optimiser (momentum
buffers), the extensions' state (EMA), the low-lr start's state, the loader's position (epoch, batches done), the running
sums of the epoch in progress, every random generator (torch CPU and CUDA, Python, NumPy), and
the model card under ``"card"`` (so :func:`reslab.read_checkpoint` reads it as a model file).
It holds only tensors and plain containers: it loads with ``torch.load(weights_only=True)``.
Every file is written atomically: a failed write leaves the previous file intact.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from reslab.checkpoint import atomic_torch_save, atomic_write_bytes, load_torch_file
from reslab.errors import CheckpointError, TrainingError
from reslab.train.config import TrainConfig

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
RESULT_FILE = "result.json"
STATE_FORMAT = "reslab-train-state/1"


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers of a run depend on besides its config."""
    from reslab import __version__

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"reslab_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "python_version": platform.python_version(), "device": str(device), "device_name": name,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> Optional[str]:
    """The commit of the reslab source tree (with ``-dirty`` if it has changes), if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if commit.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, (strict_json(data, indent=1, sort_keys=True) + "\n").encode())


def strict_json(data: Any, **dumps_options: Any) -> str:
    """``data`` as strict JSON: a NaN or infinite number (as a diverged run reports) becomes null,
    where ``json.dumps`` would write NaN, which most JSON parsers reject."""
    return json.dumps(_finite(data), allow_nan=False, **dumps_options)


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(value) for value in data]
    return data


def write_config(out: Path, config: TrainConfig, env: dict[str, Any]) -> None:
    write_json(out / CONFIG_FILE, {"config": config.to_dict(), "environment": env})


def read_config(out: Path) -> TrainConfig:
    """The config a run folder was started with, its ``out`` set to ``out``: the folder where
    the run is now (it may have been moved or copied since; the saved ``out`` may be relative)."""
    path = Path(out) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise TrainingError(f"{out} holds no {CONFIG_FILE}; is it a folder written by `reslab train`?") from None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{path} is unreadable ({exc})") from None
    return TrainConfig.from_dict({**data["config"], "out": str(out)}, str(path))


# ------------------------------------------------------------------------------------------
# Random generators, in weights_only-loadable form.


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


# ------------------------------------------------------------------------------------------
# The training checkpoint.


def save_training_state(path: Path, *, model_state: dict, optimizer_state: dict, extension_states: dict[str, Any],
                        card_json: str, progress: dict[str, Any], config: TrainConfig) -> None:
    """The checkpoint; the extensions' states under ``"extensions"`` (the EMA's also under
    ``"ema"``, where releases before the extensions kept it and read it from)."""
    atomic_torch_save({"format": STATE_FORMAT, "model": model_state, "card": card_json, "optimizer": optimizer_state,
                       "ema": extension_states.get("ema"), "extensions": extension_states, "progress": progress,
                       "rng": rng_state(), "config": config.to_dict()}, path)


def load_training_state(path: Path) -> dict[str, Any]:
    """The state in ``path``, loaded safely (a file that would run code is refused)."""
    if not path.exists():
        raise TrainingError(f"nothing to resume: {path} does not exist (the run stopped before its first checkpoint?)")
    state = load_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a reslab training checkpoint (format {STATE_FORMAT})")
    return state
