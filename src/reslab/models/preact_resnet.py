"""Pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual Networks").

A pre-activation unit computes ``x_{l+1} = h(x_l) + F(x_l)`` with nothing after the addition
(eq. 3 and Fig. 4e): BN and ReLU move from after the addition to the front of the branch, so
the shortcut is a clean identity and any unit's signal reaches any other directly (eq. 4-5).
The branch is BN-ReLU-conv-BN-ReLU-conv (basic) or BN-ReLU-1x1-BN-ReLU-3x3-BN-ReLU-1x1
(bottleneck); a unit that changes shape takes its projection from the same pre-activated input
as its branch, and the network ends with BN-ReLU before pooling (``ResNet.final_bn``).

The units reuse the post-activation layers of :mod:`reslab.models.resnet` (convolutions,
dropout, grouped widths): a pre-activation branch is the post-activation one without its last
BN, with the unit's BN-ReLU (``preact``) in front. Parameter names: ``bnK`` follows ``convK``
in both orders. Networks are built by the one :class:`~reslab.models.resnet.ResNet` class.
Bottlenecks stride on the 3x3, as torchvision; He et al.'s CIFAR code strides the first 1x1
(the parameter count is the same).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from reslab.models.layers import ResidualBlock, make_shortcut
from reslab.models.resnet import (CIFAR_PLANES, IMAGENET_STAGES, BasicLayers, Bottleneck, BottleneckLayers,
                                  ResNet, imagenet_resnet)
from reslab.registry import register_model

HE2016 = "He et al. 2016, Identity Mappings"


def preact_shortcut(option: str, in_channels: int, out_channels: int, stride: int) -> Optional[nn.Module]:
    """The shortcut h(x) of a pre-activation unit: :func:`make_shortcut`'s options, but a
    projection is a bare 1x1 conv (as in He et al. 2016's code and the Wide ResNet code): its
    input is already BN-ReLU'd and its output joins an un-normalised sum."""
    shortcut = make_shortcut(option, in_channels, out_channels, stride)
    if isinstance(shortcut, nn.Sequential):  # conv1x1 + BN: keep the conv
        return nn.Sequential(shortcut[0])
    return shortcut


class PreActivation:
    """Mixin: the pre-activation unit around a branch's layers, ``h(x') + F(x')`` or, for an
    identity shortcut, ``x + F(x')``, with ``x' = ReLU(BN(x))`` and no activation after the
    addition (He et al. 2016, Fig. 4e). Listed first among a unit's bases, so that its
    ``zero_init_last`` replaces the layers' one (which zeroes a BN this unit does not have)."""

    preactivation = True  # tells ResNet: conv-only CIFAR stem, final BN-ReLU before pooling
    expansion: int
    # The layers' last convolution and the BN after it, which a pre-activation branch does not
    # have: there, that BN is the next unit's pre-activation (or the network's final_bn).
    last_layers: tuple[str, str]

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 groups: int = 1, width_per_group: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.preact = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self._build_layers(in_channels, planes, stride, groups, width_per_group, dropout)
        setattr(self, self.last_layers[1], nn.Identity())
        self.downsample = preact_shortcut(shortcut, in_channels, planes * self.expansion, stride)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preactivated = self.preact(x)
        return (x if self.downsample is None else preactivated), preactivated

    def shortcut_input(self, x: Tensor) -> Tensor:
        return x if self.downsample is None else self.preact(x)

    def zero_init_last(self) -> None:
        """Zero the branch's last conv, so the unit starts as the identity."""
        nn.init.zeros_(getattr(self, self.last_layers[0]).weight)


class PreActBasicBlock(PreActivation, BasicLayers, ResidualBlock):
    """Pre-activation basic unit: x + BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3 (He et al. 2016, Fig. 4e)."""

    last_layers = ("conv2", "bn2")


class PreActBottleneck(PreActivation, BottleneckLayers, ResidualBlock):
    """Pre-activation bottleneck: x + BN-ReLU-1x1-BN-ReLU-3x3-BN-ReLU-1x1, expansion 4 (He et al. 2016, sec. 4.1)."""

    last_layers = ("conv3", "bn3")


# Layers per unit, which fixes the depth rule: 6n+2 for basic units, 9n+2 for bottlenecks.
CIFAR_UNIT_LAYERS = {PreActBasicBlock: (2, "20, 56, 110"), PreActBottleneck: (3, "164, 1001")}


def cifar_preact_resnet(depth: int, block: type[ResidualBlock] = PreActBasicBlock, shortcut: str = "B",
                        **kwargs) -> ResNet:
    """The CIFAR pre-activation ResNet of the given depth (He et al. 2016, sec. 4 and Table 3):
    conv3x3(16), 3 stages of n units (planes 16/32/64; x4 outputs for bottlenecks), BN-ReLU.

    Shortcut option B (the paper's code): identity, or a 1x1 projection where the shape
    changes, which for bottlenecks includes the first unit (16 -> 64 channels).
    """
    if block not in CIFAR_UNIT_LAYERS:
        raise ValueError(f"block must be PreActBasicBlock or PreActBottleneck, got {block!r}")
    layers, examples = CIFAR_UNIT_LAYERS[block]
    if not isinstance(depth, int) or depth < 3 * layers + 2 or (depth - 2) % (3 * layers):
        raise ValueError(f"a CIFAR pre-activation ResNet of {block.__name__} units has depth "
                         f"{3 * layers}n+2 ({examples}), got {depth!r}")
    kwargs.setdefault("num_classes", 10)
    return ResNet(block, [(depth - 2) // (3 * layers)] * 3, CIFAR_PLANES, stem="cifar", stem_width=16,
                  shortcut=shortcut, **kwargs)


def imagenet_preact_resnet(depth: int, **kwargs) -> ResNet:
    """An ImageNet pre-activation ResNet (He et al. 2016, sec. 5): the stages of He et al. 2015,
    Table 1, stem conv7x7-BN-ReLU-maxpool as fb.resnet.torch's preresnet, final BN-ReLU.

    Every unit pre-activates, the first one too (fb.resnet.torch leaves the BN-ReLU out of all
    units of the first stage, since the stem ends on one).
    """
    block = PreActBottleneck if IMAGENET_STAGES[depth][0] is Bottleneck else PreActBasicBlock
    return imagenet_resnet(depth, block, **kwargs)


def _register_cifar(depth: int, block: type[ResidualBlock], params: float) -> None:
    @register_model(f"preact_resnet{depth}", family="preact-resnet-cifar", paper=HE2016, input_size=32,
                    published_params=params, aliases=(f"preresnet{depth}", f"preactresnet{depth}"))
    def build(**kwargs) -> ResNet:
        return cifar_preact_resnet(depth, block, **kwargs)

    kind = "bottleneck" if block is PreActBottleneck else "basic"
    build.__doc__ = f"CIFAR pre-activation ResNet-{depth}, {kind} units (He et al. 2016, Table 3)."


for _depth, _block, _params in [(110, PreActBasicBlock, 1.7e6), (164, PreActBottleneck, 1.7e6),
                                (1001, PreActBottleneck, 10.2e6)]:
    _register_cifar(_depth, _block, _params)


def _register_imagenet(depth: int) -> None:
    @register_model(f"preact_resnet{depth}", family="preact-resnet", paper=HE2016, input_size=224,
                    aliases=(f"preresnet{depth}", f"preactresnet{depth}"))
    def build(**kwargs) -> ResNet:
        return imagenet_preact_resnet(depth, **kwargs)

    build.__doc__ = f"Pre-activation ResNet-{depth} for ImageNet (He et al. 2016, sec. 5; fb.resnet.torch stem)."


for _depth in (18, 34, 50, 101, 152, 200):
    _register_imagenet(_depth)
