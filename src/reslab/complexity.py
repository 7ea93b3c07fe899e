"""Parameter and multiply-accumulate counts, computed from the model itself."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared tensors counted once)."""
    seen = {id(p): p for p in model.parameters() if p.requires_grad or not trainable_only}
    return sum(p.numel() for p in seen.values())


@torch.no_grad()
def count_macs(model: nn.Module, input_size: int, in_channels: int = 3, device: str = "cpu") -> int:
    """Multiply-accumulates of one forward pass of one image, in eval mode.

    Counted by ``torch.utils.flop_counter`` (FLOPs / 2): convolutions and linear layers, the
    convention of the papers' tables; BN, ReLU, pooling and additions are not counted.
    ``device='meta'`` counts a model built on the meta device without computing anything.
    """
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, input_size, input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
