"""Opt-in training extras, off in the paper recipes: an exponential moving average of the
weights, batched mixup / CutMix, and test-time augmentation.

* :class:`ModelEma`: Polyak averaging with an exponential weight (as in timm's ``ModelEmaV2``):
  after each step ``ema = decay * ema + (1 - decay) * live``. Batch-norm running statistics are
  averaged the same way (they describe recent live weights, and the average of them matches the
  averaged weights better than the live statistics; on the fast recipe, averages over up to 1,000
  steps did as well with them as with statistics re-estimated for the averaged weights, and one
  over 2,000 steps lost 1.3 points: ``benchmarks/ema_decays.py``); integer buffers
  (``num_batches_tracked``) are copied.
* :func:`mix_batch`: mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") or
  CutMix (Yun et al. 2019, sec. 3.1) of a whole batch with a permutation of itself, one mixing
  ratio per batch drawn from Beta(alpha, alpha), with a generator seeded by the iteration, so a
  resumed run draws the same.
* :func:`tta_logits`: test-time augmentation by mirror images and small translations, as
  airbench's evaluation (Jordan 2024, sec. 3.7): the logits of the views are averaged, the
  translated views together weighing as much as the untranslated ones.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.checkpoint import unwrap


class ModelEma:
    """An exponential moving average of a model's weights and floating-point buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self._float = [t for t in self.module.state_dict().values() if t.is_floating_point()]
        self._other = [t for t in self.module.state_dict().values() if not t.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = unwrap(model).state_dict().values()
        torch._foreach_lerp_(self._float, [t for t in live if t.is_floating_point()], 1.0 - self.decay)
        for mine, theirs in zip(self._other, [t for t in live if not t.is_floating_point()]):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


def mix_batch(images: Tensor, labels: Tensor, *, mixup: float, cutmix: float,
              seed: int) -> tuple[Tensor, Tensor, float]:
    """``(mixed images, partner labels, lam)``: the loss is ``lam * CE(labels) + (1 - lam) *
    CE(partner labels)``. With both alphas set, one of the two is chosen per batch."""
    rng = random.Random(seed)
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = rng.betavariate(alpha, alpha)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(labels.device)
    partner = images.index_select(0, perm)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = rng.randrange(height), rng.randrange(width)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually kept
    else:
        images = images * lam + partner * (1.0 - lam)
    return images, labels.index_select(0, perm), lam


def mixed_loss(logits: Tensor, labels: Tensor, partner: Optional[Tensor], lam: float, label_smoothing: float) -> Tensor:
    """Cross-entropy of ``logits``, for mixed targets when ``partner`` labels are given."""
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if partner is None:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner, label_smoothing=label_smoothing)


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
