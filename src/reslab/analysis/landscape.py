"""Loss landscape along filter-normalised random directions (Li et al. 2018).

Li, Xu, Taylor, Studer and Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS
2018), plot f(a, b) = L(theta + a d + b e) (sec. 3, eq. 1 and its 1-D form) around trained
weights theta, for random Gaussian directions d, e made *filter-normalised* (sec. 4):

    d_ij <- d_ij / ||d_ij|| * ||theta_ij||        (for each filter j of layer i)

so that each filter of the direction has the norm of the weight's filter, and plots of nets with
different weight scales compare. A filter is one output channel of a convolution (one row of a
linear layer). Parameters with at most one dimension (BN weights and biases, all biases) get a
zero direction, as the paper does (its code's ``--xignore biasbn``). ResNet-56 against plain-56
is the paper's headline (Fig. 5): skip connections keep the surface convex-looking.

Evaluation: the loss and accuracy of each grid point on a fixed set of images, in eval mode with
the BN running statistics (the paper's code calls ``net.eval()``). BN is folded into the
convolutions once (:mod:`reslab.inference.fold`): the directions are zero on BN, and folding is
linear in the convolution's weight, fold(W + a d + b e) = fold(W) + a s*d + b s*e with the BN's
per-channel factor s, so the folded directions are found once and each grid point only sets
weights. :func:`interpolation` is the 1-D linear interpolation between two trained weights
(Goodfellow et al. 2015; Li et al. sec. 3), BN statistics interpolated with the weights.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.analysis.evaluate import Batch, autocast, evaluation_mode

Direction = dict[str, Tensor]  # parameter name -> direction tensor of its shape
NONCONVEX_RATIO = 0.1  # a grid point counts as non-convex where lambda_min < -0.1 |lambda_max| (rounding margin)


# ------------------------------------------------------------------------------------------
# Directions


def random_direction(model: nn.Module, generator: torch.Generator) -> Direction:
    """A Gaussian direction N(0, I) over every parameter of ``model`` (float32, on its device)."""
    return {name: torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device)
            for name, p in model.named_parameters()}


@torch.no_grad()
def filter_normalize(direction: Direction, model: nn.Module) -> Direction:
    """Li et al. 2018, sec. 4: each filter of ``direction`` (an output channel: a slice along the
    first dimension) scaled to the norm of the same filter of ``model``'s weights; parameters of
    at most one dimension (BN and biases) zeroed. Returns a new direction."""
    weights = dict(model.named_parameters())
    normalized = {}
    for name, d in direction.items():
        w = weights[name].detach().float()
        if d.dim() <= 1:
            normalized[name] = torch.zeros_like(d)
            continue
        d_norms = d.flatten(1).norm(dim=1).clamp(min=1e-10)
        w_norms = w.flatten(1).norm(dim=1)
        normalized[name] = d * (w_norms / d_norms).view(-1, *[1] * (d.dim() - 1))
    return normalized


def filter_normalized_direction(model: nn.Module, seed: int) -> Direction:
    """A random filter-normalised direction for ``model`` (reproducible from ``seed``)."""
    return filter_normalize(random_direction(model, torch.Generator().manual_seed(seed)), model)


def cosine(a: Direction, b: Direction) -> float:
    """Cosine of the angle between two directions (random ones are nearly orthogonal)."""
    dot = sum((a[k].double() * b[k].double()).sum() for k in a)
    norm_a = math.sqrt(sum(a[k].double().square().sum() for k in a))
    norm_b = math.sqrt(sum(b[k].double().square().sum() for k in b))
    return float(dot / (norm_a * norm_b)) if norm_a and norm_b else 0.0


# ------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, batches: Sequence[Batch], *, bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (as it is set: call it in eval mode) on ``batches``."""
    total_loss, correct, count = 0.0, 0, 0
    for images, labels in batches:
        with autocast(images.device, bf16):
            logits = model(images)
        total_loss += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += int((logits.argmax(1) == labels).sum())
        count += len(labels)
    if not count:
        raise ValueError("no images to evaluate the loss on")
    return total_loss / count, correct / count


def _folded_direction(weight_direction: Tensor, bn: nn.Module) -> Tensor:
    """BN's per-channel factor applied to a direction of the conv before it, by the same
    :func:`~reslab.inference.fold.fold_conv_bn` that folds the weights."""
    from reslab.inference.fold import fold_conv_bn

    holder = SimpleNamespace(weight=weight_direction.clone(), bias=None)
    fold_conv_bn(holder, bn)
    return holder.weight


class PerturbedModel:
    """``model`` in eval mode, BN folded, whose weights are set to theta + sum_i c_i d_i by
    :meth:`set_coefficients` (the directions ``d_i`` given in ``model``'s own, unfolded terms)."""

    def __init__(self, model: nn.Module, directions: Sequence[Direction]) -> None:
        from reslab.inference.fold import fold_bn, foldable_pairs

        scale_from: dict[str, nn.Module] = {}
        try:
            pairs = foldable_pairs(model)
            self.model = fold_bn(model)
            scale_from = {f"{conv}.weight": model.get_submodule(bn) for conv, bn in pairs}
        except ValueError:  # torch.fx cannot trace it: evaluate unfolded, BN in eval mode
            self.model = copy.deepcopy(model).eval()
        self.folded = bool(scale_from)
        parameters = dict(self.model.named_parameters())
        self.entries: list[tuple[Tensor, Tensor, list[Tensor]]] = []  # (parameter, its theta, its directions)
        for name in directions[0]:
            if all(not d[name].any() for d in directions):
                continue  # BN and biases: zero in every direction, never moved
            parameter = parameters[name]
            moved = [(_folded_direction(d[name], scale_from[name]) if name in scale_from else d[name]).to(parameter.dtype)
                     for d in directions]
            self.entries.append((parameter, parameter.detach().clone(), moved))

    @torch.no_grad()
    def set_coefficients(self, coefficients: Sequence[float]) -> nn.Module:
        for parameter, theta, moved in self.entries:
            value = theta.clone()
            for c, d in zip(coefficients, moved):
                value.add_(d, alpha=float(c))
            parameter.copy_(value)
        return self.model


def grid_coordinates(points: int, span: float) -> list[float]:
    """``points`` evenly spaced coefficients from -span to span; odd ``points`` include 0 (theta)."""
    if points < 1 or points % 2 == 0:
        raise ValueError(f"the grid needs an odd number of points per axis (so that it holds the weights themselves), got {points}")
    return [0.0] if points == 1 else [span * (2 * i / (points - 1) - 1) for i in range(points)]


def loss_surface(model: nn.Module, batches: Sequence[Batch], directions: Sequence[Direction],
                 axes: Sequence[Sequence[float]], *, bf16: bool = False,
                 progress: Optional[Callable[[int, float], None]] = None) -> dict:
    """Loss and accuracy at every point of the grid ``axes`` (one list of coefficients per
    direction: 1-D or 2-D). The centre (all coefficients 0) is evaluated first and timed, after
    one untimed batch (the kernels' first-call set-up); ``progress(points_done,
    seconds_per_point)`` is called after each point.

    Returns ``{"loss": nested lists [i][j], "accuracy": ..., "seconds_per_point": ...}``.
    """
    if len(axes) != len(directions) or len(axes) not in (1, 2):
        raise ValueError("give one or two directions, each with its axis of coefficients")
    perturbed = PerturbedModel(model, directions)
    grid = [(i,) for i in range(len(axes[0]))] if len(axes) == 1 else \
        [(i, j) for i in range(len(axes[0])) for j in range(len(axes[1]))]
    centre = tuple(min(range(len(axis)), key=lambda k: abs(axis[k])) for axis in axes)
    grid.remove(centre)
    loss: dict[tuple, float] = {}
    accuracy: dict[tuple, float] = {}
    loss_and_accuracy(perturbed.set_coefficients([0.0] * len(axes)), batches[:1], bf16=bf16)  # warm-up, untimed
    start = time.perf_counter()
    for done, index in enumerate([centre, *grid], 1):
        net = perturbed.set_coefficients([axis[k] for axis, k in zip(axes, index)])
        loss[index], accuracy[index] = loss_and_accuracy(net, batches, bf16=bf16)
        if progress is not None:
            progress(done, (time.perf_counter() - start) / done)
    perturbed.set_coefficients([0.0] * len(axes))

    def nested(values: dict) -> list:
        if len(axes) == 1:
            return [values[(i,)] for i in range(len(axes[0]))]
        return [[values[(i, j)] for j in range(len(axes[1]))] for i in range(len(axes[0]))]

    return {"loss": nested(loss), "accuracy": nested(accuracy), "folded_bn": perturbed.folded,
            "seconds_per_point": (time.perf_counter() - start) / (len(grid) + 1)}


def interpolated_state(a: dict[str, Tensor], b: dict[str, Tensor], t: float) -> dict[str, Tensor]:
    """(1 - t) a + t b for every floating tensor (weights and BN statistics); others from ``a``."""
    return {k: torch.lerp(v, b[k].to(v.dtype), t) if v.is_floating_point() else v.clone() for k, v in a.items()}


def interpolation(model_a: nn.Module, model_b: nn.Module, batches: Sequence[Batch], ts: Sequence[float], *,
                  bf16: bool = False, progress: Optional[Callable[[int, float], None]] = None) -> list[dict]:
    """Loss and accuracy of theta(t) = (1 - t) theta_a + t theta_b for each t (Li et al. sec. 3);
    the two models must be of the same architecture."""
    from reslab.inference.fold import folded_for_evaluation

    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    if state_a.keys() != state_b.keys() or any(state_a[k].shape != state_b[k].shape for k in state_a):
        raise ValueError("interpolation needs two checkpoints of the same architecture")
    net = copy.deepcopy(model_a)
    rows = []
    start = time.perf_counter()
    for done, t in enumerate(ts, 1):
        net.load_state_dict(interpolated_state(state_a, state_b, t))
        loss, acc = loss_and_accuracy(folded_for_evaluation(net), batches, bf16=bf16)
        rows.append({"t": t, "loss": loss, "accuracy": acc})
        if progress is not None:
            progress(done, (time.perf_counter() - start) / done)
    return rows


# ------------------------------------------------------------------------------------------
# Shape of the surface


def nonconvex_share(loss: Sequence[Sequence[float]], step_a: float, step_b: float, ratio: float = NONCONVEX_RATIO) -> float:
    """Share of the interior grid points where the surface's 2x2 finite-difference Hessian has a
    negative eigenvalue below ``-ratio`` times the magnitude of its largest (Li et al. 2018,
    Fig. 7, map |lambda_min / lambda_max| of the loss's Hessian; this is the same test on the
    plotted surface itself)."""
    f = torch.tensor(loss, dtype=torch.float64)
    if f.dim() != 2 or min(f.shape) < 3:
        raise ValueError("the non-convex share needs a 2-D grid of at least 3 x 3 points")
    faa = (f[2:, 1:-1] - 2 * f[1:-1, 1:-1] + f[:-2, 1:-1]) / step_a**2
    fbb = (f[1:-1, 2:] - 2 * f[1:-1, 1:-1] + f[1:-1, :-2]) / step_b**2
    fab = (f[2:, 2:] - f[2:, :-2] - f[:-2, 2:] + f[:-2, :-2]) / (4 * step_a * step_b)
    hessians = torch.stack([torch.stack([faa, fab], -1), torch.stack([fab, fbb], -1)], -2)
    eigenvalues = torch.linalg.eigvalsh(hessians)  # ascending
    smallest, largest = eigenvalues[..., 0], eigenvalues.abs().amax(-1)
    return float((smallest < -ratio * largest).double().mean())


# ------------------------------------------------------------------------------------------
# The study


def landscape_study(models: dict[str, tuple[nn.Module, Sequence[Batch]]], *, dims: int = 2, points: int = 21,
                    span: float = 1.0, seed: int = 0, bf16: bool = False,
                    progress: Optional[Callable[[str, int, int, float], None]] = None) -> dict:
    """The 1-D or 2-D landscape of each labelled model around its weights, with the directions
    drawn from ``seed`` (the same seed for every model, as the paper), and the claim table.
    ``progress(label, points_done, points_total, seconds_per_point)`` follows the work."""
    from reslab.models.layers import residual_blocks

    axis = grid_coordinates(points, span)
    entries = []
    for label, (model, batches) in models.items():
        with evaluation_mode(model):
            directions = [filter_normalized_direction(model, seed + k) for k in range(dims)]
            total = points ** dims
            surface = loss_surface(model, batches, directions, [axis] * dims, bf16=bf16,
                                   progress=None if progress is None else
                                   (lambda done, spp, label=label, total=total: progress(label, done, total, spp)))
        entry = {"label": label, "residual": bool(residual_blocks(model)), "dims": dims, "alphas": axis,
                 "num_images": sum(len(y) for _, y in batches), "surface": surface}
        flat = [v for row in surface["loss"] for v in (row if dims == 2 else [row])]
        centre = points // 2
        entry["centre_loss"] = surface["loss"][centre][centre] if dims == 2 else surface["loss"][centre]
        entry["max_loss"] = max(flat)
        if dims == 2:
            entry["betas"] = axis
            entry["direction_cosine"] = cosine(*directions)
            step = axis[1] - axis[0] if points > 1 else 1.0
            entry["nonconvex_share"] = nonconvex_share(surface["loss"], step, step) if points >= 3 else None
        entries.append(entry)
    return {"experiment": "landscape", "title": "Loss landscape along filter-normalised directions (Li et al. 2018)",
            "dims": dims, "points": points, "span": span, "seed": seed, "precision": "bf16" if bf16 else "fp32",
            "models": entries, "claims": landscape_claims(entries), "plotted": ["surface", "alphas", "betas"]}


def landscape_claims(entries: Sequence[dict]) -> list[dict]:
    """The paper's claim (Fig. 5): the residual net's surface is convex-looking where the plain
    net's of the same depth is chaotic; judged by the non-convex share of the 2-D surfaces."""
    rows = []
    for entry in entries:
        rows.append({"claim": f"{entry['label']}: loss at the weights and at most on the grid",
                     "paper": "ResNet-56 near 0 at the centre, rising smoothly (Fig. 5)",
                     "reslab": f"{entry['centre_loss']:.3g} at the centre, {entry['max_loss']:.3g} at most",
                     "holds": None})
    residual = [e for e in entries if e["residual"] and e.get("nonconvex_share") is not None]
    plain = [e for e in entries if not e["residual"] and e.get("nonconvex_share") is not None]
    if residual and plain:
        measured = ", ".join(f"{e['label']} {e['nonconvex_share']:.2f}" for e in [*residual, *plain])
        rows.append({"claim": "skip connections keep the surface convex-looking: the residual net's non-convex "
                              "share is below the plain net's",
                     "paper": "ResNet-56 convex, plain-56 chaotic (Fig. 5, 7)",
                     "reslab": f"non-convex share {measured}",
                     "holds": max(e["nonconvex_share"] for e in residual) < min(e["nonconvex_share"] for e in plain)})
    return rows


# ------------------------------------------------------------------------------------------
# Figures


def plot_1d(result: dict, path) -> None:
    """Loss (solid, left axis) and accuracy (dashed, right axis) along the first direction, one
    colour per model (Li et al. 2018, Fig. 2-3 style)."""
    from reslab.analysis.plots import colors, figure, save_figure

    fig, ax = figure(size=(8.0, 5.0))
    acc_ax = ax.twinx()
    for entry, color in zip(result["models"], colors(len(result["models"]))):
        axis = entry["alphas"]
        curve = entry["surface"]["loss"]
        accuracy = entry["surface"]["accuracy"]
        if entry["dims"] == 2:
            middle = entry["betas"].index(0.0)
            curve = [row[middle] for row in curve]
            accuracy = [row[middle] for row in accuracy]
        ax.plot(axis, curve, "-", color=color, lw=2, label=f"{entry['label']} loss")
        acc_ax.plot(axis, [100 * a for a in accuracy], "--", color=color, lw=1.2, label=f"{entry['label']} accuracy")
    for entry in result.get("interpolations", []):
        ax.plot([r["t"] for r in entry["rows"]], [r["loss"] for r in entry["rows"]], "-", color="k", lw=1.5,
                label=f"interpolation {entry['label']} (t)")
    ax.set_xlabel("coefficient along the filter-normalised direction")
    ax.set_ylabel("loss (solid)")
    acc_ax.set_ylabel("accuracy % (dashed)")
    acc_ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    more = acc_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper center")
    ax.set_title("1-D loss landscape (Li et al. 2018)")
    save_figure(fig, path)


def _two_d(result: dict) -> list[dict]:
    entries = [e for e in result["models"] if e["dims"] == 2]
    if not entries:
        raise ValueError("no 2-D surface to plot; run with --dims 2")
    return entries


def _levels(values: Tensor, count: int = 20) -> list[float]:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return [low, low + 1e-6]
    return torch.logspace(math.log10(max(low, 1e-4)), math.log10(high), count).tolist() if low > 0 else \
        torch.linspace(low, high, count).tolist()


def plot_contours(result: dict, path) -> None:
    """Contour lines of the 2-D loss surface, one panel per model (Li et al. 2018, Fig. 5),
    levels spaced logarithmically between its lowest and highest loss."""
    from reslab.analysis.plots import figure, save_figure

    entries = _two_d(result)
    fig, axes = figure(ncols=len(entries), size=(5.5 * len(entries), 5.0))
    for ax, entry in zip([axes] if len(entries) == 1 else axes, entries):
        loss = torch.tensor(entry["surface"]["loss"], dtype=torch.float64)
        contour = ax.contour(entry["betas"], entry["alphas"], loss.numpy(), levels=_levels(loss), cmap="viridis")
        ax.clabel(contour, contour.levels[::4], fontsize=7, fmt="%.3g")
        ax.plot([0], [0], "r+", ms=10)
        ax.set_xlabel("direction 2")
        ax.set_ylabel("direction 1")
        ax.set_title(f"{entry['label']}: non-convex share {entry['nonconvex_share']:.2f}")
        ax.set_aspect("equal")
    save_figure(fig, path)


def plot_surfaces(result: dict, path) -> None:
    """The 2-D loss surface in 3-D, one panel per model (Li et al. 2018, Fig. 1 and 5)."""
    from reslab.analysis.plots import figure, save_figure

    entries = _two_d(result)
    fig, axes = figure(ncols=len(entries), size=(5.5 * len(entries), 5.0), subplot_kw={"projection": "3d"})
    for ax, entry in zip([axes] if len(entries) == 1 else axes, entries):
        loss = torch.tensor(entry["surface"]["loss"], dtype=torch.float64)
        b, a = torch.meshgrid(torch.tensor(entry["betas"]), torch.tensor(entry["alphas"]), indexing="xy")
        ax.plot_surface(b.numpy(), a.numpy(), loss.numpy(), cmap="viridis",
                        linewidth=0, antialiased=True)
        ax.set_xlabel("direction 2")
        ax.set_ylabel("direction 1")
        ax.set_zlabel("loss")
        ax.set_title(entry["label"])
    save_figure(fig, path)
