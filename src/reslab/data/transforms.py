"""Decode one image file straight to a training or evaluation crop, with Pillow.

The ImageNet transforms of torchvision's reference recipe (Szegedy et al. 2015, "Going Deeper
with Convolutions", sec. 6, for the scale-and-aspect random crop; He et al. 2015 train with it):

* training: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))``, a box of 8-100% of
  the image's area and of aspect 3/4..4/3 (log-uniform), resized to ``size x size``, then a
  horizontal flip with probability 1/2;
* evaluation: ``Resize(resize) + CenterCrop(size)``, resize = size / 0.875 (256 for 224; small
  inputs up to 64 px keep the whole image: :func:`reslab.inference.preprocess.default_resize_size`).

Both are a box of the image resized to ``size x size`` in one ``Image.resize(box=...)`` (bilinear
with Pillow's antialiasing, as torchvision's PIL path), so only the box's pixels are resampled.
A JPEG is decoded at 1/2, 1/4 or 1/8 scale (``Image.draft``, the DCT-domain reduction of libjpeg)
whenever the box stays at least ``size`` pixels a side at that scale: a 2000x1500 photo cropped to
224 decodes at a quarter of the cost (measured in experiments/streaming).

Any mode (grey, palette, RGBA composited on white, CMYK, 16-bit) becomes 8-bit RGB and EXIF
orientation is applied, both as in :func:`reslab.inference.preprocess.load_image`. An image
whose declared size exceeds ``PIL.Image.MAX_IMAGE_PIXELS`` is refused before decoding
(a decompression bomb); any failure raises :class:`BadImage` with a one-line reason.
"""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps

from reslab.inference.preprocess import default_resize_size, to_rgb

SCALE = (0.08, 1.0)  # RandomResizedCrop's share of the image area
RATIO = (3 / 4, 4 / 3)  # and its aspect ratios (width / height)
USE_DRAFT = True  # False decodes every JPEG at full size (benchmarks/stream_throughput.py measures the difference)
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
Box = tuple[float, float, float, float]  # left, top, right, bottom in pixels of the oriented image


class BadImage(Exception):
    """A file that cannot be used as an image; ``str()`` is the reason."""


def random_resized_box(width: int, height: int, rng: random.Random, scale: tuple[float, float] = SCALE,
                       ratio: tuple[float, float] = RATIO) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``: ten tries at a box of random area and aspect
    inside the image, else the largest centred box of an allowed aspect."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_box(width: int, height: int, size: int, resize: int) -> Box:
    """The box that ``Resize(resize)`` (shorter side) then ``CenterCrop(size)`` keeps, in pixels of the image.

    :meth:`reslab.inference.preprocess.Preprocess.resize_and_crop` takes the same crop in
    torchvision's two steps (resize the whole image, crop whole pixels); streaming cuts this box and
    resizes it in one resampling instead, so that a JPEG can be decoded at a reduced scale first.
    The two keep the same region to within a pixel, not bit for bit."""
    side = min(width, height) * size / resize
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def read_crop(path: str, size: int, *, rng: random.Random | None = None, flip: bool = False) -> np.ndarray:
    """``uint8 [size, size, 3]`` RGB: a random-resized crop (and, with ``flip``, a coin-flip mirror)
    when ``rng`` is given, else the evaluation centre crop. Raises :class:`BadImage`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with the reason
            image = Image.open(path)
        with image:
            width, height = image.size
            if width * height > (Image.MAX_IMAGE_PIXELS or math.inf):
                raise BadImage(f"{width}x{height} pixels, more than PIL.Image.MAX_IMAGE_PIXELS "
                               f"({Image.MAX_IMAGE_PIXELS:,}): refused as a possible decompression bomb")
            swapped = image.getexif().get(ExifTags.Base.Orientation) in TRANSPOSING_ORIENTATIONS
            oriented = (height, width) if swapped else (width, height)
            box = (random_resized_box(*oriented, rng) if rng is not None
                   else centre_box(*oriented, size, default_resize_size(size)))
            # JPEG: decode at the smallest 1/2^k scale that keeps the box at least `size` px a side.
            reduction = min(box[2] - box[0], box[3] - box[1]) / size
            if USE_DRAFT and image.format == "JPEG" and reduction >= 2:
                image.draft(None, (math.ceil(width / reduction), math.ceil(height / reduction)))
            image.load()
            drafted = image.size[::-1] if swapped else image.size
            ImageOps.exif_transpose(image, in_place=True)
            rgb = image if image.mode == "RGB" else to_rgb(image)  # convert() would copy an RGB image
            sx, sy = drafted[0] / oriented[0], drafted[1] / oriented[1]
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            pixels = np.array(rgb.resize((size, size), Image.Resampling.BILINEAR, box=box), dtype=np.uint8)
    except BadImage:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds (OSError, SyntaxError, DecompressionBombError...)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        raise BadImage(f"{type(exc).__name__}: {(reason or 'unreadable')[:200]}") from None
    if flip and rng is not None and rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return np.ascontiguousarray(pixels)
