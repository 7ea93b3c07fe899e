"""Standard deviation of the residual responses, block by block (He et al. 2015, Fig. 7).

He et al. measure the response of each block: the output of its last BN, before the addition
(residual nets) or before the ReLU (plain nets). The residual functions' responses are
generally closer to zero than the plain nets', and smaller for deeper nets: each block modifies
the signal less.

The response is found generically:

* a residual block's response is F(x), the input of its ``drop_path`` layer (which takes F(x)
  after the branch's last layer and before the addition; for a pre-activation block F ends in a
  convolution);
* a plain network's block-like unit (:func:`reslab.analysis.lesion.block_modules`) responds with
  the output of its last ``BatchNorm2d``.

The standard deviation is taken over every element of the response (images, channels and
positions) of the test images, accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from reslab.analysis.evaluate import Batch, autocast, evaluation_mode
from reslab.analysis.lesion import block_modules
from reslab.analysis.plots import colors, figure, save_figure
from reslab.models.layers import ResidualBlock


class _MomentAccumulator:
    """Forward hook that accumulates count, sum and sum of squares of one tensor of its module:
    the input (``take='input'``) or the output."""

    def __init__(self, take: str) -> None:
        self.take = take
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        values = (inputs[0] if self.take == "input" else output).detach().double()
        self.count += values.numel()
        self.total += values.sum().item()
        self.total_sq += values.square().sum().item()

    @property
    def std(self) -> float:
        mean = self.total / self.count
        return max(self.total_sq / self.count - mean * mean, 0.0) ** 0.5


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(block name, module to hook, 'input'|'output') for each block's response."""
    layers = []
    for name, block in block_modules(model):
        if isinstance(block, ResidualBlock):
            layers.append((name, block.drop_path, "input"))
            continue
        norms = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        if not norms:
            raise ValueError(f"block {name} of {type(model).__name__} has no BatchNorm2d, so it has no BN response")
        layers.append((name, norms[-1], "output"))
    if not layers:
        raise ValueError(f"{type(model).__name__} has no blocks whose responses could be measured: the study applies to "
                         "nets built of blocks (the zoo's residual and plain nets, e.g. resnet56, plain56)")
    return layers


@torch.no_grad()
def response_stds(model: nn.Module, batches: Sequence[Batch], *, bf16: bool = False) -> list[dict]:
    """Per block, in network order: its name and the std of its response over ``batches``."""
    layers = response_layers(model)
    hooks = [_MomentAccumulator(take) for _, _, take in layers]
    handles = [module.register_forward_hook(hook) for (_, module, _), hook in zip(layers, hooks)]
    try:
        with evaluation_mode(model):
            for images, _ in batches:
                with autocast(images.device, bf16):
                    model(images)
    finally:
        for handle in handles:
            handle.remove()
    return [{"index": i, "block": name, "std": hook.std} for i, ((name, _, _), hook) in enumerate(zip(layers, hooks), 1)]


def responses_study(models: dict[str, tuple[nn.Module, Sequence[Batch]]], *, bf16: bool = False,
                    tick: Optional[Callable[[], None]] = None) -> dict:
    """Response stds of several labelled models, each with its own (normalised) batches, and the
    claim table; ``tick()`` after each model."""
    results = []
    for label, (model, batches) in models.items():
        rows = response_stds(model, batches, bf16=bf16)
        if tick is not None:
            tick()
        results.append({"model": label, "residual": any(isinstance(m, ResidualBlock) for m in model.modules()),
                        "num_blocks": len(rows), "mean_std": sum(r["std"] for r in rows) / len(rows),
                        "sorted_std": sorted((r["std"] for r in rows), reverse=True), "blocks": rows})
    return {"experiment": "responses", "title": "Standard deviation of the residual responses (He et al. 2015, Fig. 7)",
            "num_images": sum(len(y) for _, y in next(iter(models.values()))[1]), "models": results,
            "claims": responses_claims(results)}


def responses_claims(entries: Sequence[dict]) -> list[dict]:
    """He et al. 2015, sec. 4.2 (Fig. 7), judged on the mean response std over the blocks: a
    residual net responds less than the plain net with as many blocks, and a deeper residual net
    less than a shallower one."""
    rows = []
    plain = {e["num_blocks"]: e for e in entries if not e["residual"]}
    for entry in (e for e in entries if e["residual"] and e["num_blocks"] in plain):
        other = plain[entry["num_blocks"]]
        rows.append({"claim": f"{entry['model']} responds less than {other['model']}",
                     "paper": "ResNets have generally smaller responses than their plain counterparts (Fig. 7)",
                     "reslab": f"mean std {entry['mean_std']:.3f} vs {other['mean_std']:.3f}",
                     "holds": entry["mean_std"] < other["mean_std"]})
    residual = sorted((e for e in entries if e["residual"]), key=lambda e: e["num_blocks"])
    if len({e["num_blocks"] for e in residual}) > 1:
        stds = [e["mean_std"] for e in residual]
        rows.append({"claim": "the deeper the ResNet, the smaller its responses",
                     "paper": "ResNet-20 > 56 > 110 in response std (Fig. 7)",
                     "reslab": ", ".join(f"{e['model']} {e['mean_std']:.3f}" for e in residual),
                     "holds": all(b < a for a, b in zip(stds, stds[1:]))})
    return rows


def plot_responses(result: dict, path) -> None:
    """He et al. 2015, Fig. 7: response std per block in network order (top) and sorted in
    descending order (bottom), one line per model."""
    fig, axes = figure(nrows=2, size=(8.0, 7.0))
    for entry, color in zip(result["models"], colors(len(result["models"]))):
        rows = entry["blocks"]
        style = "-" if entry["residual"] else "--"
        axes[0].plot([r["index"] for r in rows], [r["std"] for r in rows], style, color=color, marker=".", label=entry["model"])
        axes[1].plot(range(1, len(rows) + 1), entry["sorted_std"], style, color=color, marker=".", label=entry["model"])
    axes[0].set_xlabel("block (network order)")
    axes[1].set_xlabel("block (sorted by magnitude)")
    for ax in axes:
        ax.set_ylabel("std of the response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
