"""Layers shared by every family of the zoo.

* :class:`ResidualBlock` is the base of every block that computes ``post(h(x) + F(x))``
  (He et al. 2015, eq. 1). Analyses (lesion study, path lengths, residual responses,
  stochastic depth) act on residual blocks only through the attributes this base defines,
  so they work on every residual model without per-architecture code.
* :class:`StochasticDepth` is the one drop-path layer (Huang et al. 2016), in both modes
  (per mini-batch as the paper, per sample as timm) and both scalings.
* :class:`ZeroPadShortcut` is the parameter-free shortcut option A (He et al. 2015, sec. 3.3).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.models.features import FeatureNet

DROP_MODES = ("batch", "sample")
DROP_SCALINGS = ("paper", "inverted")
GRADIENT_ROUTES = ("both", "branch", "skip")
SHORTCUT_OPTIONS = ("A", "B", "C")
ZERO_PAD_PLACEMENTS = ("end", "both")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias (a BN always follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


class StochasticDepth(nn.Module):
    """Drop a residual branch with probability 1 - p (Huang et al. 2016, eq. 2-3).

    ``survival`` is p_l. ``mode='batch'`` draws one decision per mini-batch, as the paper's
    code does; the decision is taken by the block *before* its branch is computed, so a
    dropped branch costs nothing (:meth:`keep_batch`). ``mode='sample'`` draws one decision
    per sample (timm's ``drop_path``). ``scaling='paper'`` leaves the branch unscaled in
    training and multiplies it by p at test time; ``'inverted'`` divides by p in training and
    is the identity at test time. Both make the test-time output the training expectation.

    The layer also marks where a block's residual F(x) is complete: a forward hook on it sees
    F(x) after the block's last BN and before the addition.
    """

    def __init__(self, survival: float = 1.0, mode: str = "batch", scaling: str = "paper") -> None:
        super().__init__()
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival probability must be in (0, 1], got {survival}")
        if mode not in DROP_MODES:
            raise ValueError(f"drop mode must be one of {DROP_MODES}, got {mode!r}")
        if scaling not in DROP_SCALINGS:
            raise ValueError(f"drop scaling must be one of {DROP_SCALINGS}, got {scaling!r}")
        self.survival = float(survival)
        self.mode = mode
        self.scaling = scaling

    def keep_batch(self, x: Optional[Tensor] = None) -> bool:
        """Per-batch mode: draw whether this mini-batch (the block's input ``x``) computes the
        branch at all. Under torch.fx tracing (``x`` a Proxy) a Python bool would freeze one draw
        into the graph, so the branch is kept and :meth:`forward` draws in the graph instead."""
        if not self.training or self.mode != "batch" or self.survival >= 1.0:
            return True
        if not torch.jit.is_scripting():  # TorchScript compiles no isinstance of fx.Proxy; it skips this branch
            if isinstance(x, torch.fx.Proxy):
                return True
        return bool(torch.rand(()) < self.survival)

    def forward(self, residual: Tensor) -> Tensor:
        p = self.survival
        if p >= 1.0:
            return residual
        if not self.training:
            return residual * p if self.scaling == "paper" else residual
        if self.mode == "sample":
            shape = [residual.shape[0]] + [1] * (residual.dim() - 1)
            keep = torch.empty(shape, dtype=residual.dtype, device=residual.device).bernoulli_(p)
            residual = residual * keep
        elif not torch.jit.is_scripting():
            if isinstance(residual, torch.fx.Proxy):  # traced batch mode: one draw per call, a node of the graph
                residual = residual * (torch.rand_like(residual.new_empty(())) < p).to(residual.dtype)
        return residual / p if self.scaling == "inverted" else residual

    def extra_repr(self) -> str:
        return f"survival={self.survival:.4g}, mode={self.mode}, scaling={self.scaling}"


class ZeroPadShortcut(nn.Module):
    """Shortcut option A: subsample by the stride, zero-pad the new channels (no parameters).

    He et al. 2015, sec. 3.3 and 4.2. ``pool='avg'`` averages instead of subsampling, as the
    stochastic-depth code does. ``placement='end'`` appends the zero channels (fb.resnet.torch's
    concatenation); ``'both'`` puts half before and half after the input's channels, as
    akamaster/pytorch_resnet_cifar10 (``planes // 4`` each side), whose weights need it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, pool: str = "subsample",
                 placement: str = "end") -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option A can only add channels; use shortcut='B' to reduce them")
        if pool not in ("subsample", "avg"):
            raise ValueError(f"pool must be 'subsample' or 'avg', got {pool!r}")
        if placement not in ZERO_PAD_PLACEMENTS:
            raise ValueError(f"zero_pad must be one of {ZERO_PAD_PLACEMENTS}, got {placement!r}")
        self.extra_channels = out_channels - in_channels
        self.stride = stride
        self.pool = pool
        self.placement = placement

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            if self.pool == "avg":
                x = F.avg_pool2d(x, self.stride, self.stride)
            else:
                x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            before = self.extra_channels // 2 if self.placement == "both" else 0
            x = F.pad(x, (0, 0, 0, 0, before, self.extra_channels - before))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}, pool={self.pool}, placement={self.placement}"


def make_shortcut(option: str, in_channels: int, out_channels: int, stride: int) -> Optional[nn.Module]:
    """The shortcut h(x) of a block, by He et al. 2015's options (sec. 3.3).

    'A': identity, or zero-padding :class:`ZeroPadShortcut` where the shape changes;
    'B': identity, or a 1x1 projection + BN where the shape changes (torchvision's choice);
    'C': a projection on every block. ``None`` means the identity.
    """
    if option not in SHORTCUT_OPTIONS:
        raise ValueError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {option!r}")
    reshapes = stride != 1 or in_channels != out_channels
    if option == "A":
        return ZeroPadShortcut(in_channels, out_channels, stride) if reshapes else None
    if option == "B" and not reshapes:
        return None
    return nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))


class ResidualBlock(nn.Module):
    """Base of residual blocks: ``y = post(h(x) + F(x))`` (He et al. 2015, eq. 1).

    A subclass defines :meth:`residual` (the branch F) and, as needed, ``downsample``
    (the shortcut h; ``None`` is the identity), :meth:`split` (pre-activation blocks feed the
    shortcut and the branch different inputs) and :meth:`merge` (how h(x) and F(x) combine,
    and the post-activation).

    Three attributes drive the analyses and stochastic depth; none adds a state-dict key:

    * ``drop_path``: the block's :class:`StochasticDepth` (survival 1 = never dropped).
    * ``branch_enabled``: ``False`` deletes the branch (lesion study, Veit et al. 2016):
      the block computes ``post(h(x))`` only.
    * ``gradient_route``: ``'branch'`` lets gradient flow back through F only and ``'skip'``
      through h only (the path-length sampling of Veit et al. 2016, sec. 6); the forward
      values are unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.downsample = None
        self.drop_path = StochasticDepth()
        self.branch_enabled = True
        self.gradient_route = "both"

    def residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Inputs of (shortcut, branch); the same tensor unless pre-activation shares a BN."""
        return x, x

    def shortcut_input(self, x: Tensor) -> Tensor:
        """The shortcut's input alone, for a dropped or deleted branch (so that, e.g., a
        pre-activation unit without projection skips its BN-ReLU)."""
        return self.split(x)[0]

    def merge(self, identity: Tensor, residual: Optional[Tensor]) -> Tensor:
        """h(x) + F(x); ``residual`` is ``None`` where the branch is dropped or deleted."""
        return identity if residual is None else identity + residual

    def forward(self, x: Tensor) -> Tensor:
        if not self.branch_enabled or not self.drop_path.keep_batch(x):
            shortcut_in = self.shortcut_input(x)
            return self.merge(shortcut_in if self.downsample is None else self.downsample(shortcut_in), None)
        shortcut_in, branch_in = self.split(x)
        identity = shortcut_in if self.downsample is None else self.downsample(shortcut_in)
        residual = self.drop_path(self.residual(branch_in))
        if self.gradient_route == "skip":
            residual = residual.detach()
        elif self.gradient_route == "branch":
            identity = identity.detach()
        return self.merge(identity, residual)


POOL_TYPES = ("avg", "max", "avgmax", "catavgmax", "")


class GlobalPool(nn.Module):
    """Global pooling of the head, timm's ``global_pool`` types: ``'avg'`` (He et al. 2015),
    ``'max'``, ``'avgmax'`` (their mean), ``'catavgmax'`` (both, concatenated: twice the
    features), ``''`` (none: the map passes through unflattened)."""

    def __init__(self, pool_type: str = "avg") -> None:
        super().__init__()
        if pool_type is None:
            pool_type = ""
        if pool_type not in POOL_TYPES:
            raise ValueError(f"global_pool must be one of 'avg', 'max', 'avgmax', 'catavgmax' or '' (no pooling), got {pool_type!r}")
        self.pool_type = pool_type

    def feature_multiplier(self) -> int:
        return 2 if self.pool_type == "catavgmax" else 1

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            return x.mean((2, 3))
        peak = x.amax((2, 3))
        if self.pool_type == "max":
            return peak
        if self.pool_type == "avgmax":
            return 0.5 * (x.mean((2, 3)) + peak)
        return torch.cat([x.mean((2, 3)), peak], 1)

    def extra_repr(self) -> str:
        return f"pool_type={self.pool_type!r}"


class ClassifierNet(FeatureNet):
    """Base of the zoo's networks: ``forward_features`` (the subclass's stem and stages), then
    global pooling, optional dropout and ``fc`` -- timm's ``forward_features`` /
    ``forward_head`` / ``get_classifier`` / ``reset_classifier`` interface on every model, and
    (from :class:`~reslab.models.features.FeatureNet`) its feature interface.

    ``num_classes=0`` removes the classifier (``fc`` is the identity: pooled features come out);
    ``global_pool`` is a :class:`GlobalPool` type.
    """

    def _build_head(self, num_features: int, num_classes: int, dropout: float = 0.0, global_pool: str = "avg") -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {dropout}")
        self.num_features = num_features
        self.grad_checkpointing = False
        self.head_dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.reset_classifier(num_classes, global_pool)

    def forward_features(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooling, dropout and ``fc``; ``pre_logits=True`` stops before ``fc`` (timm)."""
        x = self.head_dropout(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.unused
    def get_classifier(self) -> nn.Module:
        """The classifier, ``fc`` (``nn.Identity`` when removed)."""
        return self.fc

    @torch.jit.unused
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new, freshly initialised ``fc`` with ``num_classes`` outputs (fine-tuning); 0 removes it
        (pooled features come out, as timm). ``global_pool`` sets the pooling (``None`` keeps it)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0 removes the classifier), got {num_classes!r}")
        pool = GlobalPool(self.global_pool.pool_type if global_pool is None and hasattr(self, "global_pool") else
                          ("avg" if global_pool is None else global_pool))
        if pool.pool_type == "" and num_classes:
            raise ValueError("global_pool='' (no pooling) needs num_classes=0: a linear classifier takes pooled features")
        self.num_classes = num_classes
        self.global_pool = pool
        self.fc = nn.Linear(self.num_features * pool.feature_multiplier(), num_classes) if num_classes else nn.Identity()


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (fan-out) initialisation of convolutions (He et al. 2015b), BN weight 1 and bias 0;
    with ``zero_init_residual``, each residual branch's last layer starts at zero (Goyal et al.
    2017), so every block starts as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, ResidualBlock) and hasattr(m, "zero_init_last"):
                m.zero_init_last()


def residual_blocks(model: nn.Module) -> list[tuple[str, ResidualBlock]]:
    """The model's residual blocks with their qualified names, in network order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ResidualBlock)]


def set_stochastic_depth(
    model: nn.Module, last_survival: Optional[float], mode: str = "batch", scaling: str = "paper"
) -> list[float]:
    """Give block l of L the survival p_l = 1 - (l / L)(1 - p_L) (Huang et al. 2016, eq. 4).

    ``last_survival`` is p_L (0.5 in the paper); ``None`` or 1 turns stochastic depth off.
    Returns the p_l in network order. The expected number of active blocks is sum(p_l),
    which is (3L - 1) / 4 for p_L = 0.5.
    """
    blocks = residual_blocks(model)
    if last_survival is None:
        last_survival = 1.0
    if not 0.0 < last_survival <= 1.0:
        raise ValueError(f"stochastic_depth is p_L, the last block's survival probability, in (0, 1]; got {last_survival}")
    if last_survival < 1.0 and not blocks:
        raise ValueError(f"{type(model).__name__} has no residual blocks, so stochastic depth does not apply")
    n = len(blocks)
    survivals = [1.0 - (i / n) * (1.0 - last_survival) for i in range(1, n + 1)]
    for (_, block), p in zip(blocks, survivals):
        block.drop_path = StochasticDepth(p, mode, scaling)
    return survivals


def set_drop_path_rate(model: nn.Module, rate: float) -> list[float]:
    """timm's ``drop_path_rate``: block i of N drops its branch with probability
    ``rate * i / (N - 1)`` (0 at the first block, ``rate`` at the last), per sample, the kept
    branches scaled by 1 / (1 - p_i) in training (``StochasticDepth(1 - p_i, 'sample', 'inverted')``).

    Compared with ``set_stochastic_depth(model, p_L)`` (Huang et al. 2016: survival
    1 - (l / L)(1 - p_L) for l = 1..L, so the first block already drops), the last block gets the
    same probability for ``rate = 1 - p_L``; the others drop a little less. Returns the drop
    probabilities in network order.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate is the last block's drop probability, in [0, 1); got {rate}")
    blocks = residual_blocks(model)
    if rate > 0.0 and not blocks:
        own = "; its own drop-path is local_drop_path= and global_drop_path=" if hasattr(model, "set_drop_path") else ""
        raise ValueError(f"{type(model).__name__} has no residual blocks, so drop_path_rate does not apply{own}")
    rates = torch.linspace(0.0, rate, len(blocks)).tolist() if len(blocks) > 1 else [0.0] * len(blocks)
    for (_, block), p in zip(blocks, rates):
        block.drop_path = StochasticDepth(1.0 - p, "sample", "inverted")
    return rates
