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
ResNet-20 runs with it matched the runs without it (see the README).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MomentBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with the training statistics as shifted moments (see the module)."""

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        count = x.numel() // x.shape[1]
        if not (self.training and self.track_running_stats and self.affine and self.momentum is not None) or count < 2:
            return super().forward(x)  # evaluation, the rarer options, and PyTorch's error for one value
        per_channel = (1, -1, 1, 1)
        xf = x.float()
        shift = xf[0, :, 0, 0].detach()
        centred = xf - shift.view(per_channel)
        centred_mean = centred.mean((0, 2, 3))
        var = (centred * centred).mean((0, 2, 3)) - centred_mean * centred_mean
        mean = centred_mean + shift
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (count / (count - 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        scale = self.weight * torch.rsqrt(var + self.eps)
        offset = self.bias - mean * scale
        return (xf * scale.view(per_channel) + offset.view(per_channel)).to(x.dtype)


def use_moment_batch_norm(model: nn.Module) -> int:
    """Turn every plain ``nn.BatchNorm2d`` of ``model`` into a :class:`MomentBatchNorm2d` in
    place (same parameters, buffers and state dict names); returns how many were turned."""
    layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for layer in layers:
        layer.__class__ = MomentBatchNorm2d
    return len(layers)
