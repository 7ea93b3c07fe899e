"""Batched CIFAR augmentation with tensor ops: random crop of a padded image, horizontal flip, cutout.

The standard CIFAR augmentation of He et al. (2016), "Deep Residual Learning for Image
Recognition", Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is randomly sampled
from the padded image or its horizontal flip" (Wide ResNets, Zagoruyko & Komodakis 2016, pad by
reflection instead of zeros). Cutout (DeVries & Taylor 2017, "Improved Regularization of
Convolutional Neural Networks with Cutout") masks one square per image.

How it is fast: the data set is padded once (zeros or reflection), and a whole batch's crops and
flips are ONE ``index_select`` of pixels from the padded uint8 tensor: each output pixel's source
row is ``((image * Hp) + dy + y) * Wp + dx + x`` (``W - 1 - x`` for a flipped image). No per-image
Python, no float work before the crop; the float conversion and normalisation come after.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PADDING_MODES = ("zeros", "reflect")


def pad_images(images: Tensor, padding: int, mode: str = "zeros") -> Tensor:
    """``[N, H, W, C]`` -> ``[N, H + 2p, W + 2p, C]``, padded with zeros or by reflection
    (without repeating the edge pixel, as ``torch.nn.functional.pad(mode='reflect')``)."""
    if padding == 0:
        return images
    n, h, w, c = images.shape
    if mode == "zeros":
        padded = images.new_zeros(n, h + 2 * padding, w + 2 * padding, c)
        padded[:, padding:padding + h, padding:padding + w] = images
        return padded
    if mode == "reflect":
        if padding >= min(h, w):  # no reflection of the image exists that far out
            raise ValueError(f"reflect padding {padding} needs images larger than {padding} pixels, got {h}x{w}")
        rows, cols = _reflected(h, padding, images.device), _reflected(w, padding, images.device)
        return images.index_select(1, rows).index_select(2, cols).contiguous()
    raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {mode!r}")


def _reflected(size: int, padding: int, device: torch.device) -> Tensor:
    """Source index of each position -p..size+p-1 under reflection about the first and last pixel."""
    positions = torch.arange(-padding, size + padding, device=device).abs()
    return torch.where(positions >= size, 2 * (size - 1) - positions, positions)


@dataclass
class AugmentParams:
    """One batch's random draws: crop offsets into the padded image, flips, cutout centres."""

    shift_y: Tensor  # int64 [B] in [0, 2p]: top row of the crop in the padded image
    shift_x: Tensor  # int64 [B] in [0, 2p]
    flip: Tensor  # bool [B]
    cutout_y: Tensor | None = None  # int64 [B] in [0, H): centre of the cutout square
    cutout_x: Tensor | None = None

    def to(self, device: torch.device) -> "AugmentParams":
        fields = (self.shift_y, self.shift_x, self.flip, self.cutout_y, self.cutout_x)
        return AugmentParams(*(None if t is None else t.to(device) for t in fields))


def draw_augmentation(batch: int, height: int, width: int, *, padding: int, flip: bool, cutout: int,
                      generator: torch.Generator, crop: int | None = None) -> AugmentParams:
    """Random crop offsets, flips and cutout centres for ``batch`` images, drawn on the CPU from
    ``generator`` (so a given generator state gives the same augmentation on every device).

    The crops are ``height x width`` (the image size) unless ``crop`` asks for ``crop x crop``
    squares; either way their offsets range over every position inside the padded image, and
    cutout centres over the crop."""
    crop_h, crop_w = (height, width) if crop is None else (crop, crop)
    if not 0 < crop_h <= height or not 0 < crop_w <= width:
        raise ValueError(f"a crop of {crop_h}x{crop_w} does not fit in a {height}x{width} image")
    shift_y = torch.randint(0, 2 * padding + height - crop_h + 1, (batch,), generator=generator)
    shift_x = torch.randint(0, 2 * padding + width - crop_w + 1, (batch,), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5 if flip else torch.zeros(batch, dtype=torch.bool)
    params = AugmentParams(shift_y, shift_x, flips)
    if cutout:
        params.cutout_y = torch.randint(0, crop_h, (batch,), generator=generator)
        params.cutout_x = torch.randint(0, crop_w, (batch,), generator=generator)
    return params


def crop_flip(padded: Tensor, indices: Tensor, params: AugmentParams, height: int, width: int) -> Tensor:
    """Gather images ``indices`` of ``padded`` ``[N, Hp, Wp, C]``, each cropped to ``height x width``
    at its offset and flipped left-right (along the width axis) where ``params.flip``: uint8 ``[B, H, W, C]``."""
    _, padded_h, padded_w, channels = padded.shape
    device = padded.device
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    rows = params.shift_y[:, None] + ys  # [B, H]
    cols = params.shift_x[:, None] + torch.where(params.flip[:, None], width - 1 - xs, xs)  # [B, W]
    source = (indices[:, None, None] * padded_h + rows[:, :, None]) * padded_w + cols[:, None, :]
    pixels = padded.view(-1, channels).index_select(0, source.reshape(-1))
    return pixels.view(len(indices), height, width, channels)


def cutout_(images: Tensor, params: AugmentParams, size: int) -> Tensor:
    """Zero a ``size x size`` square centred at each image's cutout centre (clipped at the border),
    in place on normalised images ``[B, C, H, W]``: after normalisation zero is the data set's
    mean colour, as in DeVries & Taylor's code (Cutout applied after Normalize)."""
    height, width = images.shape[-2:]
    ys = torch.arange(height, device=images.device)
    xs = torch.arange(width, device=images.device)
    top = params.cutout_y[:, None] - size // 2
    left = params.cutout_x[:, None] - size // 2
    inside_y = (ys >= top) & (ys < top + size)  # [B, H]
    inside_x = (xs >= left) & (xs < left + size)  # [B, W]
    keep = (~(inside_y[:, :, None] & inside_x[:, None, :])).to(images.dtype)  # [B, H, W]
    # multiply in the NHWC order of channels_last images (the fastest broadcast there)
    images.permute(0, 2, 3, 1).mul_(keep[..., None])
    return images


def normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, C, H, W]`` ``(x / 255 - mean) / std``, in channels_last
    memory format (the NHWC bytes permuted: no copy beyond the float conversion)."""
    scale = (1.0 / (255.0 * std)).view(1, -1, 1, 1)
    shift = (mean / std).view(1, -1, 1, 1)
    return images.permute(0, 3, 1, 2).float().mul_(scale).sub_(shift)
