"""ResNet v1 (He et al. 2015): ImageNet ResNets, the CIFAR 6n+2 ResNets, their plain twins,
ResNeXt (Xie et al. 2017) and the ImageNet Wide ResNets, all from one :class:`ResNet` class.

A network is a stem, stages ``layer1..layerN`` and a head; variants differ in arguments only.
State-dict keys equal torchvision's (``conv1, bn1, layer1..layer4, downsample.0/.1, fc``),
so torchvision and timm ResNet checkpoints load with ``strict=True``.

Do not confuse the two sizes: ``resnet18`` is the ImageNet net (11.7M parameters; with
``stem='cifar'`` it is the 3x3-stem "ResNet-18 for CIFAR" of public repositories), while
``resnet20`` .. ``resnet1202`` are the paper's CIFAR nets (0.27M .. 19.4M, sec. 4.2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.models.features import FeatureStep, stem_and_stage_steps
from reslab.models.layers import (ZERO_PAD_PLACEMENTS, ClassifierNet, ResidualBlock, ZeroPadShortcut, conv1x1, conv3x3,
                                  init_weights, make_shortcut)
from reslab.registry import register_model

HE2015 = "He et al. 2015, Deep Residual Learning"
XIE2017 = "Xie et al. 2017, ResNeXt"
MAX_STAGES = 4
WRN2016 = "Zagoruyko & Komodakis 2016, Wide ResNets"


class BasicLayers:
    """Mixin: conv3x3-BN-ReLU-[dropout]-conv3x3-BN, the two-layer transform of He et al. 2015,
    Fig. 2 (dropout between the convolutions as in Zagoruyko & Komodakis 2016)."""

    expansion = 1

    def _build_layers(self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int, dropout: float) -> None:
        if groups != 1 or width_per_group != 64:
            raise ValueError("basic blocks support only groups=1 and width_per_group=64; use a bottleneck model for ResNeXt")
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn2(self.conv2(self.dropout(self.relu(self.bn1(self.conv1(x))))))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn2.weight)


class BottleneckLayers:
    """Mixin: conv1x1-BN-ReLU-conv3x3(stride, groups)-BN-ReLU-conv1x1-BN (He et al. 2015,
    Fig. 5). The grouped 3x3 is ResNeXt's form (c) (Xie et al. 2017, Fig. 3); the stride on
    the 3x3 rather than the first 1x1 is "ResNet v1.5", as torchvision."""

    expansion = 4

    def _build_layers(self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int, dropout: float) -> None:
        if dropout:
            raise ValueError("dropout between convolutions is defined for basic blocks only (Wide ResNets)")
        width = int(planes * (width_per_group / 64.0)) * groups
        self.conv1 = conv1x1(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def zero_init_last(self) -> None:
        nn.init.zeros_(self.bn3.weight)


class PostActivationBlock(ResidualBlock):
    """ReLU(h(x) + F(x)): the original residual unit (He et al. 2015, Fig. 2). A subclass
    mixes in the layers of F."""

    expansion: int

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 groups: int = 1, width_per_group: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self._build_layers(in_channels, planes, stride, groups, width_per_group, dropout)
        self.downsample = make_shortcut(shortcut, in_channels, planes * self.expansion, stride)

    def merge(self, identity: Tensor, residual: Optional[Tensor]) -> Tensor:
        return F.relu(identity if residual is None else identity + residual)


class BasicBlock(BasicLayers, PostActivationBlock):
    """Residual basic block: ReLU(h(x) + BN-conv3x3-ReLU-BN-conv3x3(x)) (He et al. 2015, Fig. 2)."""


class Bottleneck(BottleneckLayers, PostActivationBlock):
    """Residual bottleneck: ReLU(h(x) + 1x1-3x3-1x1 with BN and ReLU) (He et al. 2015, Fig. 5)."""


class PlainBlock(BasicLayers, nn.Module):
    """Plain block, no shortcut: ReLU(BN-conv3x3-ReLU-BN-conv3x3(x)) (He et al. 2015, Fig. 3 middle)."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 groups: int = 1, width_per_group: int = 64, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self._build_layers(in_channels, planes, stride, groups, width_per_group, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.residual(x))


class ResNet(ClassifierNet):
    """Stem, stages ``layer1..layerN`` of blocks, global average pooling and ``fc``.

    ``block`` is any block class taking ``(in_channels, planes, stride, shortcut, groups,
    width_per_group, dropout)``; its ``expansion`` sets a stage's output width to
    ``planes * expansion``. A block class with ``preactivation = True`` (He et al. 2016)
    gets a stem without BN-ReLU on CIFAR and a final BN-ReLU (``final_bn``) before pooling.

    stem: ``'imagenet'`` = conv7x7/2-BN-ReLU-maxpool3x3/2; ``'cifar'`` = conv3x3-BN-ReLU.
    ``stem_bn=False`` leaves out the stem's BN-ReLU (the default for pre-activation CIFAR nets;
    for pre-activation ImageNet nets it is timm's ``resnetv2_*`` layout, conv7x7/2-maxpool).
    ``zero_pad`` places option A's zero channels (:class:`ZeroPadShortcut`).
    ``grad_checkpoint=True`` is ``set_grad_checkpointing()``: each block is recomputed in the
    backward pass to save memory (BN running statistics then see each batch twice).
    """

    def __init__(
        self,
        block: type[nn.Module],
        depths: Sequence[int],
        planes: Sequence[int],
        *,
        num_classes: int = 1000,
        stem: str = "imagenet",
        stem_width: int = 64,
        shortcut: str = "B",
        groups: int = 1,
        width_per_group: int = 64,
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        in_channels: int = 3,
        zero_init_residual: bool = False,
        grad_checkpoint: bool = False,
        global_pool: str = "avg",
        stem_bn: Optional[bool] = None,
        zero_pad: str = "end",
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(depths) != len(planes) or not 1 <= len(depths) <= MAX_STAGES or min(depths) < 1:
            raise ValueError(f"need 1 to {MAX_STAGES} stages, one positive depth and width each; "
                             f"got depths={list(depths)} planes={list(planes)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        preact = getattr(block, "preactivation", False)
        if stem_bn is None:  # a pre-activation net on CIFAR starts with a bare conv: its first unit pre-activates
            stem_bn = not (preact and stem == "cifar")

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, stem_width, 7, 2, 3, bias=False)
        else:
            self.conv1 = conv3x3(in_channels, stem_width)
        self.bn1 = nn.BatchNorm2d(stem_width) if stem_bn else nn.Identity()
        self.relu = nn.ReLU(inplace=True) if stem_bn else nn.Identity()
        self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
        self.stem_width = stem_width
        self.stem_stride = 2 if stem == "imagenet" else 1

        width = stem_width
        self.stage_names = [f"layer{i + 1}" for i in range(len(depths))]
        self.stage_channels = [p * block.expansion for p in planes]
        for i, (name, depth, p) in enumerate(zip(self.stage_names, depths, planes)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(depth):
                blocks.append(block(width, p, stride if j == 0 else 1, shortcut, groups, width_per_group, dropout))
                width = p * block.expansion
            self.add_module(name, nn.Sequential(*blocks))
        pads = [m for m in self.modules() if isinstance(m, ZeroPadShortcut)]
        if zero_pad != "end" and (zero_pad not in ZERO_PAD_PLACEMENTS or not pads):
            raise ValueError(f"zero_pad={zero_pad!r} places option A's zero channels ('end' or 'both'); "
                             f"this model has {'none' if not pads else 'them'} (shortcut={shortcut!r})")
        for pad in pads:
            pad.placement = zero_pad
        for i in range(len(depths), MAX_STAGES):  # absent stages: no parameters, no state-dict keys
            self.add_module(f"layer{i + 1}", nn.Identity())
        self.final_bn = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True)) if preact else nn.Identity()
        self._build_head(width, num_classes, head_dropout, global_pool)
        self.grad_checkpointing = grad_checkpoint
        init_weights(self, zero_init_residual)

    @torch.jit.unused
    def stages(self) -> list[nn.Module]:
        """The stages ``layer1..layerN`` in order."""
        return [getattr(self, name) for name in self.stage_names]

    @torch.jit.unused
    def feature_steps(self) -> list[FeatureStep]:
        """The stem's output (after its ReLU, before the max-pool, as timm), then each stage's."""
        return stem_and_stage_steps(self, self.stage_names, self.stage_channels)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._features_by_steps(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # written out so that the model scripts
        return self.final_bn(x)


# ---------------------------------------------------------------------------------------
# Registered variants. Published parameter counts: torchvision's exact counts for ImageNet,
# He et al. 2015 Table 6 for CIFAR (rounded).

IMAGENET_STAGES = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
                   101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3]), 200: (Bottleneck, [3, 24, 36, 3])}
IMAGENET_PLANES = [64, 128, 256, 512]
CIFAR_PLANES = [16, 32, 64]


def imagenet_resnet(depth: int, block: Optional[type[nn.Module]] = None, **kwargs) -> ResNet:
    """An ImageNet-layout ResNet of the given depth (He et al. 2015, Table 1)."""
    default_block, depths = IMAGENET_STAGES[depth]
    return ResNet(block or default_block, depths, IMAGENET_PLANES, **kwargs)


def cifar_resnet(depth: int, block: type[nn.Module] = BasicBlock, shortcut: str = "A", **kwargs) -> ResNet:
    """The CIFAR ResNet of depth 6n+2 (He et al. 2015, sec. 4.2): 3 stages of n blocks,
    widths 16/32/64, feature maps 32/16/8, shortcut option A by default."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"a CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, 1202), got {depth}")
    n = (depth - 2) // 6
    kwargs.setdefault("num_classes", 10)
    return ResNet(block, [n] * 3, CIFAR_PLANES, stem="cifar", stem_width=16, shortcut=shortcut, **kwargs)


def _register_imagenet(depth: int, params: int) -> None:
    @register_model(f"resnet{depth}", family="resnet", paper=HE2015, input_size=224, published_params=params)
    def build(**kwargs) -> ResNet:
        return imagenet_resnet(depth, **kwargs)

    build.__doc__ = f"ResNet-{depth} for ImageNet (He et al. 2015, Table 1); torchvision keys."


for _depth, _params in [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160), (152, 60_192_808)]:
    _register_imagenet(_depth, _params)


def _register_cifar(depth: int, params: Optional[float]) -> None:
    @register_model(f"resnet{depth}", family="resnet-cifar", paper=HE2015, input_size=32, published_params=params)
    def build(**kwargs) -> ResNet:
        return cifar_resnet(depth, **kwargs)

    build.__doc__ = f"CIFAR ResNet-{depth} (He et al. 2015, sec. 4.2, Table 6); shortcut option A by default."


for _depth, _params in [(20, 0.27e6), (32, 0.46e6), (44, 0.66e6), (56, 0.85e6), (110, 1.7e6), (1202, 19.4e6)]:
    _register_cifar(_depth, _params)


def _register_plain(depth: int, imagenet: bool) -> None:
    @register_model(f"plain{depth}", family="plain" if imagenet else "plain-cifar", paper=HE2015,
                    input_size=224 if imagenet else 32, published_params=None)
    def build(**kwargs) -> ResNet:
        return imagenet_resnet(depth, PlainBlock, **kwargs) if imagenet else cifar_resnet(depth, PlainBlock, **kwargs)

    build.__doc__ = f"Plain-{depth}: the ResNet-{depth} stack with no shortcuts (He et al. 2015, Fig. 3 and 6)."


for _depth in (20, 32, 44, 56, 110):
    _register_plain(_depth, imagenet=False)
for _depth in (18, 34):
    _register_plain(_depth, imagenet=True)


@register_model("resnext50_32x4d", family="resnext", paper=XIE2017, input_size=224, published_params=25_028_904)
def resnext50_32x4d(**kwargs) -> ResNet:
    """ResNeXt-50 (32x4d) for ImageNet (Xie et al. 2017, Table 1); torchvision keys."""
    return imagenet_resnet(50, groups=32, width_per_group=4, **kwargs)


@register_model("resnext101_32x4d", family="resnext", paper=XIE2017, input_size=224, published_params=44_177_704)
def resnext101_32x4d(**kwargs) -> ResNet:
    """ResNeXt-101 (32x4d) for ImageNet (Xie et al. 2017, Table 5); timm keys."""
    return imagenet_resnet(101, groups=32, width_per_group=4, **kwargs)


@register_model("resnext101_32x8d", family="resnext", paper=XIE2017, input_size=224, published_params=88_791_336)
def resnext101_32x8d(**kwargs) -> ResNet:
    """ResNeXt-101 (32x8d) for ImageNet; torchvision keys."""
    return imagenet_resnet(101, groups=32, width_per_group=8, **kwargs)


@register_model("resnext101_64x4d", family="resnext", paper=XIE2017, input_size=224, published_params=83_455_272)
def resnext101_64x4d(**kwargs) -> ResNet:
    """ResNeXt-101 (64x4d) for ImageNet (Xie et al. 2017, Table 5); torchvision keys."""
    return imagenet_resnet(101, groups=64, width_per_group=4, **kwargs)


@register_model("wide_resnet50_2", family="wide-resnet", paper=WRN2016, input_size=224, published_params=68_883_240)
def wide_resnet50_2(**kwargs) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with bottlenecks twice as wide; torchvision keys."""
    return imagenet_resnet(50, width_per_group=128, **kwargs)


@register_model("wide_resnet101_2", family="wide-resnet", paper=WRN2016, input_size=224, published_params=126_886_696)
def wide_resnet101_2(**kwargs) -> ResNet:
    """Wide ResNet-101-2: ResNet-101 with bottlenecks twice as wide; torchvision keys."""
    return imagenet_resnet(101, width_per_group=128, **kwargs)
