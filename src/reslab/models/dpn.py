"""Dual Path Networks (Chen et al. 2017, "Dual Path Networks", NIPS; code cypw/DPNs).

A dual path block reads the concatenation of two paths: a *residual path* of constant width R
(ResNet's shared features) and a *dense path* that grows by k channels per block (DenseNet's
new features). Its bottleneck (1x1, grouped 3x3, 1x1; Chen et al. 2017, Fig. 2(e) and Table 1)
ends in R + k channels: the first R are added to the residual path, the last k are appended to
the dense path.

Here the two paths travel as one tensor ``[residual (R) | dense (D)]`` in the channels, which
is exactly the input every block of the official code reads (it concatenates them first), so
a :class:`DualPathBlock` is a plain :class:`~reslab.models.layers.ResidualBlock`: ``residual``
is the bottleneck, ``downsample`` the projection of the first block of a stage, and ``merge``
adds / appends. A dropped or deleted branch (stochastic depth, lesion studies) keeps the
residual path and appends k zero channels, so the shapes downstream stay valid.

The ImageNet variants use the official configurations (``k_r``, groups, blocks per stage and
dense increments of the paper's Table 1 and the authors' code); their parameter counts match
the PyTorch port's. ``dpn26`` and ``dpn92_cifar`` are the 32x32 variants of public CIFAR
repositories (kuangliu/pytorch-cifar): the DPN-92 widths with a 3x3 stride-1 stem and no
max-pool, built from the same (official, pre-activation) block.
"""

# No `from __future__ import annotations` here: TorchScript reads the class annotations below
# (types of attributes it must script) and cannot resolve them as strings.

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.models.features import FeatureStep, stem_and_stage_steps
from reslab.models.layers import ClassifierNet, ResidualBlock, init_weights
from reslab.registry import register_model

CHEN2017 = "Chen et al. 2017, Dual Path Networks"
# MXNet's BN epsilon, kept by the PyTorch port, so that its weights give the same outputs.
BN_EPS = 1e-3
# The activation after the final BN: ReLU in the authors' MXNet code ("conv5_x_x__relu-sp"),
# ELU in timm's port (``fc_act_layer='elu'``), with which its converted weights are evaluated.
FINAL_ACTIVATIONS = {"relu": nn.ReLU, "elu": nn.ELU}


class BNReLUConv(nn.Sequential):
    """Pre-activation unit BN-ReLU-conv, the layer of every DPN block (Chen et al. 2017, Table 1)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)


class DualPathBlock(ResidualBlock):
    """Dual path block: BN-ReLU-1x1, BN-ReLU-grouped 3x3, BN-ReLU-1x1 -> R added + k appended (Chen et al. 2017, Fig. 2(e)).

    Of the last 1x1's R + k output channels, the first R are added to the residual path and the
    last k appended to the dense path.
    """

    residual_channels: int
    dense_increment: int

    def __init__(self, in_channels: int, residual_channels: int, dense_increment: int, bottleneck_width: int,
                 groups: int, stride: int = 1, projection: bool = False) -> None:
        super().__init__()
        if bottleneck_width % groups:
            raise ValueError(f"the grouped 3x3 needs a bottleneck width divisible by groups; got {bottleneck_width} and {groups}")
        self.residual_channels = residual_channels
        self.dense_increment = dense_increment
        self.conv1 = BNReLUConv(in_channels, bottleneck_width, 1)
        self.conv2 = BNReLUConv(bottleneck_width, bottleneck_width, 3, stride, groups)
        self.conv3 = BNReLUConv(bottleneck_width, residual_channels + dense_increment, 1)
        if projection:  # the official code starts a stage's dense path with 2k projected channels
            self.downsample = BNReLUConv(in_channels, residual_channels + 2 * dense_increment, 1, stride)

    def residual(self, x: Tensor) -> Tensor:
        return self.conv3(self.conv2(self.conv1(x)))

    def merge(self, identity: Tensor, residual: Optional[Tensor]) -> Tensor:
        if residual is None:  # branch dropped: residual path as is, k zero channels on the dense path
            return F.pad(identity, [0, 0, 0, 0, 0, self.dense_increment])
        r = self.residual_channels
        return torch.cat([identity[:, :r] + residual[:, :r], identity[:, r:], residual[:, r:]], dim=1)


class DPN(ClassifierNet):
    """Stem, four stages ``layer1..layer4`` of :class:`DualPathBlock`, BN-ReLU over both paths,
    global average pooling and ``fc`` (Chen et al. 2017, Table 1).

    Stage i has ``depths[i]`` blocks, residual width ``residual_widths[i]``, bottleneck width
    ``bottleneck_width * 2**i`` (the paper's k_r doubling per stage) with ``groups`` groups, and a
    dense path growing by ``dense_increments[i]`` per block. Its first block projects
    (stride 1 in the first stage, 2 after). ``stem``: ``'imagenet'`` = conv7x7/2-BN-ReLU-maxpool3x3/2
    (``'imagenet_small'``: a 3x3/2 conv, DPN-68), ``'cifar'`` = conv3x3-BN-ReLU, no pooling.
    ``final_activation``: after the final BN, ``'relu'`` (the authors' code) or ``'elu'`` (timm's
    DPN, needed for its weights).
    """

    def __init__(
        self,
        depths: Sequence[int],
        dense_increments: Sequence[int],
        bottleneck_width: int,
        groups: int,
        residual_widths: Sequence[int] = (256, 512, 1024, 2048),
        *,
        stem: str = "imagenet",
        stem_width: int = 64,
        num_classes: int = 1000,
        in_channels: int = 3,
        global_pool: str = "avg",
        final_activation: str = "relu",
    ) -> None:
        super().__init__()
        if final_activation not in FINAL_ACTIVATIONS:
            raise ValueError(f"final_activation must be 'relu' (the authors' DPN) or 'elu' (timm's), got {final_activation!r}")
        if not len(depths) == len(dense_increments) == len(residual_widths) == 4 or min(depths) < 1:
            raise ValueError(f"a DPN has 4 stages with one positive depth, dense increment and residual width each; "
                             f"got depths={list(depths)} dense_increments={list(dense_increments)} "
                             f"residual_widths={list(residual_widths)}")
        if stem not in ("imagenet", "imagenet_small", "cifar"):
            raise ValueError(f"stem must be 'imagenet', 'imagenet_small' or 'cifar', got {stem!r}")
        kernel, stride = {"imagenet": (7, 2), "imagenet_small": (3, 2), "cifar": (3, 1)}[stem]
        self.conv1 = nn.Conv2d(in_channels, stem_width, kernel, stride, kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width, eps=BN_EPS)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if stem == "cifar" else nn.MaxPool2d(3, 2, 1)
        self.stem_width = stem_width
        self.stem_stride = stride
        self.stage_channels = []

        width = stem_width
        for i, (depth, increment, residual_width) in enumerate(zip(depths, dense_increments, residual_widths)):
            blocks = []
            for j in range(depth):
                blocks.append(DualPathBlock(width, residual_width, increment, bottleneck_width * 2**i, groups,
                                            stride=2 if i > 0 and j == 0 else 1, projection=j == 0))
                width = residual_width + (j + 3) * increment  # the projection's 2k, then k per block
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_channels.append(width)
        self.final_bn = nn.Sequential(nn.BatchNorm2d(width, eps=BN_EPS), FINAL_ACTIVATIONS[final_activation](inplace=True))
        self._build_head(width, num_classes, global_pool=global_pool)
        init_weights(self)

    @torch.jit.unused
    def feature_steps(self) -> list[FeatureStep]:
        """The stem's output (before the max-pool), then each stage's (both paths concatenated)."""
        return stem_and_stage_steps(self, [f"layer{i + 1}" for i in range(len(self.stage_channels))], self.stage_channels)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._features_by_steps(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.final_bn(self.layer4(self.layer3(self.layer2(self.layer1(x)))))



# ---------------------------------------------------------------------------------------
# Registered variants: the official configurations (stem width, k_r, groups, blocks per stage,
# dense increments). Parameter counts: the PyTorch port's exact counts (timm), which papers.md
# rounds to 12.61M, 37.67M, 61.57M, 86.92M and 79.25M.

IMAGENET_CONFIGS = {
    # name: (stem width, k_r, groups, blocks per stage, dense increments, published params)
    "dpn68": (10, 128, 32, (3, 4, 12, 3), (16, 32, 32, 64), 12_611_602),
    "dpn92": (64, 96, 32, (3, 4, 20, 3), (16, 32, 24, 128), 37_668_392),
    "dpn98": (96, 160, 40, (3, 6, 20, 3), (16, 32, 32, 128), 61_570_728),
    "dpn107": (128, 200, 50, (4, 8, 20, 3), (20, 64, 64, 128), 86_917_800),
    "dpn131": (128, 160, 40, (4, 8, 28, 3), (16, 32, 32, 128), 79_254_504),
}
# DPN-68 is the "small" net: residual widths a quarter of the others' and a 3x3 stem.
SMALL_RESIDUAL_WIDTHS = (64, 128, 256, 512)


def _register_imagenet(name: str) -> None:
    stem_width, k_r, groups, depths, increments, params = IMAGENET_CONFIGS[name]
    small = name == "dpn68"

    @register_model(name, family="dpn", paper=CHEN2017, input_size=224, published_params=params)
    def build(**kwargs) -> DPN:
        kwargs.setdefault("stem", "imagenet_small" if small else "imagenet")
        kwargs.setdefault("stem_width", stem_width)
        if small:
            kwargs.setdefault("residual_widths", SMALL_RESIDUAL_WIDTHS)
        return DPN(depths, increments, k_r, groups, **kwargs)

    build.__doc__ = (f"DPN-{name[3:]} for ImageNet (Chen et al. 2017, Table 1; k_r={k_r}, G={groups}, "
                     f"blocks {depths}, k {increments}).")


for _name in IMAGENET_CONFIGS:
    _register_imagenet(_name)


def cifar_dpn(depths: Sequence[int], **kwargs) -> DPN:
    """A DPN-92-width net for 32x32 inputs: 3x3 stride-1 stem of 64, no max-pool, k_r=96, G=32,
    dense increments (16, 32, 24, 128), as kuangliu/pytorch-cifar's DPN26 / DPN92."""
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("stem", "cifar")
    return DPN(depths, (16, 32, 24, 128), 96, 32, **kwargs)


@register_model("dpn26", family="dpn-cifar", paper=CHEN2017, input_size=32)
def dpn26(**kwargs) -> DPN:
    """DPN-26 for CIFAR: DPN-92 widths, 2 blocks per stage, 3x3 stem without max-pool."""
    return cifar_dpn((2, 2, 2, 2), **kwargs)


@register_model("dpn92_cifar", family="dpn-cifar", paper=CHEN2017, input_size=32)
def dpn92_cifar(**kwargs) -> DPN:
    """DPN-92 for CIFAR: the ImageNet DPN-92 stages on a 3x3 stem without max-pool."""
    return cifar_dpn((3, 4, 20, 3), **kwargs)
