"""The official CIFAR-10 and CIFAR-100 files (Krizhevsky 2009, "Learning Multiple Layers of
Features from Tiny Images"; https://www.cs.toronto.edu/~kriz/cifar.html), python and binary versions.

Both store each 32x32 image as 3072 bytes: the 1024 red values (row-major), then green, then blue.

* python version: pickled dicts (written by Python 2) with ``data`` (uint8 ``[N, 3072]``) and
  ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100); class names in ``batches.meta`` /
  ``meta``. They are read with an unpickler that only builds numpy arrays and plain Python
  values: a file that asks for anything else (which could run code) is refused.
* binary version: records of label byte(s) + 3072 pixel bytes; CIFAR-100 records carry the
  coarse then the fine label (the fine label is used). Class names one per line in a text file.
"""

from __future__ import annotations

import codecs
import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.data.dataset import ImageDataset
from reslab.data.readers import SplitSource
from reslab.errors import DataError

IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one official CIFAR version keeps its splits, labels and class names."""

    format: str
    folder: str  # the folder the official archive extracts to
    splits: dict[str, tuple[str, ...]]
    names_file: str
    names_key: str = ""  # python version: the meta dict's key of the class names
    labels_key: str = ""  # python version: the batch dict's key of the labels
    label_bytes: int = 0  # binary version: label bytes before each image (the last one is used)


LAYOUTS = (
    CifarLayout("cifar10-python", "cifar-10-batches-py",
                {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
                "batches.meta", names_key="label_names", labels_key="labels"),
    CifarLayout("cifar100-python", "cifar-100-python", {"train": ("train",), "test": ("test",)},
                "meta", names_key="fine_label_names", labels_key="fine_labels"),
    CifarLayout("cifar10-binary", "cifar-10-batches-bin",
                {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
                "batches.meta.txt", label_bytes=1),
    CifarLayout("cifar100-binary", "cifar-100-binary", {"train": ("train.bin",), "test": ("test.bin",)},
                "fine_label_names.txt", label_bytes=2),
)
LAYOUT_BY_FORMAT = {layout.format: layout for layout in LAYOUTS}


def find_cifar(path: Path, split: str) -> SplitSource | None:
    """The split of an official CIFAR folder at ``path`` (or inside it, as extracted), else None."""
    for layout in LAYOUTS:
        for folder in (path, path / layout.folder):
            if (folder / layout.names_file).is_file() and any((folder / f).is_file() for f in layout.splits["train"]):
                return _source(layout, folder, split)
    return None


def _source(layout: CifarLayout, folder: Path, split: str) -> SplitSource:
    if split not in layout.splits:
        raise DataError(f"{folder} ({layout.format}) has splits {' and '.join(layout.splits)}, not '{split}'; "
                        "hold out a validation set with reslab.data.split_validation")
    files = [folder / name for name in layout.splits[split]]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)} of the official {layout.format} files; "
                        "extract the archive again or download it again")
    reader = read_python if layout.labels_key else read_binary
    return SplitSource(layout.format, folder, split, [str(folder / layout.names_file), *map(str, files)], reader)


def read_python(source: SplitSource, progress: bool = True) -> ImageDataset:
    layout = LAYOUT_BY_FORMAT[source.format]
    names_path, *batches = map(Path, source.files)
    meta = _str_keys(unpickle_arrays(names_path))
    if not isinstance(meta, dict) or not isinstance(meta.get(layout.names_key), list):
        raise DataError(f"{names_path} has no '{layout.names_key}' list of class names; is it an official {layout.format} file?")
    classes = [_text(name) for name in meta[layout.names_key]]
    pixels, labels = [], []
    for path in batches:
        batch = _str_keys(unpickle_arrays(path))
        data = batch.get("data") if isinstance(batch, dict) else None
        batch_labels = batch.get(layout.labels_key) if isinstance(batch, dict) else None
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != IMAGE_BYTES or batch_labels is None:
            raise DataError(f"{path} is not an official {layout.format} batch (expected 'data' uint8 [N, {IMAGE_BYTES}] "
                            f"and '{layout.labels_key}'); download it again")
        pixels.append(data)
        labels.append(_checked_labels(np.asarray(batch_labels), len(data), len(classes), path))
    return _dataset(np.concatenate(pixels), np.concatenate(labels), classes, source)


def read_binary(source: SplitSource, progress: bool = True) -> ImageDataset:
    layout = LAYOUT_BY_FORMAT[source.format]
    names_path, *batches = map(Path, source.files)
    classes = [line.strip() for line in names_path.read_text(encoding="utf-8", errors="replace").splitlines()
               if line.strip()]
    record = layout.label_bytes + IMAGE_BYTES
    pixels, labels = [], []
    for path in batches:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(f"{path} is {raw.size} bytes, not a whole number of {record}-byte {layout.format} records; "
                            "it is truncated or of another format: download it again")
        rows = raw.reshape(-1, record)
        pixels.append(rows[:, layout.label_bytes:])
        labels.append(_checked_labels(rows[:, layout.label_bytes - 1], len(rows), len(classes), path))
    return _dataset(np.concatenate(pixels), np.concatenate(labels), classes, source)


def _checked_labels(labels: np.ndarray, count: int, num_classes: int, path: Path) -> np.ndarray:
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path} has {labels.shape} labels of type {labels.dtype} for {count} images; download it again")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path} has labels {labels.min()}..{labels.max()} outside the {num_classes} classes named "
                        "in its meta file; the files do not belong together: download them again")
    return labels.astype(np.int64)


def _dataset(pixels: np.ndarray, labels: np.ndarray, classes: list[str], source: SplitSource) -> ImageDataset:
    images = np.ascontiguousarray(pixels.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), classes, str(source.location))


def _str_keys(value: object) -> object:
    """A dict with bytes keys (pickled by Python 3 from bytes) as one with str keys."""
    return {_text(k): v for k, v in value.items()} if isinstance(value, dict) else value


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# ------------------------------------------------------------------------------------------
# Restricted unpickling


def _numpy_core() -> str:
    return "numpy._core" if hasattr(np, "_core") else "numpy.core"


class ArrayUnpickler(pickle.Unpickler):
    """Builds only numpy arrays, dtypes and scalars besides plain Python values (dicts, lists,
    strings, numbers, which need no class lookup). Any other class or function is refused."""

    NUMPY_INTERNALS = {"multiarray": ("_reconstruct", "scalar"), "numeric": ("_frombuffer",)}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            return codecs.encode
        package, _, submodule = module.rpartition(".")
        if package in ("numpy.core", "numpy._core") and name in self.NUMPY_INTERNALS.get(submodule, ()):
            return getattr(importlib.import_module(f"{_numpy_core()}.{submodule}"), name)
        raise pickle.UnpicklingError(f"it asks for {module}.{name}")


def unpickle_arrays(path: Path) -> object:
    """The object pickled in ``path``, if it is made of numpy arrays and plain values only."""
    try:
        with open(path, "rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        if str(exc).startswith("it asks for"):
            raise DataError(f"refusing to unpickle {path}: {exc}, which could run code; official CIFAR files hold "
                            "only numpy arrays, lists and strings. Download them again from the official site") from None
        reason = exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    raise DataError(f"{path} is truncated or corrupt ({reason}); download it again")
