"""Batch normalisation whose training statistics compile to two plain sums.

Ioffe & Szegedy 2015, Algorithm 1: in training, BN normalises by the mini-batch mean
mu_B = E[x] and variance sigma_B^2 = E[(x - mu_B)^2] of each channel. ``nn.BatchNorm2d`` asks
for them with ``var_mean``, which torch.compile's CPU backend turns into a Welford reduction:
a division and a few dependent updates per element, slower than the memory it reads. Here the
variance is written through the first two moments about a shift s,

    sigma_B^2 = E[(x - s)^2] - (E[x - s])^2,

two sums that inductor fuses into one pass over the activations. The shift is the first
image's top-left value of each channel (a constant for the gradient; the variance does not
depend on it): it lies within a few standard deviations of the mean, so the two terms never
nearly cancel, which is what makes the textbook E[x^2] - E[x]^2 lose digits when
|mean| >> std (the "shifted data" method, Chan, Golub & LeVeque 1983). Outputs, gradients and running
statistics equal ``nn.BatchNorm2d``'s to rounding; the parameters and buffers are the same, so
state dicts do not change. ``reslab train --compile --moment-bn`` (on in the ``fast`` recipe)
uses it in the compiled step, where it is faster (``python benchmarks/train_step.py
--batchnorm``: median 1.07x); in eager mode PyTorch's own kernel is faster. Seven 24-epoch
ResNet-20 runs with it matched the runs without it (``experiments/batchnorm-kernels``).

Ghost batch norm (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", Sec. 4.1,
Algorithm 1): with ``ghost_batch`` set, each group of that many consecutive images of a
training batch is normalised by its own statistics, as if it were a small batch of its own;
the running statistics move towards the groups' average mean and average (unbiased) variance.
``reslab train --ghost-batch 32``. Evaluation is unchanged: the running statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MomentBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the training statistics as shifted moments (see the module);
    ``ghost_batch`` > 0: statistics per group of that many images (a batch it does not divide
    takes the whole batch's)."""

    ghost_batch: int = 0

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        images = x.shape[0]
        groups = images // self.ghost_batch if self.ghost_batch and images % self.ghost_batch == 0 else 1
        count = x.numel() // x.shape[1] // groups  # values per channel in one group
        if not (self.training and self.track_running_stats and self.affine and self.momentum is not None) or count < 2:
            return super().forward(x)  # evaluation, the rarer options, and PyTorch's error for one value
        xf = x.float()
        if groups > 1:  # (groups, images per group, C, H, W): a view in either memory format
            xf = xf.reshape(groups, images // groups, *x.shape[1:])
        per_channel = (*xf.shape[:-4], 1, -1, 1, 1)  # (1, C, 1, 1), or (groups, 1, C, 1, 1)
        sums = (-4, -2, -1)  # over the images (of a group), height and width
        shift = xf[..., 0, :, 0, 0].detach()
        centred = xf - shift.view(per_channel)
        centred_mean = centred.mean(sums)
        var = (centred * centred).mean(sums) - centred_mean * centred_mean
        mean = centred_mean + shift
        with torch.no_grad():  # with groups, towards their average mean and average variance
            self.running_mean.lerp_(mean if groups == 1 else mean.mean(0), self.momentum)
            self.running_var.lerp_((var if groups == 1 else var.mean(0)) * (count / (count - 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        offset = self.bias - mean * scale
        y = xf * scale.view(per_channel) + offset.view(per_channel)
        return (y if groups == 1 else y.reshape(x.shape)).to(x.dtype)


def use_moment_batch_norm(model: nn.Module) -> int:
    """Turn every plain ``nn.BatchNorm2d`` of ``model`` into a :class:`MomentBatchNorm2d` in
    place (same parameters, buffers and state dict names); returns how many layers of ``model``
    are ``MomentBatchNorm2d`` then (those turned and those that already were)."""
    for layer in model.modules():
        if type(layer) is nn.BatchNorm2d:
            layer.__class__ = MomentBatchNorm2d
    return sum(type(m) is MomentBatchNorm2d for m in model.modules())


def use_ghost_batch_norm(model: nn.Module, ghost_batch: int) -> int:
    """:func:`use_moment_batch_norm`, then every ``MomentBatchNorm2d`` of ``model`` takes its
    training statistics per group of ``ghost_batch`` images; returns how many layers do."""
    if ghost_batch < 1:
        raise ValueError(f"ghost_batch is the number of images per group of statistics, at least 1; got {ghost_batch}")
    use_moment_batch_norm(model)
    layers = [m for m in model.modules() if type(m) is MomentBatchNorm2d]
    for layer in layers:
        layer.ghost_batch = ghost_batch
    return len(layers)
