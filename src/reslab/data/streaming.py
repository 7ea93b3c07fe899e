"""The streaming path: image files decoded and augmented in DataLoader worker processes, per batch.

For image folders too large (or too varied in size) to hold decoded as one tensor. What stays in
memory is the file list (one byte string of relative paths plus offsets: no Python object per
image, so forked workers do not copy it page by page as they touch reference counts) and the
labels; workers decode each image straight to its crop (:mod:`reslab.data.transforms`) and stack
a batch of ``uint8``; the main process converts and normalises the batch as one tensor
(:func:`reslab.data.augment.normalize`, on the device), as the in-memory path does.

Sampling, sharding and resume are the in-memory loader's (:class:`~reslab.data.sampling.EpochCursor`):
the same seeded permutation per epoch, every W-th sample per rank, state ``{epoch, batches_done}``.
The random crop and flip of sample ``i`` in epoch ``e`` come from a generator seeded by
``(seed, e, i)``, so they do not depend on which worker decodes it, nor on where a run resumed.

A file that cannot be decoded (corrupt, truncated, not an image, a decompression bomb) does not
end the run: in training another sample, drawn from the same seeded generator, takes its place
(batches keep their size, so compiled models see one shape); in evaluation it is left out. Each
such file is named once on stderr and counted in :class:`BadImages`; past ``limit`` (a fraction
of the images) the run stops with an error that lists them.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from reslab.data.augment import normalize
from reslab.data.sampling import EpochCursor, derived_seed
from reslab.data.transforms import BadImage, read_crop
from reslab.errors import DataError

SUBSTITUTE_TRIES = 10  # draws of a replacement for an unreadable training image


class PathTable:
    """Many paths under one root as one byte string and offsets: ``table[i]`` is the i-th full path."""

    def __init__(self, root: str, paths: Sequence[str]) -> None:
        root = os.path.join(os.fspath(root), "")
        encoded = [os.fsencode(p[len(root):] if p.startswith(root) else p) for p in paths]
        self.root = root
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8) if encoded else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        relative = os.fsdecode(self.blob[self.offsets[index]:self.offsets[index + 1]].tobytes())
        return os.path.join(self.root, relative)


class BadImages:
    """The unreadable files met so far (path -> reason), shared by a run's loaders; stops the run
    with :class:`DataError` once more than ``limit`` of ``total`` images are bad."""

    def __init__(self, total: int, limit: float = 0.01, *, announce: bool = True) -> None:
        self.total, self.limit, self.announce = total, limit, announce
        self.found: dict[str, str] = {}

    @property
    def allowed(self) -> int:
        return math.floor(self.limit * self.total)

    def record(self, path: str, reason: str) -> None:
        if path in self.found:
            return
        self.found[path] = reason
        if self.announce:
            print(f"skipped unreadable image {path} ({reason}); {len(self.found)} of {self.total:,} images bad so "
                  f"far, the run stops past {self.allowed} ({self.limit:g} of them, --bad-image-limit)",
                  file=sys.stderr, flush=True)
        if len(self.found) > self.allowed:
            listed = "; ".join(f"{p} ({r})" for p, r in list(self.found.items())[:5])
            raise DataError(f"{len(self.found)} of {self.total:,} images cannot be read, more than the "
                            f"--bad-image-limit of {self.limit:g} ({self.allowed}): {listed}"
                            f"{' ...' if len(self.found) > 5 else ''}; replace or delete them, or raise --bad-image-limit")

    def state_dict(self) -> dict:
        return dict(self.found)

    def load_state_dict(self, found: dict) -> None:
        self.found.update(found)


class ImageFiles(torch.utils.data.Dataset):
    """Item ``(i, epoch)``: ``(uint8 [size, size, 3] or None, label, [(path, reason) of bad files])``.

    Training (``train=True``): the random-resized crop and flip of sample i, seeded by
    ``(seed, epoch, i)``; an unreadable sample is replaced by another drawn from that generator.
    Evaluation: the centre crop; an unreadable sample gives None (left out of its batch)."""

    def __init__(self, paths: PathTable, labels: np.ndarray, size: int, *, train: bool, flip: bool = True,
                 seed: int = 0) -> None:
        self.paths, self.labels, self.size = paths, labels, size
        self.train, self.flip, self.seed = train, flip, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray | None, int, list[tuple[str, str]]]:
        index, epoch = key
        bad: list[tuple[str, str]] = []
        rng = random.Random(derived_seed(self.seed, epoch, index)) if self.train else None
        for _ in range(SUBSTITUTE_TRIES if self.train else 1):
            path = self.paths[index]
            try:
                return read_crop(path, self.size, rng=rng, flip=self.flip), int(self.labels[index]), bad
            except BadImage as exc:
                bad.append((path, str(exc)))
                if rng is not None:
                    index = rng.randrange(len(self.paths))
        return None, -1, bad


def collate(items: list[tuple[np.ndarray | None, int, list]]) -> tuple[Tensor, Tensor, list[tuple[str, str]]]:
    """Stack the readable items: ``uint8 [B, H, W, 3]``, ``int64 [B]``, and every bad file met."""
    good = [(pixels, label) for pixels, label, _ in items if pixels is not None]
    bad = [entry for _, _, found in items for entry in found]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), bad
    pixels = torch.from_numpy(np.stack([p for p, _ in good]))
    return pixels, torch.tensor([label for _, label in good], dtype=torch.int64), bad


class _PassSampler:
    """The DataLoader's batch sampler: the ``(index, epoch)`` keys of the batches of the pass set last."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []
        self.epoch = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for indices in self.batches:
            yield [(i, self.epoch) for i in indices.tolist()]

    def __len__(self) -> int:
        return len(self.batches)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # a worker runs Pillow; torch threads would only compete with training
    # Ctrl-C and a SIGTERM sent to the whole process group (a terminal, a batch scheduler) are the
    # training process's to handle: it finishes its step and saves a checkpoint, then shuts the
    # workers down. A worker killed by them first would fail that step instead.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.SIG_IGN)


class StreamingLoader(EpochCursor):
    """Yields ``(images, labels)`` as :class:`~reslab.data.loader.BatchLoader` does (float32
    ``[B, 3, size, size]`` normalised, channels_last if asked, and int64 ``[B]``, on ``device``),
    from image files decoded in ``workers`` processes (0: in this process).

    Train mode: random-resized crops and flips; eval mode: resize and centre crop. Sharding,
    ``set_epoch``, ``state_dict`` and mid-epoch resume as :class:`~reslab.data.sampling.EpochCursor`.
    """

    def __init__(self, paths: PathTable, labels: Sequence[int] | np.ndarray, classes: Sequence[str], batch_size: int, *,
                 train: bool, image_size: int, mean: Sequence[float], std: Sequence[float],
                 device: str | torch.device = "cpu", flip: bool = True, seed: int = 0, drop_last: bool | None = None,
                 rank: int = 0, world_size: int = 1, channels_last: bool = True, workers: int = 0,
                 bad_images: BadImages | None = None, source: str = "") -> None:
        super().__init__(len(paths), batch_size, train=train, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size)
        if len(paths) == 0:
            raise ValueError(f"{source or 'data set'} is empty: nothing to load")
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.height = self.width = image_size
        self.device = torch.device(device)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(self.device)
        self.channels_last = channels_last
        self.small_crop = (0, 0)  # the in-memory path's progressive crops do not apply here
        self.flip = flip and train
        self.workers = workers
        self.source = source
        self.bad_images = bad_images if bad_images is not None else BadImages(len(paths))
        self.dataset = ImageFiles(paths, self.labels, image_size, train=train, flip=flip, seed=seed)
        self._sampler = _PassSampler()
        self._loader: torch.utils.data.DataLoader | None = None
        if len(self) == 0:
            raise ValueError(f"no full batch of {self.batch_size} in the {self.samples_per_rank} samples of each rank of "
                             f"{source or 'the data set'}; lower batch_size")

    def state_dict(self) -> dict:
        """The position in the stream and the unreadable files found so far, so that a resumed run
        keeps counting them towards ``--bad-image-limit`` instead of starting again from zero."""
        return {**super().state_dict(), "bad_images": self.bad_images.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.bad_images.load_state_dict(state.get("bad_images", {}))  # checkpoints written before this record have none

    def use_small_crops(self, side: int, epochs: int) -> None:
        """The in-memory path's small-crop phase (the ``fast`` recipe's first epochs at ``side``
        pixels) has no meaning here: streaming trains on random-resized crops of the image size,
        which already vary the scale. Say so once instead of refusing the recipe."""
        if epochs:
            print(f"note: the {side}x{side} crops of the first {epochs} epochs (--small-crop) apply to the in-memory "
                  "path only; streaming trains on random-resized crops of the image size throughout", file=sys.stderr)

    def _data_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            persistent = self.train and self.workers > 0  # training passes follow each other; evaluation is rarer
            self._loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self._sampler, num_workers=self.workers, collate_fn=collate,
                pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init if self.workers else None,
                persistent_workers=persistent, prefetch_factor=4 if self.workers else None)
        return self._loader

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, start = self.next_pass()
        self._sampler.epoch, self._sampler.batches = epoch, self.batch_indices(epoch, start)
        for pixels, labels, bad in self._data_loader():
            for path, reason in bad:
                self.bad_images.record(path, reason)
            if self.train:
                self.batches_done += 1
            if len(labels):
                yield self.assemble(pixels), labels.to(self.device, non_blocking=True)
        if self.train:
            self.epoch, self.batches_done = epoch + 1, 0

    def assemble(self, pixels: Tensor) -> Tensor:
        """uint8 ``[B, H, W, 3]`` -> normalised float32 ``[B, 3, H, W]`` on the device."""
        images = normalize(pixels.to(self.device, non_blocking=True), self.mean, self.std)
        return images if self.channels_last else images.contiguous()

    def sample_images(self, count: int) -> Tensor:
        """uint8 ``[n, size, size, 3]``: the centre crops of up to ``count`` evenly spaced images
        (for what looks at the data, e.g. a whitened stem), decoded here."""
        chosen = np.linspace(0, self.num_examples - 1, min(count, self.num_examples)).round().astype(int)
        crops = []
        for i in chosen:
            try:
                crops.append(read_crop(self.dataset.paths[int(i)], self.height))
            except BadImage:
                continue
        return torch.from_numpy(np.stack(crops))


def auto_workers(world_size_on_node: int = 1) -> int:
    """Worker processes per rank: the cores this rank's share leaves after its training thread, 1 to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores // max(1, world_size_on_node) - 1))
