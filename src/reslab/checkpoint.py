"""Model files that rebuild themselves, written atomically and loaded safely.

A reslab model file is a safetensors file: the weights, plus a *model card* in the header's
metadata (registry name, overrides, class names, normalisation, input size, training config,
versions), so ``load_model(path)`` needs nothing else. Loading never unpickles code: model
files are safetensors, and ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``;
a file that would run code is refused with a :class:`~reslab.errors.CheckpointError`.

Every write goes to a temporary file in the same folder, is fsynced, then renamed over the
target, so a crash or a full disk never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import glob
import io
import json
import os
import pickle
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, overload

import torch
from torch import Tensor, nn

from reslab.errors import CheckpointError

PathLike = Union[str, os.PathLike]
CARD_KEY = "reslab"
CARD_FORMAT = "reslab-model/1"
MODEL_FILE = "model.safetensors"  # the model file a run folder holds
TEMP_SUFFIX = ".tmp"  # of the temporary files of atomic writes: .<name>.<random>.tmp


@dataclass
class ModelCard:
    """What a checkpoint needs to rebuild and use its model."""

    model: str
    num_classes: int
    overrides: dict[str, Any] = field(default_factory=dict)
    class_names: Optional[list[str]] = None
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    input_size: int = 32
    config: dict[str, Any] = field(default_factory=dict)
    reslab_version: str = ""
    torch_version: str = ""
    format: str = CARD_FORMAT

    def build(self) -> nn.Module:
        """A freshly initialised model of this card's architecture."""
        from reslab.registry import create_model

        return create_model(self.model, num_classes=self.num_classes, **self.overrides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "checkpoint") -> "ModelCard":
        try:
            data = json.loads(text)
            known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
            card = cls(**known)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{source}: its reslab model card is unreadable ({exc})") from None
        card.mean, card.std = tuple(card.mean), tuple(card.std)
        return card


def make_card(model_name: str, model: nn.Module, **fields: Any) -> ModelCard:
    """A card for ``model`` built as ``model_name``, stamped with the current versions."""
    from reslab import __version__

    num_classes = fields.pop("num_classes", None) or _output_features(model)
    if isinstance(fields.get("class_names"), str):  # a list of its characters would be taken for the classes
        raise TypeError(f"class_names must be a list of names, not the string {fields['class_names']!r}")
    return ModelCard(model=model_name, num_classes=num_classes, reslab_version=__version__,
                     torch_version=torch.__version__, **fields)


def _output_features(model: nn.Module) -> int:
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last_linear:
        raise ValueError("cannot infer num_classes from a model without a Linear layer; pass num_classes=")
    return last_linear[-1].out_features


# ------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename; the old file survives any failure."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _new_file_mode())  # mkstemp's files are private (0600): give the usual ones
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _new_file_mode() -> int:
    """The permissions ``open()`` would give a new file: 0666 less the process's umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def partial_writes(folder: PathLike, names: Sequence[str]) -> list[Path]:
    """The temporary files that atomic writes of ``names`` into ``folder`` left behind when the
    process was killed before its rename: never a valid file, safe to delete when no write runs."""
    return sorted(p for name in names for p in Path(folder).glob(f".{glob.escape(name)}.*{TEMP_SUFFIX}"))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save`` made atomic. Keep ``obj`` to tensors and plain containers so that it
    loads back with ``weights_only=True``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------
# Save and load


def save_model(path: PathLike, model: nn.Module, card: ModelCard) -> None:
    """Write ``model``'s weights and ``card`` as one safetensors file, atomically."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={CARD_KEY: card.to_json()}))


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def resolve_checkpoint_path(path: PathLike) -> Path:
    """A model file from a file path, a run folder (its ``model.safetensors``), or a model name
    with trained weights (``resnet56``: the shipped file, :mod:`reslab.pretrained`); a path that
    exists wins over a name."""
    from reslab.pretrained import resolve_named_checkpoint

    named = resolve_named_checkpoint(path)
    if named is not None:
        return named
    path = Path(path)
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.is_file():
            raise CheckpointError(f"{path} is a folder without {MODEL_FILE}; pass a model file or a folder written by `reslab train`")
        return candidate
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a .safetensors file, a run folder written by `reslab train`, "
                              "or a model name with trained weights (`reslab models --pretrained`)")
    return path


def read_checkpoint(path: PathLike) -> tuple[dict[str, Tensor], Optional[ModelCard]]:
    """Weights and (if present) model card of a safetensors or torch file, never running code.

    A torch file may hold a bare state dict or a dict with ``'model'`` (a state dict) and
    ``'card'`` (the card's JSON), as reslab's training checkpoints do.
    """
    path = resolve_checkpoint_path(path)
    if is_safetensors(path):
        if path.suffix == ".safetensors" and is_torch_file(path) and not has_safetensors_header(path):
            raise CheckpointError(f"{path} is a torch checkpoint, not a safetensors file as its name says; "
                                  "rename it to .pt and pass that")
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise  # permission denied, an I/O error: not a truncated file (one line in the cli)
            raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); it may be truncated") from None
        card_json = metadata.get(CARD_KEY)
        return state, ModelCard.from_json(card_json, str(path)) if card_json else None
    obj = load_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        card = obj.get("card")
        return dict(obj["model"]), ModelCard.from_json(card, str(path)) if isinstance(card, str) else None
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj), None
    raise CheckpointError(f"{path} holds no state dict (expected a mapping of names to tensors)")


def load_torch_file(path: PathLike) -> Any:
    """``torch.load(weights_only=True)`` on the CPU: tensors and plain containers only. A file
    holding other pickled objects (which could run code) is refused with a CheckpointError, and
    a file that is neither of torch's formats (a zip archive, or a pickle) is named as such."""
    if not is_torch_file(path):
        raise CheckpointError(f"{path} is not a model file (neither safetensors nor a torch checkpoint); pass a "
                              ".safetensors or .pt file, or a run folder written by `reslab train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files raise many kinds (EOFError, KeyError, RuntimeError...)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        refused = next((line for line in lines if "GLOBAL" in line or "nsupported" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and refused:  # weights_only met a class or function
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled objects other than tensors, which could run code "
                f"({refused[:160]}). Load only files you trust, or convert them to safetensors") from None
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {lines[0][:160]}); "
                              "it may be truncated") from None


def is_torch_file(path: PathLike) -> bool:
    """Whether ``path`` starts as one of torch.save's formats does: a zip archive or a pickle."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")


def has_safetensors_header(path: PathLike) -> bool:
    """Whether ``path`` starts as safetensors files do: 8 bytes of header length, then JSON. (Its
    first byte may be 0x80, a pickle's first byte: :func:`is_torch_file` alone cannot tell.)"""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def is_safetensors(path: Path) -> bool:
    """By suffix, or by the header: 8 bytes of length, then JSON."""
    return path.suffix == ".safetensors" or has_safetensors_header(path)


def load_weights(model: nn.Module, state: Union[Mapping[str, Tensor], PathLike], source: Optional[str] = None) -> nn.Module:
    """``load_state_dict(strict=True)`` with an error naming missing and unexpected keys.

    ``state`` is a state dict, or the path (str or Path) of a checkpoint to read it from
    (:func:`read_checkpoint`: a safetensors or torch file, or a run folder)."""
    if isinstance(state, (str, os.PathLike)):
        source = source or str(state)
        state = read_checkpoint(state)[0]
    elif not isinstance(state, Mapping):
        raise TypeError(f"load_weights takes a state dict or a checkpoint path, not {type(state).__name__}")
    source = source or "checkpoint"
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"
        raise CheckpointError(f"{source} does not fit {type(unwrap(model)).__name__}: missing keys: {show(missing)}; "
                              f"unexpected keys: {show(unexpected)}. Is it a checkpoint of another architecture?")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{source} has tensors of other shapes than the model (checkpoint vs model): {'; '.join(wrong[:3])}")
    unwrap(model).load_state_dict(state, strict=True)
    return model


@overload
def load_model(path: PathLike, map_location: Union[str, torch.device] = ..., *,
               with_card: Literal[False] = ...) -> nn.Module: ...
@overload
def load_model(path: PathLike, map_location: Union[str, torch.device] = ..., *,
               with_card: Literal[True]) -> tuple[nn.Module, ModelCard]: ...


def load_model(path: PathLike, map_location: Union[str, torch.device] = "cpu", *,
               with_card: bool = False) -> Union[nn.Module, tuple[nn.Module, ModelCard]]:
    """Rebuild the model a reslab checkpoint describes and load its weights (eval mode).

    Returns the model; with ``with_card=True``, ``(model, card)``, the card holding the class
    names, normalisation, input size and training config (:func:`load_card` reads the card alone).
    """
    state, card = read_checkpoint(path)
    if card is None:
        raise CheckpointError(f"{path} has weights but no reslab model card; build the model with "
                              "reslab.create_model(...) and load them with reslab.load_weights(model, path)")
    model = load_weights(card.build(), state, str(path)).to(map_location).eval()
    return (model, card) if with_card else model


def load_card(path: PathLike) -> ModelCard:
    """The model card of a reslab checkpoint (model file or run folder), without building the model."""
    card = read_checkpoint(path)[1]
    if card is None:
        raise CheckpointError(f"{path} has weights but no reslab model card")
    return card
