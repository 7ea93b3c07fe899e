"""Whitening initialisation of a network's first convolution (``--whiten-stem``).

airbench (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds": its frozen patch-whitening
initialisation, taken from tysam-code's hlb-cifar10) starts its first layer as a
patch-whitening filter bank: the eigenvectors ``v_i`` of the covariance of the training
images' patches, each divided by the square root of its eigenvalue ``lambda_i`` (plus a small
``eps``), so that the filters' outputs on those patches are uncorrelated with unit variance.
With half the output channels given the top eigenvectors and the other half their negatives,
the ReLU after the layer keeps both signs of every whitened component.

:func:`whiten_stem_` applies this to any model's first ``nn.Conv2d`` (ResNet-20's ``conv1``,
3 x 3 x 3 patches: 27 eigenvectors, of which its 16 channels take the top 8 and their
negatives). The covariance is taken over every patch of 5,000 evenly spaced training images
(airbench uses 5,000 too). The trainer (``--whiten-stem``) then trains the layer like every
other weight, unless ``--freeze-stem`` keeps it fixed, as airbench keeps its whitening weights.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.data.augment import normalize


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` in the model's module order: the stem of every reslab model."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d to whiten")
    return conv


def patch_covariance(images: Tensor, mean: Sequence[float], std: Sequence[float], kernel_size: tuple[int, int],
                     chunk: int = 1000) -> Tensor:
    """The float64 covariance of every ``kh x kw`` patch (stride 1, no padding) of uint8
    ``[N, H, W, C]`` images normalised by ``mean``/``std`` (as the loaders do), ``chunk`` images
    at a time (float32 patches, float64 sums)."""
    dimension = images.shape[-1] * kernel_size[0] * kernel_size[1]
    mean_t, std_t = (torch.as_tensor(v, dtype=torch.float32) for v in (mean, std))
    total, outer, count = torch.zeros(dimension, dtype=torch.float64), torch.zeros(dimension, dimension, dtype=torch.float64), 0
    for start in range(0, len(images), chunk):
        x = normalize(images[start:start + chunk].cpu(), mean_t, std_t)
        patches = F.unfold(x, kernel_size).transpose(1, 2).reshape(-1, dimension)  # [n * positions, C * kh * kw]
        total += patches.sum(0, dtype=torch.float64)
        outer += (patches.T @ patches).double()
        count += len(patches)
    average = total / count
    return outer / count - torch.outer(average, average)


def patch_whitening_filters(covariance: Tensor, pairs: int, *, eps: float = 5e-4) -> Tensor:
    """``[2 * pairs, D]`` filters: the covariance's top ``pairs`` eigenvectors over
    ``sqrt(eigenvalue + eps)``, largest first, then their negatives."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    top = slice(len(covariance) - pairs, len(covariance))
    filters = (eigenvectors[:, top] / torch.sqrt(eigenvalues[top] + eps)).T.flip(0)
    return torch.cat([filters, -filters])


@torch.no_grad()
def whiten_stem_(model: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float], *,
                 eps: float = 5e-4, sample: int = 5000) -> int:
    """Set the first convolution of ``model`` to patch-whitening filters of every k-th of the
    ``images``, k = ``len(images) // sample`` (at least 1; so ``sample`` to ``2 * sample - 1`` of them,
    or all where fewer), uint8 ``[N, H, W, C]`` normalised by ``mean``/``std``, and zero its
    bias if it has one. Returns how many output channels were set: all of them, or, where the
    stem has more than twice its patch dimension (or an odd number), the first even number up
    to that; the rest keep their initialisation."""
    conv = first_conv(model)
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.in_channels != images.shape[-1]:
        raise ValueError(f"the first convolution ({conv}) does not see the {images.shape[-1]}-channel images "
                         "directly; --whiten-stem needs an ungrouped, undilated stem convolution")
    covariance = patch_covariance(images[::max(1, len(images) // sample)], mean, std, conv.kernel_size)
    pairs = min(conv.out_channels // 2, len(covariance))
    filters = patch_whitening_filters(covariance, pairs, eps=eps).reshape(2 * pairs, *conv.weight.shape[1:])
    conv.weight[:2 * pairs] = filters.to(conv.weight.device, conv.weight.dtype)
    if conv.bias is not None:
        conv.bias.zero_()
    return 2 * pairs
