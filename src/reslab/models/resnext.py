"""ResNeXt for CIFAR and the three equivalent forms of its block (Xie et al. 2017).

``resnext29_8x64d`` and ``resnext29_16x64d`` (sec. 5.3): a conv3x3(64)-BN-ReLU stem, 3 stages
of 3 bottlenecks (29 layers) with cardinality C and bottleneck width d = 64 per group in the
first stage (doubling per stage), outputs 256 / 512 / 1024. They are the one ResNet class with
:class:`~reslab.models.resnet.Bottleneck` blocks, whose grouped 3x3 is the block's form (c).

Fig. 3 draws the same aggregated transformation three ways; the forms differ in how the C
paths are laid out, not in what they compute:

* (a) :class:`SummedPathsBlock`: C paths of 1x1-3x3-1x1, their outputs summed;
* (b) :class:`ConcatenatedPathsBlock`: C paths of 1x1-3x3, concatenated, then one 1x1;
* (c) ``Bottleneck(groups=C)``: one 1x1, a 3x3 with C groups, one 1x1.

BN sits where it keeps the forms exactly equal: a BN over the Cd channels of (c) is per
channel, so it splits into one BN of d channels per path in (a) and (b); the last BN normalises
the aggregated output, so in (a) it comes after the sum (a BN of a sum is not a sum of BNs).
:func:`from_grouped` builds form (a) or (b) from a form-(c) block, weights sliced per group.
These forms are for study and tests; the registered models use form (c), the fastest.
"""

import copy
from collections import OrderedDict

import torch
from torch import Tensor, nn

from reslab.models.layers import ResidualBlock, conv1x1, conv3x3, make_shortcut
from reslab.models.resnet import XIE2017, Bottleneck, PostActivationBlock, ResNet
from reslab.registry import register_model

CIFAR_PLANES = (64, 128, 256)  # x4 expansion: outputs 256 / 512 / 1024
CIFAR_STEM_WIDTH = 64
GROUPED_LAYERS = ("conv1", "bn1", "conv2", "bn2")  # the layers of form (c) that split into paths


def cifar_resnext(cardinality: int, bottleneck_width: int, **kwargs) -> ResNet:
    """ResNeXt-29 (C x ``bottleneck_width``d) for CIFAR (Xie et al. 2017, sec. 5.3, Table 7)."""
    if cardinality < 1 or bottleneck_width < 1:
        raise ValueError(f"cardinality and bottleneck_width must be positive, got {cardinality} and {bottleneck_width}")
    kwargs.setdefault("num_classes", 10)
    return ResNet(Bottleneck, [3, 3, 3], CIFAR_PLANES, stem="cifar", stem_width=CIFAR_STEM_WIDTH,
                  groups=cardinality, width_per_group=bottleneck_width, **kwargs)


@register_model("resnext29_8x64d", family="resnext-cifar", paper=XIE2017, input_size=32, published_params=34.4e6,
                aliases=("resnext29_8x64",))
def resnext29_8x64d(**kwargs) -> ResNet:
    """ResNeXt-29 (8x64d) for CIFAR (Xie et al. 2017, Table 7)."""
    return cifar_resnext(8, 64, **kwargs)


@register_model("resnext29_16x64d", family="resnext-cifar", paper=XIE2017, input_size=32, published_params=68.1e6,
                aliases=("resnext29_16x64",))
def resnext29_16x64d(**kwargs) -> ResNet:
    """ResNeXt-29 (16x64d) for CIFAR (Xie et al. 2017, Table 7)."""
    return cifar_resnext(16, 64, **kwargs)


# ---------------------------------------------------------------------------------------
# The block's forms (a) and (b) (Fig. 3), for study and the equivalence test.

def _path(in_channels: int, width: int, stride: int) -> nn.Sequential:
    """One path: 1x1-BN-ReLU-3x3-BN-ReLU, named as the form-(c) layers it is one group of."""
    return nn.Sequential(OrderedDict(
        conv1=conv1x1(in_channels, width), bn1=nn.BatchNorm2d(width), relu1=nn.ReLU(inplace=True),
        conv2=conv3x3(width, width, stride), bn2=nn.BatchNorm2d(width), relu2=nn.ReLU(inplace=True)))


class AggregatedPathsBlock(ResidualBlock):
    """Base of forms (a) and (b): ReLU(h(x) + BN(aggregate of C paths(x))) (Xie et al. 2017, eq. 3, Fig. 3)."""

    # TorchScript reads the annotations of the nearest annotated class only, and cannot read
    # ResidualBlock's string "Optional[nn.Module]": so this class has its own, evaluated one
    # (this module does not use ``from __future__ import annotations``).
    cardinality: int

    def __init__(self, in_channels: int, out_channels: int, cardinality: int, path_width: int,
                 stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.cardinality = cardinality
        self.paths = nn.ModuleList(_path(in_channels, path_width, stride) for _ in range(cardinality))
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = make_shortcut(shortcut, in_channels, out_channels, stride)

    merge = PostActivationBlock.merge  # ReLU after the addition, as every ResNeXt block


class SummedPathsBlock(AggregatedPathsBlock):
    """ResNeXt form (a): ReLU(h(x) + BN(sum of C paths 1x1-BN-ReLU-3x3-BN-ReLU-1x1)) (Xie et al. 2017, Fig. 3a)."""

    def __init__(self, in_channels: int, out_channels: int, cardinality: int, path_width: int,
                 stride: int = 1, shortcut: str = "B") -> None:
        super().__init__(in_channels, out_channels, cardinality, path_width, stride, shortcut)
        for path in self.paths:
            path.add_module("conv3", conv1x1(path_width, out_channels))

    def residual(self, x: Tensor) -> Tensor:
        return self.bn3(torch.stack([path(x) for path in self.paths]).sum(0))


class ConcatenatedPathsBlock(AggregatedPathsBlock):
    """ResNeXt form (b): ReLU(h(x) + BN-1x1(concat of C paths 1x1-BN-ReLU-3x3-BN-ReLU)) (Xie et al. 2017, Fig. 3b)."""

    def __init__(self, in_channels: int, out_channels: int, cardinality: int, path_width: int,
                 stride: int = 1, shortcut: str = "B") -> None:
        super().__init__(in_channels, out_channels, cardinality, path_width, stride, shortcut)
        self.conv3 = conv1x1(cardinality * path_width, out_channels)

    def residual(self, x: Tensor) -> Tensor:
        return self.bn3(self.conv3(torch.cat([path(x) for path in self.paths], 1)))


FORMS = {"a": SummedPathsBlock, "b": ConcatenatedPathsBlock}


@torch.no_grad()
def from_grouped(block: Bottleneck, form: str) -> AggregatedPathsBlock:
    """Form ``'a'`` or ``'b'`` of a form-(c) bottleneck, computing the same function.

    Path i gets group i of the grouped layers: output channels [i*d, (i+1)*d) of conv1, bn1,
    conv2 and bn2 (a grouped conv's group i reads only those input channels). In form (b) the
    last 1x1 and BN are copied whole; in form (a) path i's 1x1 is the last 1x1's input columns
    of group i, and the BN is copied whole, after the sum. The shortcut is copied.
    """
    if form not in FORMS:
        raise ValueError(f"form must be 'a' (summed paths) or 'b' (concatenated paths), got {form!r}")
    if not isinstance(block, Bottleneck):
        raise TypeError(f"from_grouped needs a (grouped) Bottleneck block, got {type(block).__name__}")
    cardinality = block.conv2.groups
    width = block.conv1.out_channels // cardinality
    aggregated = FORMS[form](block.conv1.in_channels, block.conv3.out_channels, cardinality, width, block.conv2.stride[0])
    for i, path in enumerate(aggregated.paths):
        group = slice(i * width, (i + 1) * width)
        for name in GROUPED_LAYERS:
            state = getattr(block, name).state_dict()
            getattr(path, name).load_state_dict({k: v if v.dim() == 0 else v[group] for k, v in state.items()})
        if form == "a":
            path.conv3.weight.copy_(block.conv3.weight[:, group])
    if form == "b":
        aggregated.conv3.load_state_dict(block.conv3.state_dict())
    aggregated.bn3.load_state_dict(block.bn3.state_dict())
    aggregated.downsample = copy.deepcopy(block.downsample)
    return aggregated.train(block.training)
