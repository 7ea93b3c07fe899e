"""Deep fusion on CIFAR: merge-and-run networks (DMRNet) and deeply-fused nets (DFN).

* Merge-and-run (Zhao, Wang, Li, Tu, Zeng, "Deep Convolutional Neural Networks with Merge-and-Run
  Mappings", IJCAI 2018; first titled "On the Connection of Deep Fusion to Ensembling", arXiv
  1611.07718; code zlmzju/fusenet, where it is ``cross``, the paper's DFN-MR). A unit has two
  residual branches, one per stream: the streams' inputs are averaged (merge) and the average is
  added to each branch's output (run), ``y_i = ReLU(F_i(x_i) + (h(x_1) + h(x_2)) / 2)`` (Fig.
  1(c)). Both streams travel as one tensor of 2C channels, so the two branches are one
  stack of convolutions with a group per stream and the merge is a parameter-free shortcut:
  the unit is a plain :class:`~reslab.models.layers.ResidualBlock` and every analysis applies.
* Deeply-fused nets (Wang, Wei, Zhang, Zeng 2016, arXiv 1605.07716): two base networks, one
  deep and one shallow, whose intermediate representations are fused by summation after every
  block; the fused output feeds the next block of both. ResNet is the special case of a shallow
  network of identities. See :class:`DeepFusionBlock` for the configuration registered here.
"""

# No `from __future__ import annotations` here: TorchScript reads the class annotations below
# (types of attributes it must script) and cannot resolve them as strings.

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.models.features import FeatureStep, stem_and_stage_steps
from reslab.models.layers import ClassifierNet, ResidualBlock, conv3x3, init_weights
from reslab.models.resnet import BasicLayers, PostActivationBlock, ResNet, cifar_resnet
from reslab.registry import register_model

ZHAO2018 = "Zhao et al. 2018, Merge-and-Run Mappings"
WANG2016 = "Wang et al. 2016, Deeply-Fused Nets"
STREAMS = 2


class MergeStreams(nn.Module):
    """Merge-and-run shortcut: the streams' mean, copied to every output stream (Zhao et al. 2018, Fig. 1(c)).

    No parameters. One input stream is its own average.
    """

    def __init__(self, in_streams: int = STREAMS, out_streams: int = STREAMS) -> None:
        super().__init__()
        if in_streams not in (1, STREAMS) or out_streams not in (1, STREAMS):
            raise ValueError(f"a merge takes 1 or {STREAMS} streams in and gives 1 or {STREAMS} out; "
                             f"got {in_streams} and {out_streams}")
        self.in_streams = in_streams
        self.out_streams = out_streams

    def forward(self, x: Tensor) -> Tensor:  # literal 2s: TorchScript reads no global constants
        if self.in_streams == 2:
            first, second = x.chunk(2, dim=1)
            x = 0.5 * (first + second)
        return torch.cat([x, x], dim=1) if self.out_streams == 2 else x

    def extra_repr(self) -> str:
        return f"in_streams={self.in_streams}, out_streams={self.out_streams}"


def merge_shortcut(in_channels: int, planes: int, stride: int, in_streams: int, out_streams: int) -> nn.Module:
    """h of a merge-and-run unit: the merge alone, or (where the shape changes) a 1x1 projection +
    BN per stream (one conv with a group per stream) followed by the merge, as the authors' code."""
    if stride == 1 and in_channels == planes:
        return MergeStreams(in_streams, out_streams)
    return nn.Sequential(nn.Conv2d(in_streams * in_channels, STREAMS * planes, 1, stride, groups=in_streams, bias=False),
                         nn.BatchNorm2d(STREAMS * planes), MergeStreams(STREAMS, out_streams))


class TwoStreamLayers(BasicLayers):
    """Mixin: BasicLayers' conv3x3-BN-ReLU-conv3x3-BN on two streams, grouped by stream (Zhao et al. 2018).

    So F(x) = [F_1(x_1), F_2(x_2)]: neither branch sees the other stream. ``groups`` is the
    number of input streams: 1 where both branches read one stream (the first unit, fed by the
    stem), so their first convolutions stack into one ungrouped conv.
    """

    def _build_layers(self, in_channels: int, planes: int, stride: int, groups: int, width_per_group: int, dropout: float) -> None:
        super()._build_layers(in_channels, planes, stride, 1, width_per_group, dropout)
        # BasicLayers builds dense convolutions; one group per stream keeps the branches apart.
        self.conv1 = conv3x3(in_channels, planes, stride, groups)
        self.conv2 = conv3x3(planes, planes, groups=STREAMS)


class MergeAndRunBlock(TwoStreamLayers, ResidualBlock):
    """Merge-and-run unit: ReLU(F_i(x_i) + mean(h(x_1), h(x_2))), F_i = conv3x3-BN-ReLU-conv3x3-BN (Zhao et al. 2018).

    ``in_streams=1``: the first unit, both branches read the stem's output. ``out_streams=1``:
    the network's last unit, which (as the authors' code) sums both branches and the merge into
    one stream for the classifier: ReLU(avg + F_1(x_1) + F_2(x_2)). ``in_channels`` and
    ``planes`` are per stream.
    """

    out_streams: int

    def __init__(self, in_channels: int, planes: int, stride: int = 1, in_streams: int = STREAMS,
                 out_streams: int = STREAMS, dropout: float = 0.0) -> None:
        super().__init__()
        self._build_layers(in_streams * in_channels, STREAMS * planes, stride, in_streams, 64, dropout)
        self.downsample = merge_shortcut(in_channels, planes, stride, in_streams, out_streams)
        self.out_streams = out_streams

    def merge(self, identity: Tensor, residual: Optional[Tensor]) -> Tensor:
        if residual is not None and self.out_streams == 1:
            first, second = residual.chunk(2, dim=1)
            residual = first + second
        return F.relu(identity if residual is None else identity + residual)


class DMRNet(ClassifierNet):
    """Deep merge-and-run network for CIFAR (Zhao et al. 2018; zlmzju/fusenet ``cross``).

    A conv3x3-BN-ReLU stem of 16k channels (k = ``widen_factor``) feeds both streams; three
    stages ``layer1..layer3`` of n merge-and-run units with 16k, 32k, 64k channels per stream
    (feature maps 32, 16, 8); the last unit joins the streams; global average pooling and
    ``fc``. ``depth`` = 6n + 2 is the depth along one stream, as the paper's tables (the code's
    ``--depth`` is that of the plain net with both streams' layers, 12n + 2).
    """

    def __init__(self, depth: int = 56, widen_factor: int = 1, *, num_classes: int = 10, in_channels: int = 3,
                 dropout: float = 0.0, zero_init_residual: bool = False, global_pool: str = "avg") -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a DMRNet has depth 6n+2 along one stream (26, 32, 50, 56, 110), got {depth}")
        if widen_factor < 1 or num_classes < 1:
            raise ValueError(f"widen_factor and num_classes must be at least 1, got {widen_factor} and {num_classes}")
        units = (depth - 2) // 6
        width = 16 * widen_factor
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.stem_width, self.stem_stride = width, 1
        # Per level, both streams' channels; the last unit joins them into one stream.
        self.stage_channels = [STREAMS * width, STREAMS * 2 * width, 4 * width]
        in_channels, in_streams = width, 1
        for stage in range(3):
            planes, blocks = width * 2**stage, []
            for j in range(units):
                last = stage == 2 and j == units - 1
                blocks.append(MergeAndRunBlock(in_channels, planes, 2 if stage and not j else 1, in_streams,
                                               1 if last else STREAMS, dropout))
                in_channels, in_streams = planes, STREAMS
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self._build_head(in_channels, num_classes, global_pool=global_pool)
        init_weights(self, zero_init_residual)

    @torch.jit.unused
    def feature_steps(self) -> list[FeatureStep]:
        """The stem's output, then each stage's (both streams stacked, one stream after the last unit)."""
        return stem_and_stage_steps(self, ["layer1", "layer2", "layer3"], self.stage_channels)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._features_by_steps(x)
        return self.layer3(self.layer2(self.layer1(self.relu(self.bn1(self.conv1(x))))))



class DeepFusionBlock(BasicLayers, PostActivationBlock):
    """Deep fusion block: ReLU(conv3x3-BN(x) + conv3x3-BN-ReLU-conv3x3-BN(x)) (Wang et al. 2016).

    The fusion sums the blocks of the two base networks: the deep one's is the branch F, the
    shallow one's the shortcut h (``downsample``), so a lesion or stochastic depth removes the
    deep block and keeps the shallow one; with identities for h it is ResNet's basic block.
    ``shortcut`` is accepted for :class:`ResNet` and unused.
    """

    def __init__(self, in_channels: int, planes: int, stride: int = 1, shortcut: str = "B",
                 groups: int = 1, width_per_group: int = 64, dropout: float = 0.0) -> None:
        ResidualBlock.__init__(self)
        self._build_layers(in_channels, planes, stride, groups, width_per_group, dropout)
        self.downsample = nn.Sequential(conv3x3(in_channels, planes, stride), nn.BatchNorm2d(planes))


# ---------------------------------------------------------------------------------------
# Registered variants. DMRNet: the three CIFAR nets of the fusenet README (DFN-MR1..3, the
# paper's DMRNet and DMRNet-Wide), widths and units from the authors' code.

def _register_dmrnet(name: str, depth: int, widen_factor: int, params: Optional[float], alias: str) -> None:
    @register_model(name, family="dmrnet", paper=ZHAO2018, input_size=32, published_params=params, aliases=(alias,))
    def build(**kwargs) -> DMRNet:
        kwargs.setdefault("depth", depth)
        kwargs.setdefault("widen_factor", widen_factor)
        return DMRNet(**kwargs)

    wide = f", {widen_factor}x wide" if widen_factor > 1 else ""
    build.__doc__ = (f"DMRNet-{depth}{wide} for CIFAR ({alias.upper().replace('_', '-')}, Zhao et al. 2018): "
                     f"3 x {(depth - 2) // 6} merge-and-run units.")


# DFN-MR3 is published as 24.8M, but the code's configuration (3 x 8 units, widen factor 4,
# which also gives MR1 and MR2 to 0.6%) has 24.15M (-2.6%): no count is claimed for it.
for _name, _depth, _widen, _params, _alias in [("dmrnet56", 56, 1, 1.7e6, "dfn_mr1"),
                                               ("dmrnet32_wide", 32, 4, 14.9e6, "dfn_mr2"),
                                               ("dmrnet50_wide", 50, 4, None, "dfn_mr3")]:
    _register_dmrnet(_name, _depth, _widen, _params, _alias)


@register_model("dfn56", family="dfn", paper=WANG2016, input_size=32)
def dfn56(**kwargs) -> ResNet:
    """Deeply-fused net for CIFAR: a 56-layer and a 29-layer base network fused after every block."""
    return cifar_resnet(56, DeepFusionBlock, **kwargs)
