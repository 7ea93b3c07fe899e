"""Turn image files into the tensors a model was trained on.

Any image Pillow can decode is converted to 8-bit RGB (palette, greyscale, CMYK, 16-bit and
float images; transparent pixels are composited onto white; EXIF rotation applied), resized
so that its shorter side is ``resize_size`` and centre-cropped to ``input_size`` (the usual
evaluation transform, e.g. torchvision's ``Resize(256) + CenterCrop(224)``), then normalised
with the model card's mean and standard deviation.

``resize_size`` follows from the input size: models trained on small images (CIFAR's 32x32,
up to 64x64) saw the whole image, so the shorter side is resized to the input size itself;
larger inputs use the ImageNet ratio 224/256 (crop 87.5% of the shorter side).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from reslab.errors import DataError

SMALL_IMAGE_MAX = 64  # up to this input size a model saw whole images (no crop margin)
IMAGENET_CROP_FRACTION = 224 / 256
WHITE = (255, 255, 255)


class ImageReadError(DataError):
    """A file that Pillow cannot decode as an image."""


def default_resize_size(input_size: int) -> int:
    """The shorter side before the centre crop: the input size for small images, else input / 0.875."""
    return input_size if input_size <= SMALL_IMAGE_MAX else round(input_size / IMAGENET_CROP_FRACTION)


def readable_extensions() -> set[str]:
    """File suffixes (lower case, with the dot) of the formats Pillow can open."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def path_list(paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> list[Path]:
    """``paths`` as a list of Paths: one path (str or Path) is a list of one, not of its characters."""
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def find_images(inputs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> list[Path]:
    """The image files named in ``inputs`` (one path or several): files as given, folders
    walked recursively.

    In folders only files with an image suffix are taken (hidden files and folders are
    skipped), in sorted order; a file named explicitly is taken whatever its suffix.
    """
    suffixes = readable_extensions()
    found: list[Path] = []
    for item in path_list(inputs):
        if item.is_dir():
            in_folder = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                               and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not in_folder:
                raise DataError(f"no image files in folder {item} (looked for {', '.join(sorted(suffixes)[:8])}, ...)")
            found.extend(in_folder)
        elif item.is_file():
            found.append(item)
        else:
            raise DataError(f"no such file or folder: {item}")
    return found


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of ``image`` whatever its mode (see the module docstring)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_grey(image)
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_grey(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float greyscale to 8-bit 'L', scaled rather than clipped.

    16-bit modes span 0..65535; 32-bit integer images are taken as 16-bit when their maximum
    exceeds 255; float images as 0..1 when their maximum is at most 1, else 0..255.
    """
    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        scale = 255.0 / 65535.0
    elif image.mode == "F" and peak <= 1.0:
        scale = 255.0
    else:
        scale = 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def load_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Decode ``path`` as an RGB image, or raise :class:`ImageReadError` naming it."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            image.load()
            return to_rgb(image)
    # Pillow's decoders raise many exception types (OSError, SyntaxError, ValueError, struct.error,
    # DecompressionBombError, ...); each one here means "this file is not an image we can read".
    except Exception as exc:  # noqa: BLE001
        if isinstance(exc, OSError) and exc.strerror:  # permission denied...: the reason, not "[Errno 13] ...: 'path'"
            reason = exc.strerror[:1].lower() + exc.strerror[1:]
        else:
            reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageReadError(f"cannot read {path} as an image ({reason[:200]})") from None


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1] and normalise per channel."""

    input_size: int
    resize_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.input_size < 1 or self.resize_size < self.input_size:
            raise ValueError(f"need 1 <= input_size <= resize_size, got input_size={self.input_size}, resize_size={self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std positive; got mean={self.mean}, std={self.std}")

    @classmethod
    def for_card(cls, card, resize_size: Optional[int] = None) -> "Preprocess":
        """The evaluation transform of a :class:`~reslab.checkpoint.ModelCard`."""
        size = int(card.input_size)
        return cls(size, resize_size or default_resize_size(size), tuple(card.mean), tuple(card.std))

    @classmethod
    def from_pretrained_cfg(cls, cfg: Mapping[str, Any]) -> "Preprocess":
        """The evaluation transform that ``model.pretrained_cfg`` describes, as timm's
        ``create_transform(**resolve_data_config(model=model))``: shorter side resized to
        ``input_size / crop_pct`` (bilinear), centre crop of ``input_size``, then ``mean``/``std``."""
        missing = [key for key in ("input_size", "mean", "std") if key not in cfg]
        if missing:
            raise ValueError(f"pretrained_cfg lacks {', '.join(missing)}; pass a model's pretrained_cfg "
                             "(reslab.create_model(name, pretrained=True).pretrained_cfg)")
        if cfg.get("interpolation", "bilinear") != "bilinear":
            raise ValueError(f"interpolation {cfg['interpolation']!r} is not supported; reslab resizes bilinearly")
        size = cfg["input_size"]
        size = int(size[-1]) if isinstance(size, (tuple, list)) else int(size)
        crop_pct = float(cfg.get("crop_pct") or size / default_resize_size(size))
        return cls(size, round(size / crop_pct), tuple(cfg["mean"]), tuple(cfg["std"]))

    def resize_and_crop(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        scale = self.resize_size / min(width, height)
        new_size = (max(self.resize_size, round(width * scale)), max(self.resize_size, round(height * scale)))
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.BILINEAR)
        left = (new_size[0] - self.input_size) // 2
        top = (new_size[1] - self.input_size) // 2
        return image.crop((left, top, left + self.input_size, top + self.input_size))

    def __call__(self, image: Image.Image) -> Tensor:
        """A normalised float tensor of shape (3, input_size, input_size)."""
        pixels = np.asarray(self.resize_and_crop(to_rgb(image)), dtype=np.uint8)
        tensor = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def batch(self, images: Iterable[Image.Image]) -> Tensor:
        return torch.stack([self(image) for image in images])
