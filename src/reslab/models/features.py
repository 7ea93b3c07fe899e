"""Intermediate feature maps with timm's interface: ``feature_info``, ``forward_intermediates``,
``features_only`` and gradient checkpointing, for every network of the zoo.

A network describes itself as a list of :class:`FeatureStep` (its stem, then its stages): the
step's output is one feature map, the output of the module named ``module`` (as timm's
``feature_info`` entries ``dict(num_chs, reduction, module)``). From that list alone,
:class:`FeatureNet` (the base of :class:`~reslab.models.layers.ClassifierNet`) runs
``forward_intermediates`` (timm's signature), prunes what a feature extractor does not need,
and checkpoints block by block (Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost": activations inside a block are recomputed in the backward pass instead of stored).
:class:`FeatureExtractor` is what ``create_model(..., features_only=True)`` returns: the maps
at ``out_indices`` as a list, with a :class:`FeatureInfo` (timm's ``FeatureInfo`` accessors).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

Indices = Optional[Union[int, Sequence[int]]]
OUTPUT_FORMATS = ("NCHW",)


@dataclass
class FeatureStep:
    """One feature level: run ``pre`` then ``blocks`` on the previous level's map.

    ``module`` names the module whose output the map is, ``num_chs`` its channels and
    ``reduction`` its stride relative to the input. ``blocks`` are checkpointed one by one when
    gradient checkpointing is on; ``owns`` are the top-level attributes a pruned model replaces
    by ``nn.Identity`` once no requested level needs them.
    """

    module: str
    num_chs: int
    reduction: int
    blocks: list[Callable[[Tensor], Tensor]]
    pre: list[Callable[[Tensor], Tensor]] = field(default_factory=list)
    owns: tuple[str, ...] = ()


def stem_and_stage_steps(net: nn.Module, stage_names: Sequence[str], stage_channels: Sequence[int]) -> list[FeatureStep]:
    """The levels of a network with a conv-BN-ReLU stem (``conv1, bn1, relu``, then an optional
    ``maxpool``) and stages that halve the resolution after the first: the stem's output (after
    its ReLU, before the max-pool, as timm), then each stage's. ``net.stem_width`` and
    ``net.stem_stride`` give the stem's channels and stride."""
    steps = [FeatureStep("relu", net.stem_width, net.stem_stride, blocks=[], pre=[net.conv1, net.bn1, net.relu],
                         owns=("conv1", "bn1", "relu"))]
    maxpool = getattr(net, "maxpool", None)
    reduction = net.stem_stride * (2 if isinstance(maxpool, nn.MaxPool2d) else 1)
    for i, (name, channels) in enumerate(zip(stage_names, stage_channels)):
        stage = getattr(net, name)
        reduction *= 1 if i == 0 else 2
        first = i == 0 and maxpool is not None
        steps.append(FeatureStep(name, channels, reduction, list(stage) if isinstance(stage, nn.Sequential) else [stage],
                                 pre=[maxpool] if first else [], owns=("maxpool", name) if first else (name,)))
    return steps


def feature_take_indices(num_levels: int, indices: Indices = None) -> tuple[list[int], int]:
    """timm's rule: ``None`` takes every level, an int ``n`` the last ``n``, a sequence the levels
    it names (negative from the end). Returns the absolute indices and the largest one."""
    if indices is None:
        indices = num_levels
    if isinstance(indices, int):
        if not 0 < indices <= num_levels:
            raise ValueError(f"indices={indices} asks for the last {indices} of {num_levels} feature levels; give 1 to {num_levels}")
        taken = list(range(num_levels - indices, num_levels))
    else:
        taken = []
        for i in indices:
            index = num_levels + i if i < 0 else i
            if not 0 <= index < num_levels:
                raise ValueError(f"feature index {i} is out of range: this model has levels 0 to {num_levels - 1} "
                                 f"(see model.feature_info)")
            taken.append(index)
        if not taken:
            raise ValueError("indices is empty: give at least one feature level (None takes them all)")
    return taken, max(taken)


class FeatureInfo:
    """timm's ``FeatureInfo``: ``channels()``, ``reduction()`` and ``module_name()`` of the levels at
    ``out_indices`` (or of the levels ``idx`` names), ``len`` and indexing over all levels."""

    def __init__(self, info: list[dict], out_indices: Sequence[int]) -> None:
        self.info = [dict(entry, index=i) for i, entry in enumerate(info)]
        self.out_indices = tuple(out_indices)

    def get(self, key: str, idx: Optional[Union[int, Sequence[int]]] = None):
        if idx is None:
            return [self.info[i][key] for i in self.out_indices]
        if isinstance(idx, (list, tuple)):
            return [self.info[i][key] for i in idx]
        return self.info[idx][key]

    def channels(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self.get("num_chs", idx)

    def reduction(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self.get("reduction", idx)

    def module_name(self, idx: Optional[Union[int, Sequence[int]]] = None):
        return self.get("module", idx)

    def get_dicts(self) -> list[dict]:
        return [self.info[i] for i in self.out_indices]

    def __getitem__(self, item: int) -> dict:
        return self.info[item]

    def __len__(self) -> int:
        return len(self.info)

    def __repr__(self) -> str:
        return f"FeatureInfo(out_indices={self.out_indices}, channels={self.channels()}, reduction={self.reduction()})"


class FeatureNet(nn.Module):
    """Mixin of the zoo's networks: timm's feature interface from :meth:`feature_steps`.

    A subclass defines ``feature_steps()`` and, where it has them, ``final_norm()`` (the BN-ReLU
    that closes pre-activation nets, applied by ``norm=True``) and ``features_tail()`` (what
    ``forward_features`` applies after the last level, e.g. that norm).
    """

    __jit_unused_properties__ = ["feature_info"]  # TorchScript compiles properties otherwise

    def feature_steps(self) -> list[FeatureStep]:
        raise NotImplementedError

    @torch.jit.unused
    def final_norm(self) -> Optional[nn.Module]:
        norm = getattr(self, "final_bn", None)
        return None if norm is None or isinstance(norm, nn.Identity) else norm

    @torch.jit.unused
    def features_tail(self) -> Optional[nn.Module]:
        return self.final_norm()

    @property
    def feature_info(self) -> list[dict]:
        """timm's ``model.feature_info``: ``dict(num_chs, reduction, module)`` per feature level."""
        return [dict(num_chs=s.num_chs, reduction=s.reduction, module=s.module) for s in self.feature_steps()]

    @torch.jit.unused
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations (timm's
        call). Outputs and gradients are unchanged; BN running statistics see each batch twice."""
        self.grad_checkpointing = bool(enable)

    def _start_forward(self) -> None:
        """Hook run once before the levels (FractalNet draws its column here)."""

    @torch.jit.unused
    def _run_step(self, step: FeatureStep, x: Tensor) -> Tensor:
        for layer in step.pre:
            x = layer(x)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for block in step.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x

    @torch.jit.unused
    def _features_by_steps(self, x: Tensor) -> Tensor:
        """``forward_features`` through the steps (the checkpointed path)."""
        self._start_forward()
        for step in self.feature_steps():
            x = self._run_step(step, x)
        tail = self.features_tail()
        return x if tail is None else tail(x)

    @torch.jit.unused
    def forward_intermediates(self, x: Tensor, indices: Indices = None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the feature maps at ``indices`` (``None``: all levels,
        an int n: the last n, a list: those levels, negative from the end), and unless
        ``intermediates_only`` the output of ``forward_features`` too, as ``(x, intermediates)``.

        ``norm=True`` passes the last level through the final norm (models that have one);
        ``stop_early`` stops after the last level asked for (the returned ``x`` is then that level).
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise ValueError(f"output_fmt={output_fmt!r}: reslab's networks are convolutional and give {OUTPUT_FORMATS[0]} maps only")
        final_norm = self.final_norm()
        if norm and final_norm is None:
            raise ValueError(f"norm=True: {type(self).__name__} has no final norm (only pre-activation, Wide ResNet and DPN nets do)")
        steps = self.feature_steps()
        taken, last_taken = feature_take_indices(len(steps), indices)
        last = len(steps) - 1
        self._start_forward()
        intermediates = []
        for i, step in enumerate(steps):
            if stop_early and i > last_taken:
                break
            x = self._run_step(step, x)
            if i in taken:
                intermediates.append(final_norm(x) if norm and i == last and final_norm is not None else x)
        if intermediates_only:
            return intermediates
        if not stop_early or last_taken == last:
            tail = self.features_tail()
            x = x if tail is None else tail(x)
        return x, intermediates

    @torch.jit.unused
    def prune_intermediate_layers(self, indices: Indices = None, prune_norm: bool = True, prune_head: bool = True) -> list[int]:
        """Replace what no level up to the last of ``indices`` needs by ``nn.Identity`` (later
        stages; the final norm if ``prune_norm``; the classifier if ``prune_head``), as timm.
        Returns the absolute indices."""
        steps = self.feature_steps()
        taken, last_taken = feature_take_indices(len(steps), indices)
        needed = {name for step in steps[: last_taken + 1] for name in step.owns}
        for step in steps[last_taken + 1:]:
            for name in step.owns:
                if name not in needed:
                    setattr(self, name, nn.Identity())
        if prune_norm and self.final_norm() is not None:
            self.final_bn = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return taken


class FeatureExtractor(nn.Module):
    """``create_model(name, features_only=True, out_indices=...)``: the network's feature maps at
    ``out_indices`` as a list (timm's ``features_only`` model). The wrapped network, pruned of
    its head and of the stages after the last level asked for, is ``self.model`` (state-dict
    keys ``model.<network's key>``, as timm's ``FeatureGetterNet``)."""

    def __init__(self, model: FeatureNet, out_indices: Indices = None) -> None:
        super().__init__()
        info = model.feature_info
        self.out_indices = tuple(model.prune_intermediate_layers(out_indices))
        self.feature_info = FeatureInfo(info, self.out_indices)
        self.model = model

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
