"""Find the data set a path holds, in which format, and read one split of it.

Formats, detected from what the folder contains:

* ``cifar10-python`` / ``cifar100-python``: the official pickled batches (``cifar-10-batches-py``,
  ``cifar-100-python``), read by :mod:`reslab.data.cifar`;
* ``cifar10-binary`` / ``cifar100-binary``: the official binary files (``cifar-10-batches-bin``,
  ``cifar-100-binary``), also :mod:`reslab.data.cifar`;
* ``class-folders``: ``PATH/<split>/<class>/<image>`` (or ``PATH`` a split folder itself), any image
  Pillow reads. Classes are the sorted folder names; images are read in sorted file order.
  Every image must have the size of the first one (another size is an error naming the file);
  an image of another mode (grey, palette, RGBA, CMYK) is converted to RGB, dropping alpha; one of
  more than 8 bits per channel (16-bit grey, 32-bit integer or float) is an error, as converting
  it would clip its pixels.
  Hidden files (``.name``), files whose suffix is not one Pillow opens (``notes.txt``) and
  sub-folders of class folders are skipped, and counted (``SplitSource.skipped``).

A folder that holds one of the official folders (as an extracted archive does) is read through it.
Decoding runs on every core (a process per core, over chunks of files) with a progress bar.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reslab.data.dataset import ImageDataset
from reslab.data.progress import progress_bar
from reslab.errors import DataError
from reslab.inference.preprocess import readable_extensions

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
PARALLEL_MIN_FILES = 2000  # below this, starting worker processes costs more than it saves
CHUNK_FILES = 500


@dataclass
class SplitSource:
    """One split of a data set on disk: its format, where it is, and the files its content comes from."""

    format: str
    location: Path
    split: str
    files: list[str]  # paths; the cache key is computed over their names, sizes and times
    reader: Callable[["SplitSource", bool], ImageDataset] = field(repr=False)
    classes: list[str] = field(default_factory=list)  # class-folder format: the folder names
    labels: list[int] = field(default_factory=list)  # class-folder format: the label of each file
    skipped: dict[str, int] = field(default_factory=dict)  # class-folder format: files left out, by reason

    def read(self, progress: bool = True) -> ImageDataset:
        return self.reader(self, progress)


def find_source(path: Path, split: str) -> SplitSource:
    """The split ``split`` of the data set at ``path`` (a file or folder that exists)."""
    from reslab.data.cifar import find_cifar  # imported here: cifar builds on SplitSource

    if not path.is_dir():
        raise DataError(f"{path} is not a folder; pass a data set folder (class folders or an extracted CIFAR archive)")
    return find_cifar(path, split) or class_folder_source(path, split)


@dataclass
class Splits:
    """A data set's splits on disk: ``test`` is ``test/`` (else ``val/``), None for a single folder
    of class folders (hold images out with ``--val``); ``val`` is ``val/`` when ``test/`` exists too."""

    train: SplitSource
    test: SplitSource | None
    val: SplitSource | None

    def check_classes(self) -> None:
        """A split whose classes differ from the training split's is an error (its labels would be wrong)."""
        for source in (self.test, self.val):
            if source is None or source.classes == self.train.classes:
                continue
            extra = sorted(set(source.classes) - set(self.train.classes))
            missing = sorted(set(self.train.classes) - set(source.classes))
            what = (f"has classes that {self.train.location} lacks: {', '.join(extra[:5])}" if extra
                    else f"lacks classes of {self.train.location}: {', '.join(missing[:5])}")
            raise DataError(f"{source.location} {what}; every split needs the same class folders")


def find_splits(path: Path) -> Splits:
    """The splits of the data set at ``path`` (see :class:`Splits`)."""
    train = find_source(path, "train")
    if train.format != "class-folders":
        return Splits(train, find_source(path, "test"), None)
    present = [name for name in ("test", "val") if (path / name).is_dir()]
    if not present:
        return Splits(train, None, None)
    test = class_folder_source(path, present[0])
    val = class_folder_source(path, "val") if present == ["test", "val"] else None
    return Splits(train, test, val)


# ------------------------------------------------------------------------------------------
# Class folders


def split_folder(root: Path, split: str) -> Path:
    """``root/split`` if there is one; ``root`` itself if it is a split folder (holds class folders)."""
    if (root / split).is_dir():
        return root / split
    present = [name for name in SPLIT_NAMES if (root / name).is_dir()]
    if present:
        raise DataError(f"{root} has no '{split}' split folder (it has: {', '.join(present)}); "
                        f"add {root / split}/<class>/<images> or ask for another split")
    if root.name in SPLIT_NAMES and root.name != split:
        raise DataError(f"{root} is the '{root.name}' split but split '{split}' was asked; pass its parent folder "
                        f"{root.parent}, which should hold {split}/")
    return root


def class_folder_source(root: Path, split: str) -> SplitSource:
    folder = split_folder(root, split)
    class_dirs = sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")),
                        key=lambda e: e.name)
    if not class_dirs:
        raise DataError(f"{folder} has no class folders; expected {folder}/<class name>/<image files> "
                        "or an extracted official CIFAR archive")
    files: list[str] = []
    labels: list[int] = []
    skipped = {"hidden": 0, "not an image": 0}
    suffixes = readable_extensions()
    for label, class_dir in enumerate(class_dirs):
        images = []
        for entry in os.scandir(class_dir.path):
            if not entry.is_file():
                continue
            if entry.name.startswith("."):
                skipped["hidden"] += 1
            elif os.path.splitext(entry.name)[1].lower() not in suffixes:
                skipped["not an image"] += 1
            else:
                images.append(entry.path)
        if not images:
            raise DataError(f"class folder {class_dir.path} holds no image files; add images or delete the folder")
        files += sorted(images)
        labels += [label] * len(images)
    return SplitSource("class-folders", folder, split, files, read_class_folders,
                       classes=[e.name for e in class_dirs], labels=labels, skipped=skipped)


def read_class_folders(source: SplitSource, progress: bool = True) -> ImageDataset:
    first = decode_image(source.files[0])
    size = first.shape[:2]
    images = np.empty((len(source.files), *size, 3), dtype=np.uint8)
    chunks = [source.files[i:i + CHUNK_FILES] for i in range(0, len(source.files), CHUNK_FILES)]
    with progress_bar(len(source.files), f"decoding {source.location}", unit="image", enabled=progress) as bar:
        for start, block in zip(range(0, len(source.files), CHUNK_FILES), _decode_chunks(chunks, size)):
            images[start:start + len(block)] = block
            bar.update(len(block))
    return ImageDataset(torch.from_numpy(images), torch.tensor(source.labels, dtype=torch.int64),
                        source.classes, str(source.location))


def _decode_chunks(chunks: list[list[str]], size: tuple[int, int]):
    workers = min(os.cpu_count() or 1, len(chunks))
    if sum(map(len, chunks)) < PARALLEL_MIN_FILES or workers < 2:
        for chunk in chunks:
            yield decode_images(chunk, size)
        return
    # fork: workers start in milliseconds and need not re-import torch (Linux's default before 3.14)
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield from pool.map(decode_images, chunks, [size] * len(chunks))


def decode_images(paths: list[str], size: tuple[int, int]) -> np.ndarray:
    """``uint8 [len(paths), H, W, 3]``; every image must be ``size`` = (H, W)."""
    out = np.empty((len(paths), *size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = decode_image(path)
        if image.shape[:2] != tuple(size):
            raise DataError(f"{path} is {image.shape[1]}x{image.shape[0]} pixels but the data set's images are "
                            f"{size[1]}x{size[0]}; resize it or remove it")
        out[i] = image
    return out


def decode_image(path: str) -> np.ndarray:
    """One image file as ``uint8 [H, W, 3]`` RGB."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # Pillow's RGB conversion would clip them
                raise DataError(f"{path} has pixels of more than 8 bits (Pillow mode {image.mode}), which 8-bit RGB "
                                "would clip; convert it to 8-bit RGB or delete it")
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except DataError:
        raise
    except Exception as exc:  # Pillow raises many kinds for broken files; name the file whatever it is
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # permission denied, an I/O error: the file system's, not the file's fault (one line in the cli)
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path} cannot be read as an image ({reason}); replace or delete it") from None
