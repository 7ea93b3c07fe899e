"""Test-time views: the logits of a model averaged over mirror images and small translations,
as airbench's evaluation (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds", sec. 3.7): the
untranslated views weigh 1/2 together and the translated ones 1/2. Used by the trainer's final
evaluation and by ``reslab eval``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_tta_translate(translate: int, image_size: tuple[int, int]) -> None:
    """Raise DataError if test-time shifts of ``translate`` pixels do not fit images of ``image_size``
    (called where the flag meets the data, before any training or evaluation)."""
    from reslab.errors import DataError

    if translate >= min(image_size):
        raise DataError(f"--tta-translate {translate} needs images larger than that; these are "
                        f"{image_size[0]}x{image_size[1]}")


def views_label(flip: bool, translate: int) -> str:
    """How the test-time views of :func:`tta_logits` are named in messages and results."""
    names = (["mirror images"] if flip else []) + ([f"{translate}-pixel shifts"] if translate else [])
    return "single view" if not names else "views: " + " + ".join(names)


def tta_logits(model: nn.Module, images: Tensor, *, flip: bool = False, translate: int = 0) -> Tensor:
    """Float logits of ``model`` on ``images`` ``[B, C, H, W]`` averaged over test-time views: the
    images and, with ``flip``, their mirror images (along the width); with ``translate`` t > 0,
    also those views shifted by t pixels up-left and down-right (edges padded by reflection).
    Untranslated views weigh 1/2 together and translated views 1/2 (without ``translate``, all)."""
    def views(batch: Tensor) -> Tensor:
        logits = model(batch).float()
        return (logits + model(batch.flip(3)).float()) / 2 if flip else logits

    height, width = images.shape[-2:]
    if translate >= min(height, width):
        raise ValueError(f"a test-time shift of {translate} pixels needs images larger than that, got {height}x{width}")
    logits = views(images)
    if translate <= 0:
        return logits
    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    padded = F.pad(images, (translate,) * 4, mode="reflect")
    up_left = padded[..., :height, :width].contiguous(memory_format=layout)
    down_right = padded[..., 2 * translate:, 2 * translate:].contiguous(memory_format=layout)
    return (logits + (views(up_left) + views(down_right)) / 2) / 2
