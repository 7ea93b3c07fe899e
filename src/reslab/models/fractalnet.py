"""FractalNet (Larsson, Maire, Shakhnarovich, "FractalNet: Ultra-Deep Neural Networks without
Residuals", ICLR 2017, arXiv 1605.07648) for CIFAR.

A fractal block of C columns follows the expansion rule (sec. 2, eq. 1)::

    f_1(z) = conv(z)
    f_{C+1}(z) = join(f_C(f_C(z)), conv(z))

with conv = conv3x3-BN-ReLU and join = the element-wise mean. As in the paper's Fig. 1 and the
authors' Caffe code, nested joins that meet at one depth are one join of all their inputs, so
the join closing a block averages C inputs. Column c (0 = shallowest) has 2**c convolutions;
the longest path of a block is 2**(C-1) layers and the network's is B * 2**(C-1). Blocks are
separated by 2x2 max-pooling; after the last one, a linear classifier.

FractalNet is not a residual network: it has no :class:`~reslab.models.layers.ResidualBlock`,
so ``residual_blocks(model) == []`` and the registry refuses ``stochastic_depth`` for it.
Its own regularizer is drop-path (sec. 3), see :class:`FractalNet`.

The paper describes join-then-pool; its Caffe code max-pools each column before the block's
last join. Here the join comes first, as described (one column alone is the same either way).

Parameter counts: the paper gives 38.6M for its 20-layer net (C=3, B=5, 64..512 channels),
but that net has 33.7M parameters (as khanrc/pt.fractalnet also found): 38.5M is what one gets
by counting every convolution as channels-out to channels-out, which the first convolution of
each column is not. No count is claimed here for it. The paper's 40-layer net (C=4, 22.9M) is
not the uniform-width one (76.1M); it narrows the columns in a way the paper sketches too
briefly to rebuild, so ``fractalnet40`` keeps the uniform widths.
"""

# No `from __future__ import annotations` here: TorchScript reads the class annotations below
# (types of attributes it must script) and cannot resolve them as strings.

from collections.abc import Sequence
from functools import partial
from typing import Optional, Union

import torch
from torch import Tensor, nn

from reslab.models.features import FeatureStep
from reslab.models.layers import ClassifierNet, conv3x3
from reslab.registry import register_model

LARSSON2016 = "Larsson et al. 2016, FractalNet"
MAX_WIDTH = 512
# The paper's per-block dropout rates (sec. 4), used with drop-path in its "+ drop-path + dropout" rows.
PAPER_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4)
PAPER_LOCAL_DROP_PATH = 0.15
PAPER_GLOBAL_FRACTION = 0.5


class FractalConv(nn.Module):
    """Fractal conv unit: conv3x3-[dropout]-BN-ReLU (Larsson et al. 2016, sec. 4; dropout placed as in their Caffe code)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0, column: int = 0) -> None:
        super().__init__()
        self.conv = conv3x3(in_channels, out_channels)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.column = column  # which column of the block the unit belongs to (0 = shallowest)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.dropout(self.conv(x))))


def join(paths: list[Tensor], drop_probability: float = 0.0, training: bool = False) -> Tensor:
    """Element-wise mean of ``paths``; in training, local drop-path first drops each input with
    probability ``drop_probability`` and keeps one at random if all were dropped (Larsson et al.
    2016, sec. 3: one draw per mini-batch per join, as the Caffe code)."""
    if training and drop_probability > 0.0 and len(paths) > 1:
        kept: list[Tensor] = []
        for path in paths:
            if bool(torch.rand(1) >= drop_probability):
                kept.append(path)
        if len(kept) == 0:
            kept.append(paths[int(torch.randint(len(paths), [1]).item())])
        paths = kept
    out = paths[0]
    for path in paths[1:]:
        out = out + path
    return out / len(paths) if len(paths) > 1 else out


class FractalPath(nn.Module):
    """Fractal block f_C(z) = join(second(first(z)), conv(z)); first, second = f_{C-1}; f_1 = conv (Larsson et al. 2016)."""

    def __init__(self, columns: int, in_channels: int, out_channels: int, dropout: float = 0.0, column: int = 0) -> None:
        super().__init__()
        self.columns = columns
        self.local_drop_path = 0.0
        self.conv = FractalConv(in_channels, out_channels, dropout, column)
        self.first = FractalPath(columns - 1, in_channels, out_channels, dropout, column + 1) if columns > 1 else None
        self.second = FractalPath(columns - 1, out_channels, out_channels, dropout, column + 1) if columns > 1 else None

    def paths(self, x: Tensor) -> list[Tensor]:
        """The inputs of the join that closes f_C: column 0's conv(z), then the deeper columns."""
        outputs = [self.conv(x)]
        if self.first is not None and self.second is not None:
            outputs.extend(self.second.paths(self.first(x)))
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return join(self.paths(x), self.local_drop_path, self.training)

    def column(self, x: Tensor, index: int) -> Tensor:
        """Column ``index`` alone: its 2**index convolutions, no joins (global drop-path)."""
        if index == 0 or self.first is None or self.second is None:
            return self.conv(x)
        return self.second.column(self.first.column(x, index - 1), index - 1)


class FractalNet(ClassifierNet):
    """FractalNet for CIFAR: ``blocks`` fractal blocks of ``columns`` columns, each followed by
    2x2 max-pooling, then global average pooling (a no-op after 5 poolings of a 32x32 image) and
    ``fc`` (Larsson et al. 2016, sec. 4).

    ``channels`` defaults to 64, 128, 256, 512, 512 (doubling per block up to 512). ``dropout``
    is one rate for every block or one per block (the paper: ``PAPER_DROPOUT`` =
    0, 0.1, 0.2, 0.3, 0.4).

    Drop-path (sec. 3) is off by default; the paper's training setting is::

        from reslab import create_model
        from reslab.models.fractalnet import PAPER_DROPOUT

        model = create_model("fractalnet20", local_drop_path=0.15, global_drop_path=0.5, dropout=PAPER_DROPOUT)
        model.set_drop_path(local=0.15, global_fraction=0.5)  # the same drop-path, on a built model
        ...train...
        model.eval_column = model.num_columns - 1  # then evaluate the deepest column alone

    In training, each mini-batch is a *global* one with probability ``global_drop_path``: one
    column, drawn uniformly, runs alone through every block; the others are *local* ones: every
    join drops each of its inputs with probability ``local_drop_path``, keeping at least one.
    ``model.global_column`` tells which column the last mini-batch used (-1: local).

    Single columns (the paper's "deepest column alone" rows): set
    ``model.eval_column = k`` (0 = the shallowest, ``columns - 1`` = the deepest, ``None`` = the
    whole fractal); in eval mode the network then runs column k alone. Drop-path and
    ``eval_column`` are plain attributes, kept by pickling, deep copies and ``torch.jit.script``.
    """

    eval_column: Optional[int]

    def __init__(
        self,
        columns: int = 3,
        blocks: int = 5,
        *,
        channels: Optional[Sequence[int]] = None,
        dropout: Union[float, Sequence[float]] = 0.0,
        local_drop_path: float = 0.0,
        global_drop_path: float = 0.0,
        num_classes: int = 10,
        in_channels: int = 3,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if columns < 1 or blocks < 1:
            raise ValueError(f"a FractalNet needs at least 1 column and 1 block, got columns={columns} blocks={blocks}")
        channels = list(channels) if channels is not None else [min(64 * 2**i, MAX_WIDTH) for i in range(blocks)]
        dropouts = [float(dropout)] * blocks if isinstance(dropout, (int, float)) else [float(p) for p in dropout]
        if len(channels) != blocks or len(dropouts) != blocks:
            raise ValueError(f"give one channel count and one dropout rate per block ({blocks}); "
                             f"got channels={channels} dropout={dropouts}")
        if not all(0.0 <= p < 1.0 for p in dropouts):
            raise ValueError(f"dropout rates must be in [0, 1), got {dropouts}")
        self.num_columns = columns
        self.depth = blocks * 2 ** (columns - 1)  # convolutions on the longest path (the paper's "20 layers")
        self.blocks = nn.ModuleList()
        for width, p in zip(channels, dropouts):
            self.blocks.append(FractalPath(columns, in_channels, width, p))
            in_channels = width
        self.pool = nn.MaxPool2d(2)
        self.channels = channels
        self._build_head(in_channels, num_classes, global_pool=global_pool)
        self.global_drop_path = 0.0
        self.global_column = -1
        self.forward_column = -1  # the column of the pass in progress (set once per pass)
        self.eval_column = None
        self.set_drop_path(local_drop_path, global_drop_path)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # Caffe's "xavier" filler: U(+-sqrt(3 / fan_in))
                nn.init.kaiming_uniform_(m.weight, a=1.0)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_drop_path(self, local: float = PAPER_LOCAL_DROP_PATH, global_fraction: float = PAPER_GLOBAL_FRACTION) -> None:
        """Every join drops each input with probability ``local``; a fraction ``global_fraction``
        of the mini-batches runs one random column alone. ``set_drop_path(0, 0)`` turns both off."""
        if not 0.0 <= local <= 1.0 or not 0.0 <= global_fraction <= 1.0:
            raise ValueError(f"drop-path probabilities must be in [0, 1], got local={local} global_fraction={global_fraction}")
        self.global_drop_path = float(global_fraction)
        for m in self.modules():
            if isinstance(m, FractalPath):
                m.local_drop_path = float(local)

    def _active_column(self) -> int:
        """The column this forward pass runs alone, or -1 for the whole fractal."""
        if self.training:
            column = -1
            if self.global_drop_path > 0.0 and bool(torch.rand(1) < self.global_drop_path):
                column = int(torch.randint(self.num_columns, [1]).item())
            self.global_column = column
            return column
        column = self.eval_column
        if column is None:
            return -1
        if not 0 <= column < self.num_columns:
            raise ValueError(f"eval_column must be None or a column in [0, {self.num_columns - 1}], got {column}")
        return column

    def _start_forward(self) -> None:
        self.forward_column = self._active_column()

    @torch.jit.unused
    def _run_block(self, block: FractalPath, x: Tensor) -> Tensor:
        return block(x) if self.forward_column < 0 else block.column(x, self.forward_column)

    @torch.jit.unused
    def feature_steps(self) -> list[FeatureStep]:
        """Each fractal block's output (before its max-pool); the pool starts the next level."""
        return [FeatureStep(f"blocks.{i}", width, 2**i, [partial(self._run_block, block)],
                            pre=[self.pool] if i else [])
                for i, (width, block) in enumerate(zip(self.channels, self.blocks))]

    @torch.jit.unused
    def features_tail(self) -> Optional[nn.Module]:
        return self.pool

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._features_by_steps(x)
        column = self._active_column()
        for block in self.blocks:
            x = self.pool(block(x) if column < 0 else block.column(x, column))
        return x



@register_model("fractalnet20", family="fractalnet", paper=LARSSON2016, input_size=32)
def fractalnet20(**kwargs) -> FractalNet:
    """FractalNet-20 for CIFAR (Larsson et al. 2016, Table 1): C=3 columns, B=5 blocks, 64..512 channels."""
    kwargs.setdefault("columns", 3)
    return FractalNet(**kwargs)


@register_model("fractalnet40", family="fractalnet", paper=LARSSON2016, input_size=32)
def fractalnet40(**kwargs) -> FractalNet:
    """FractalNet-40 for CIFAR: C=4 columns, B=5 blocks, uniform 64..512 channels (76.1M)."""
    kwargs.setdefault("columns", 4)
    return FractalNet(**kwargs)
