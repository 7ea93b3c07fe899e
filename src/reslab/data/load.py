"""``load_dataset``: one split of a data set from a path, through the cache, downloading if asked."""

from __future__ import annotations

import os
from pathlib import Path

from reslab.data.cache import default_cache_dir, entry_folder, read_entry, write_entry
from reslab.data.dataset import ImageDataset
from reslab.data.download import dataset_name, download_cifar
from reslab.data.readers import SplitSource, find_source
from reslab.errors import DataError


def load_dataset(path: str | os.PathLike, split: str = "train", *, cache_dir: Path | None = None,
                 download: bool = False, progress: bool = True, cache: bool = True) -> ImageDataset:
    """Split ``split`` ('train', 'test', ...) of the data set at ``path``, as an :class:`ImageDataset`.

    ``path`` is a class-folder tree (``train/<class>/<images>``, ``test/...``), a split folder, or
    an official CIFAR-10/100 folder in the python or binary version (or a folder holding one, as
    extracted); see :mod:`reslab.data.readers`. The decoded arrays are cached in ``cache_dir``
    (default ``$RESLAB_CACHE`` or ``~/.cache/reslab``; ``cache=False`` skips the cache), so only
    the first load decodes: see :mod:`reslab.data.cache`.

    ``download=True``: if ``path`` does not exist or is an empty folder, the official CIFAR-10 or
    CIFAR-100 archive, chosen by the folder's name (``cifar10``, ``cifar-100``, ...), is downloaded
    and extracted into it first (:mod:`reslab.data.download`). In distributed runs, load on one
    rank first so that the others find it there.
    """
    path = prepare_folder(path, download=download, progress=progress)
    return load_source(find_source(path, split), path, cache_dir=cache_dir, progress=progress, cache=cache)


def prepare_folder(path: str | os.PathLike, *, download: bool = False, progress: bool = True) -> Path:
    """``path`` as a Path that exists, CIFAR downloaded into it first if asked and it is empty."""
    path = Path(path).expanduser()
    if download and _is_empty(path):
        download_cifar(dataset_name(path), path, progress=progress)
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a data set folder (train/<class>/<images>, test/..., or an "
                        "extracted official CIFAR archive), or download CIFAR-10/100 into it (`reslab train "
                        "--download`, or download=True in Python)")
    return path


def load_source(source: SplitSource, path: Path, *, cache_dir: Path | None = None, progress: bool = True,
                cache: bool = True) -> ImageDataset:
    """The data set of a split already found at ``path`` (:func:`~reslab.data.readers.find_source`), through the cache."""
    if not cache:
        return source.read(progress)
    entry = entry_folder(source, Path(cache_dir) if cache_dir is not None else default_cache_dir(), path)
    dataset = read_entry(entry)
    if dataset is None:
        dataset = source.read(progress)
        write_entry(entry, dataset)
    dataset.source = str(source.location)
    return dataset


def _is_empty(path: Path) -> bool:
    """True for a path that does not exist or a folder holding nothing but hidden files."""
    return not path.exists() or (path.is_dir() and all(name.startswith(".") for name in os.listdir(path)))
