"""A cache of decoded data sets: one uint8 ``.npy`` of images, one of labels, and a JSON card.

Decoding CIFAR-10's 60,000 PNGs costs seconds of CPU; reading the decoded arrays back costs a
fraction of a second. An entry lives in ``cache_dir`` (default ``$RESLAB_CACHE``, else
``~/.cache/reslab``), never in the data folder, which is treated as read-only.

Entries are keyed by the source's content as seen by the file system: a hash over the format,
the split, and each source file's relative path, size and modification time (``stat`` of
60,000 files takes about 0.2 s; hashing the bytes too would add seconds for PNG trees). A file
added, removed, replaced or touched gives a new key, so a stale entry is never used.

Each file of an entry is written atomically (temp file + fsync + rename), the card last: an entry
without a card is incomplete and ignored. The card holds CRC-32 checksums of both arrays, checked
on every read (about 0.1 s for CIFAR-10), so a corrupt entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from reslab.checkpoint import atomic_write_bytes
from reslab.data.dataset import ImageDataset
from reslab.data.readers import SplitSource
from reslab.errors import DataError

CACHE_FORMAT = 1
IMAGES_FILE, LABELS_FILE, CARD_FILE = "images.npy", "labels.npy", "card.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("RESLAB_CACHE") or "~/.cache/reslab").expanduser()


def source_key(source: SplitSource) -> str:
    """A hash of the format, split and (relative path, size, mtime) of every source file."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([CACHE_FORMAT, source.format, source.split]).encode())
    skip = len(str(source.location)) + 1
    for path in source.files:
        stat = os.stat(path)
        digest.update(f"{path[skip:]}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def entry_folder(source: SplitSource, cache_dir: Path, data_root: Path) -> Path:
    """The cache folder of ``source``: ``cache_dir/datasets/<format>-<split>-<key>``; it must not
    lie inside ``data_root``, the folder the user gave."""
    cache_dir = Path(cache_dir).expanduser().resolve()
    data = data_root.resolve()
    if cache_dir == data or data in cache_dir.parents:
        raise DataError(f"the cache folder {cache_dir} lies inside the data folder {data}, which must stay as it "
                        "is; pass another cache_dir (or set RESLAB_CACHE)")
    return cache_dir / "datasets" / f"{source.format}-{source.split}-{source_key(source)}"


def read_entry(folder: Path) -> ImageDataset | None:
    """The cached data set in ``folder``; None if there is none, or it is incomplete or corrupt
    (then with a warning, and the caller rebuilds it)."""
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        return None
    try:
        card = json.loads(card_path.read_text())
        images = np.load(folder / IMAGES_FILE, allow_pickle=False)
        labels = np.load(folder / LABELS_FILE, allow_pickle=False)
        if card.get("format") != CACHE_FORMAT or list(images.shape) != card["shape"] \
                or images.dtype != np.uint8 or labels.dtype != np.int64 or labels.shape != images.shape[:1]:
            raise ValueError("arrays of another shape or type than its card says")
        if _crc(images) != card["images_crc32"] or _crc(labels) != card["labels_crc32"]:
            raise ValueError("checksum mismatch")
        return ImageDataset(torch.from_numpy(images), torch.from_numpy(labels), card["classes"], card["source"])
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        warnings.warn(f"cache entry {folder} is corrupt ({exc}); rebuilding it", stacklevel=3)
        return None


def write_entry(folder: Path, dataset: ImageDataset) -> None:
    """Store ``dataset`` in ``folder``, atomically, card last. A failure to write (read-only or
    full disk) is a warning: the data set is still returned to the caller, just not cached."""
    images = np.ascontiguousarray(dataset.images.cpu().numpy())
    labels = np.ascontiguousarray(dataset.labels.cpu().numpy())
    card = {"format": CACHE_FORMAT, "source": dataset.source, "classes": dataset.classes,
            "shape": list(images.shape), "images_crc32": _crc(images), "labels_crc32": _crc(labels)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / IMAGES_FILE, _npy_bytes(images))
        atomic_write_bytes(folder / LABELS_FILE, _npy_bytes(labels))
        atomic_write_bytes(folder / CARD_FILE, json.dumps(card, indent=1).encode())
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower() + (f": {exc.filename}" if exc.filename else "")
        warnings.warn(f"could not write the data set cache in {folder} ({reason}); the data set will be decoded "
                      "again next time. Set RESLAB_CACHE to a writable folder", stacklevel=3)


def _npy_bytes(array: np.ndarray) -> memoryview:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getbuffer()


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))
