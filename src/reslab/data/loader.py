"""Batches gathered from a data set held as one tensor: reproducible, resumable, shardable.

As in airbench, there is no DataLoader and no worker process: the uint8 data set is moved to the
device once, and each batch is one gather plus whole-batch augmentation (:mod:`reslab.data.augment`).

Everything random is a pure function of the position in the stream of batches:

* epoch ``e``'s order and rank ``r``'s shard of it come from :class:`~reslab.data.sampling.EpochCursor`
  (a permutation seeded by ``(seed, e)``, every W-th sample to each of W ranks);
* batch ``b`` of epoch ``e`` on rank ``r`` is augmented from a generator seeded by
  ``(seed, e, b, r)``.

So the loader's whole state is ``{epoch, batches_done}``, and a run resumed from it, at an epoch
boundary or in the middle of one, sees exactly the batches an uninterrupted run would have seen.
Random draws are made on the CPU and moved to the device, so CPU and GPU runs agree too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from reslab.data.augment import PADDING_MODES, crop_flip, cutout_, draw_augmentation, normalize, pad_images
from reslab.data.dataset import ImageDataset
from reslab.data.sampling import EpochCursor, derived_seed, seeded_generator

__all__ = ["BatchLoader", "derived_seed", "seeded_generator"]


class BatchLoader(EpochCursor):
    """Yields ``(images, labels)``: float32 ``[B, 3, H, W]`` normalised by ``mean``/``std`` (channels_last
    memory format if asked) and int64 ``[B]``, on ``device``.

    Train mode: a new permutation each epoch, and per batch a random crop of the image padded by
    ``crop_padding`` (``padding_mode`` 'zeros', as He et al. 2016, or 'reflect', as Wide ResNets),
    a horizontal flip with probability 1/2 (``flip``) and, if ``cutout`` > 0, a ``cutout x cutout``
    square set to zero after normalisation (DeVries & Taylor 2017). ``drop_last`` defaults to True.
    With ``alternating_flip`` the flips are not a coin per image per epoch: each image is flipped
    in every other epoch, starting (epoch 0) from a seeded coin per image, so any two consecutive
    epochs show every image both ways (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", sec. 3.6).
    After ``use_small_crops(s, E)`` the first ``E`` epochs yield random ``s x s`` crops instead of
    full-size ones (a form of progressive resizing, Howard 2018: early epochs on fewer pixels
    cost less; the objects keep their scale, since the crops are cut, not resized).

    Eval mode: no augmentation, the data set's own order, every sample (``drop_last`` False).

    Iterating moves a cursor (epoch, batches done) through an endless stream of epochs: a finished
    pass moves it to the start of the next epoch; ``set_epoch(e)`` moves it to the start of epoch e
    unless it is already inside epoch e (so ``load_state_dict`` then ``set_epoch`` of the same epoch
    continues mid-epoch). Eval loaders always yield the whole set from the first batch.

    Distributed: with ``world_size`` W > 1, ``batch_size`` is the global batch and each rank yields
    ``batch_size // W`` samples per batch. In train mode each epoch's permutation is cut to a
    multiple of W (at most W - 1 samples left out, different ones each epoch) so all ranks take
    the same number of batches; in eval mode every sample is kept and shard sizes differ by at
    most one (sum correct counts over ranks).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, train: bool, mean: Sequence[float],
                 std: Sequence[float], device: str | torch.device = "cpu", crop_padding: int = 4,
                 padding_mode: str = "zeros", flip: bool = True, alternating_flip: bool = False, cutout: int = 0, seed: int = 0,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1,
                 channels_last: bool = True) -> None:
        super().__init__(len(dataset), batch_size, train=train, seed=seed, drop_last=drop_last, rank=rank,
                         world_size=world_size)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if crop_padding < 0 or cutout < 0:
            raise ValueError(f"crop_padding and cutout must be >= 0, got {crop_padding} and {cutout}")
        mean_t = torch.as_tensor(mean, dtype=torch.float32)
        std_t = torch.as_tensor(std, dtype=torch.float32)
        channels = dataset.images.shape[-1]
        if mean_t.shape != (channels,) or std_t.shape != (channels,) or not bool((std_t > 0).all()):
            raise ValueError(f"mean and std need {channels} values each, std > 0; got {tuple(mean)} and {tuple(std)}")
        if len(dataset) == 0:
            raise ValueError(f"{dataset.source or 'data set'} is empty: nothing to load")

        self.device = torch.device(device)
        self.channels_last = channels_last
        self.num_classes = dataset.num_classes
        self.height, self.width = dataset.image_size
        self.mean, self.std = mean_t.to(self.device), std_t.to(self.device)
        self.crop_padding = crop_padding if train else 0
        self.flip = flip and train
        # Alternating flips: image i is flipped in epoch e iff first_flip[i] xor (e odd).
        self.first_flip = (torch.rand(len(dataset), generator=seeded_generator(seed, -1)) < 0.5).to(device) \
            if self.flip and alternating_flip else None
        self.cutout = cutout if train else 0
        self.small_crop = (0, 0)  # (side, epochs): see use_small_crops
        # The only copy of the data kept: on the device, padded once for the crops when training.
        self.images = pad_images(dataset.images.to(self.device), self.crop_padding, padding_mode)
        self.labels = dataset.labels.to(self.device)
        if len(self) == 0:
            raise ValueError(f"no full batch of {self.batch_size} in the {self.samples_per_rank} samples of each rank of "
                             f"{dataset.source or 'the data set'}; lower batch_size or pass drop_last=False")

    def use_small_crops(self, side: int, epochs: int) -> None:
        """Yield random ``side x side`` crops in epochs ``0 .. epochs - 1`` (train mode only)."""
        if epochs < 0 or (epochs and not 0 < side <= min(self.height, self.width)):
            raise ValueError(f"small crops of {side} pixels for {epochs} epochs do not fit {self.height}x{self.width} images")
        if not self.train:
            raise ValueError("small crops are for training; an eval loader yields whole images")
        self.small_crop = (side, epochs) if epochs else (0, 0)

    # -------------------------------------------------------------------- the batches
    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.train:
            yield from self._batches(epoch=0, start=0)
            return
        epoch, start = self.next_pass()
        for batch in self._batches(epoch, start):
            self.batches_done += 1
            yield batch
        self.epoch, self.batches_done = epoch + 1, 0

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = self.epoch_indices(epoch).to(self.device)
        for b in range(start, len(self)):
            indices = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.assemble(indices, epoch, b), self.labels[indices]

    def assemble(self, indices: Tensor, epoch: int = 0, batch: int = 0) -> Tensor:
        """The normalised (and in train mode augmented) images at ``indices`` (on the device),
        augmented as batch ``batch`` of ``epoch`` on this rank."""
        params = None
        side, epochs = self.small_crop
        crop = side if epoch < epochs else None
        height, width = (crop, crop) if crop else (self.height, self.width)
        if self.train and (self.crop_padding or self.flip or self.cutout or crop):
            params = draw_augmentation(len(indices), self.height, self.width, padding=self.crop_padding,
                                       flip=self.flip, cutout=self.cutout,
                                       generator=seeded_generator(self.seed, epoch, batch, self.rank), crop=crop)
            params = params.to(self.device)
            if self.first_flip is not None:
                params.flip = self.first_flip[indices] ^ bool(epoch % 2)
            pixels = crop_flip(self.images, indices, params, height, width)
        else:
            pixels = self.images.index_select(0, indices)
        images = normalize(pixels, self.mean, self.std)
        if self.cutout:
            cutout_(images, params, self.cutout)
        return images if self.channels_last else images.contiguous()
