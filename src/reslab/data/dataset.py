"""A labelled image data set held as one uint8 tensor, and the ways to cut it up.

The whole data set is one ``uint8`` tensor ``[N, H, W, C]`` (NHWC, the layout images are decoded
in) plus an ``int64`` label vector, as in airbench: CIFAR-10's 50,000 training images take 150 MB,
so they live in memory (or on the accelerator) and batches are gathered from them directly.

The validation split follows He et al. (2016), "Deep Residual Learning for Image Recognition",
Sec. 4.2: 45k/5k train/val split of CIFAR-10's training set, here drawn class-balanced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reslab.errors import DataError


@dataclass
class ImageDataset:
    """Images ``uint8 [N, H, W, 3]`` (contiguous), labels ``int64 [N]`` in ``[0, len(classes))``."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        where = self.source or "data set"
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[-1] != 3:
            raise DataError(f"{where}: images must be uint8 [N, H, W, 3], got {self.images.dtype} "
                            f"{list(self.images.shape)}")
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(f"{where}: {len(self.images)} images but labels of shape {list(self.labels.shape)}")
        if not self.classes:
            raise DataError(f"{where}: no class names")
        self.images = self.images.contiguous()
        self.labels = self.labels.to(torch.int64)
        self.classes = list(self.classes)
        if len(self.labels) and (int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.classes)):
            raise DataError(f"{where}: labels must lie in [0, {len(self.classes)}), "
                            f"found {int(self.labels.min())}..{int(self.labels.max())}")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"ImageDataset({len(self)} image{'' if len(self) == 1 else 's'} of {self.image_size[0]}x{self.image_size[1]}, "
                f"{self.num_classes} class{'' if self.num_classes == 1 else 'es'}, source={self.source!r})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def class_counts(self) -> list[int]:
        """Number of images of each class, in class order."""
        return torch.bincount(self.labels.cpu(), minlength=self.num_classes).tolist()

    def subset(self, indices: torch.Tensor | Sequence[int]) -> "ImageDataset":
        """The images at ``indices`` (in that order), same classes and source."""
        indices = torch.as_tensor(indices, dtype=torch.int64, device=self.labels.device)
        return ImageDataset(self.images[indices], self.labels[indices], self.classes, self.source)


def balanced_indices(labels: torch.Tensor, n: int, classes: Sequence[str], seed: int = 0,
                     source: str = "data set") -> torch.Tensor:
    """Sorted indices of ``n`` samples, ``n // len(classes)`` drawn at random from each class; the
    ``n % len(classes)`` left over go one each to the first classes in class order."""
    labels = labels.cpu()
    if not 0 <= n <= len(labels):
        raise DataError(f"{source}: cannot take {n} of its {len(labels)} images")
    generator = torch.Generator().manual_seed(seed)
    per_class, extra = divmod(n, len(classes))
    chosen = []
    for c, name in enumerate(classes):
        members = (labels == c).nonzero().squeeze(1)
        want = per_class + (c < extra)
        if len(members) < want:
            raise DataError(f"{source}: class {name!r} has {len(members)} images, fewer than the {want} asked "
                            f"for a class-balanced subset of {n}; ask for fewer")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:want]])
    return torch.cat(chosen).sort().values


def balanced_subset(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """``n`` images, as many of each class as possible (see :func:`balanced_indices`), in data-set order."""
    return dataset.subset(balanced_indices(dataset.labels, n, dataset.classes, seed, dataset.source))


def split_validation(dataset: ImageDataset, n_val: int, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(train, val): a class-balanced random ``n_val`` images held out, the rest kept for training.

    He et al. (2016) Sec. 4.2 train on 45k and validate on 5k of CIFAR-10's 50k training images:
    ``split_validation(train, 5000)``. The two parts are disjoint and together cover ``dataset``.
    """
    if n_val >= len(dataset):
        raise DataError(f"{dataset.source or 'data set'}: a validation split of {n_val} images leaves none of its "
                        f"{len(dataset)} training images to train on; hold out fewer (He et al. 2016: 5000 of 50000)")
    val = balanced_indices(dataset.labels, n_val, dataset.classes, seed, dataset.source)
    keep = torch.ones(len(dataset), dtype=torch.bool)
    keep[val] = False
    train = dataset.subset(keep.nonzero().squeeze(1))
    emptied = [name for name, count in zip(dataset.classes, train.class_counts()) if count == 0]
    if emptied:
        raise DataError(f"{dataset.source or 'data set'}: a validation split of {n_val} images leaves class "
                        f"{emptied[0]!r} no training images; hold out fewer")
    return train, dataset.subset(val)


def channel_stats(dataset: ImageDataset, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation over every pixel, in [0, 1] units.

    Exact: computed from each channel's histogram of the 256 byte values (counted chunk by chunk,
    one byte per pixel of extra memory), so no float round-off accumulates over 51 million pixels.
    The std is the population std over pixels, the convention of the published CIFAR figures
    (0.2470, 0.2435, 0.2616 for CIFAR-10's training set).
    """
    if len(dataset) == 0:
        raise DataError(f"{dataset.source or 'data set'}: no images to compute channel statistics of")
    channels = dataset.images.shape[-1]
    histogram = torch.zeros(channels, 256, dtype=torch.int64)
    for start in range(0, len(dataset), chunk):
        planes = dataset.images[start:start + chunk].permute(3, 0, 1, 2).reshape(channels, -1).cpu()
        for c in range(channels):
            histogram[c] += torch.bincount(planes[c], minlength=256)
    values = torch.arange(256, dtype=torch.float64)
    count = histogram[0].sum().double()
    mean = (histogram.double() * values).sum(1) / count
    var = (histogram.double() * values**2).sum(1) / count - mean**2
    mean, std = mean / 255, var.clamp_min(0).sqrt() / 255
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
