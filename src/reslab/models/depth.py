"""Depth of a network as the papers count it (He et al. 2015, sec. 4.2: "ResNet-110",
"ResNet-1202"): the layers with weights on the main path."""

from __future__ import annotations

from torch import nn


def weighted_depth(model: nn.Module) -> int:
    """Layers with weights on the main path, as the papers count depth: convolutions and fully
    connected layers, not the projection shortcuts (ResNet-110 has 110, ResNet-1001 1001)."""
    from reslab.models.layers import residual_blocks

    shortcut_layers = {id(m) for _, block in residual_blocks(model) if block.downsample is not None
                       for m in block.downsample.modules()}
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcut_layers for m in model.modules())
