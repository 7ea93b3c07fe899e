"""Path lengths and the gradient they carry (Veit et al. 2016, sec. 5 and Fig. 6).

Unrolled, a network of n residual blocks is a sum of 2^n paths; a path of length k goes through
the branches of k blocks and the shortcuts of the others, so there are C(n, k) of them
(Fig. 6 a). Veit et al. measure the gradient one path length carries by sampling: choose k
blocks at random, let the gradient flow back through the branch only of those
(``gradient_route = 'branch'``) and through the shortcut only of the others (``'skip'``), and
record the magnitude of the gradient at the input (Fig. 6 b). Multiplying by the number of paths
of each length gives the total gradient per length (Fig. 6 c): for ResNet-110 (54 blocks) the
paths of 5 to 17 blocks carry most of it, only 0.45% of all paths.

Here the gradient is that of the cross-entropy loss of each image (summed over the batch, so
each image's gradient is its own loss's), taken at the input of the first residual block; its
magnitude is the L2 norm over one image's input tensor, averaged over the images of the batch
and over the samples of each length. BN layers are in eval mode (running statistics), so the
forward values are those of inference and do not depend on the sampled route.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.analysis.evaluate import evaluation_mode
from reslab.analysis.plots import figure, save_figure
from reslab.models.layers import ResidualBlock, residual_blocks

GRADIENT_OF = ("cross-entropy loss of each image (true labels), L2 norm of its gradient at the input of the "
               "first residual block, averaged over the batch and the samples")


def path_counts(n: int) -> list[int]:
    """Number of paths of each length k = 0..n through n residual blocks: C(n, k)."""
    return [math.comb(n, k) for k in range(n + 1)]


def smallest_window(weights: Sequence[float], fraction: float) -> tuple[int, int]:
    """The shortest range ``[lo, hi]`` of indices whose weights sum to at least ``fraction``
    of the total; among equally short ranges, the one holding the most. Weights must be >= 0."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    values = [float(w) for w in weights]
    if not values or min(values) < 0 or not math.isfinite(sum(values)) or sum(values) <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    target = fraction * sum(values) * (1 - 1e-12)  # tolerate rounding when fraction = 1
    best: Optional[tuple[int, float, int, int]] = None
    for lo in range(len(values)):
        mass = 0.0
        for hi in range(lo, len(values)):
            mass += values[hi]
            if mass >= target:
                key = (hi - lo, -mass, lo, hi)
                if best is None or key[:2] < best[:2]:
                    best = key
                break
    assert best is not None
    return best[2], best[3]


class _InputGradient:
    """Forward pre-hook that turns its module's input into a leaf tensor that keeps its gradient
    (and cuts the graph behind it, so nothing before the first block is differentiated)."""

    def __init__(self) -> None:
        self.input: Optional[Tensor] = None

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple:
        self.input = inputs[0].detach().requires_grad_(True)
        return (self.input, *inputs[1:])


@contextlib.contextmanager
def gradient_routes(blocks: Sequence[ResidualBlock], through_branch: Sequence[int]) -> Iterator[None]:
    """Route the gradient through the branch of the blocks at ``through_branch`` and through
    the shortcut of every other block, for the duration; routes are restored on exit."""
    saved = [b.gradient_route for b in blocks]
    chosen = set(through_branch)
    try:
        for i, block in enumerate(blocks):
            block.gradient_route = "branch" if i in chosen else "skip"
        yield
    finally:
        for block, route in zip(blocks, saved):
            block.gradient_route = route


def input_gradient(model: nn.Module, images: Tensor, labels: Tensor, through_branch: Sequence[int]) -> Tensor:
    """d(loss)/d(input of the first residual block) carried by the one path that goes through
    the branches of the blocks at ``through_branch`` (indices in network order) and the
    shortcuts of all the others. The loss is the summed cross-entropy of the images."""
    blocks = [b for _, b in residual_blocks(model)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no residual blocks, so it has no paths to sample")
    catcher = _InputGradient()
    handle = blocks[0].register_forward_pre_hook(catcher)
    try:
        with gradient_routes(blocks, through_branch), torch.enable_grad():
            loss = F.cross_entropy(model(images).float(), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, catcher.input)
    finally:
        handle.remove()
    return grad


def input_gradient_norm(model: nn.Module, images: Tensor, labels: Tensor, through_branch: Sequence[int]) -> float:
    """Mean over images of the L2 norm of :func:`input_gradient`."""
    return input_gradient(model, images, labels, through_branch).flatten(1).norm(dim=1).mean().item()


def require_residual_blocks(model: nn.Module) -> int:
    """The number of residual blocks of ``model``; a one-line error for a net without any."""
    n = len(residual_blocks(model))
    if not n:
        raise ValueError(f"{type(model).__name__} has no residual blocks: the path study applies to residual networks "
                         "(resnet20, resnet56, preact_resnet110, ...)")
    return n


def path_gradients(model: nn.Module, images: Tensor, labels: Tensor, *, samples: int = 10, seed: int = 0,
                   lengths: Optional[Sequence[int]] = None, tick: Optional[Callable[[], None]] = None) -> list[dict]:
    """For each path length k, the gradient magnitude of ``samples`` random paths of length k
    (Veit et al. 2016, Fig. 6 b): mean, standard deviation and the samples themselves.
    ``tick()`` is called after each length."""
    n = require_residual_blocks(model)
    rng = random.Random(seed)
    rows = []
    with evaluation_mode(model):
        for k in range(n + 1) if lengths is None else lengths:
            if not 0 <= k <= n:
                raise ValueError(f"path length {k} is outside 0..{n} for a network of {n} residual blocks")
            norms = [input_gradient_norm(model, images, labels, rng.sample(range(n), k)) for _ in range(samples)]
            rows.append({"length": k, "mean_gradient": statistics.fmean(norms), "std_gradient": statistics.pstdev(norms),
                         "samples": norms})
            if tick is not None:
                tick()
    return rows


def path_study(model: nn.Module, images: Tensor, labels: Tensor, *, samples: int = 10, seed: int = 0,
               fraction: float = 0.9, tick: Optional[Callable[[], None]] = None) -> dict:
    """The whole of Veit et al. 2016, Fig. 6, as a JSON-ready table.

    Per length k: the number of paths C(n, k), the sampled gradient magnitude of one path and the
    total (count x magnitude). ``total_window`` is the shortest range of lengths that carries
    ``fraction`` of the total gradient (:func:`smallest_window`), with the share of all 2^n
    paths that lie in it; ``count_window`` is the same range for the number of paths.
    """
    n = require_residual_blocks(model)
    counts = path_counts(n)
    rows = path_gradients(model, images, labels, samples=samples, seed=seed, tick=tick)
    for row in rows:
        row["paths"] = counts[row["length"]]
        row["total_gradient"] = counts[row["length"]] * row["mean_gradient"]
    totals = [r["total_gradient"] for r in rows]
    lo, hi = smallest_window(totals, fraction)
    count_lo, count_hi = smallest_window(counts, fraction)
    return {
        "experiment": "paths",
        "title": "Path lengths and the gradient they carry (Veit et al. 2016, Fig. 6)",
        "blocks": n, "paths": 2**n, "num_images": len(labels), "samples_per_length": samples, "seed": seed,
        "gradient_of": GRADIENT_OF, "fraction": fraction,
        "total_window": {"shortest": lo, "longest": hi,
                         "gradient_share": sum(totals[lo:hi + 1]) / sum(totals),
                         "path_share": sum(counts[lo:hi + 1]) / 2**n},
        "count_window": {"shortest": count_lo, "longest": count_hi, "path_share": sum(counts[count_lo:count_hi + 1]) / 2**n},
        "claims": paths_claims(n, lo, hi, sum(totals[lo:hi + 1]) / sum(totals), fraction),
        "lengths": rows,
    }


def paths_claims(n: int, shortest: int, longest: int, share: float, fraction: float) -> list[dict]:
    """Veit et al. 2016, sec. 5: the gradient comes from paths far shorter than the typical path
    (the binomial mean n/2): holds when the whole window lies below n/2."""
    return [{"claim": f"the paths carrying {100 * fraction:.0f}% of the gradient are shorter than the typical path (n/2 blocks)",
             "paper": "ResNet-110: lengths 5-17 of 54 blocks (n/2 = 27)",
             "reslab": f"lengths {shortest}-{longest} of {n} blocks carry {100 * share:.1f}% (n/2 = {n / 2:g})",
             "holds": longest < n / 2}]


def plot_paths(result: dict, path) -> None:
    """Veit et al. 2016, Fig. 6: (a) number of paths per length, (b) gradient magnitude of one
    path per length, (c) total gradient magnitude per length, with the window that carries
    most of it shaded."""
    rows = result["lengths"]
    k = [r["length"] for r in rows]
    fig, axes = figure(ncols=3, size=(14.0, 4.6))
    axes[0].bar(k, [r["paths"] for r in rows], color="tab:blue")
    axes[0].set_ylabel("number of paths")
    axes[0].set_title(f"(a) paths through {result['blocks']} blocks")
    axes[1].errorbar(k, [r["mean_gradient"] for r in rows], yerr=[r["std_gradient"] for r in rows], marker="o",
                     ms=3, capsize=2, color="tab:green")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("gradient norm |d loss / d x| per image")
    axes[1].set_title("(b) gradient magnitude of one path")
    axes[2].bar(k, [r["total_gradient"] for r in rows], color="tab:red")
    window = result["total_window"]
    axes[2].axvspan(window["shortest"] - 0.5, window["longest"] + 0.5, color="0.85", zorder=0,
                    label=f"lengths {window['shortest']}-{window['longest']}: {100 * window['gradient_share']:.0f}% of the "
                          f"gradient, {100 * window['path_share']:.2g}% of the paths")
    axes[2].set_ylabel("total gradient norm (paths x norm)")
    axes[2].set_title("(c) total gradient magnitude")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("path length (blocks)")
        ax.grid(alpha=0.3)
    save_figure(fig, path)
