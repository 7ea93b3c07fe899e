"""Shattered gradients at initialisation (Balduzzi et al. 2017).

Balduzzi, Frean, Leary, Lewis, Ma and McWilliams, "The Shattered Gradients Problem: If resnets
are the answer, then what is the question?" (ICML 2017), follow a network's output f along a
line of inputs and look at its gradient there: for a shallow net it varies smoothly (brown
noise); for a deep plain net it looks like white noise, nearby inputs having unrelated
gradients (Fig. 1, 2); the correlation between the gradients at nearby inputs decays
exponentially with depth in plain nets (2^-L, Thm. 1) and only like 1/sqrt(L) in residual nets
with batch normalisation (Thm. 3), so residual nets' gradients stay correlated.

Their inputs are scalars; an image network's input is a tensor, so here the line is
x(t) = x0 + t u, t in [-radius, radius] on ``points`` evenly spaced values, with x0 and u
Gaussian images (normalised-pixel units), and the scalar output is a fixed random unit
projection w of the logits, f(x) = w . logits(x). The gradient along the line is the
directional derivative g(t) = grad_x f(x(t)) . u, the derivative of the 1-D function f(x(t)),
as in the paper's 1-D plots. Its autocorrelation (mean removed, normalised to 1 at lag 0, the
biased estimator) shows white noise as ~0 at every lag >= 1.

Batch normalisation (``bn='batch'``, the default) normalises with the statistics of the line's
points, as a network at initialisation does in its first training step and as the theorem
assumes; the running statistics are left as they were. ``bn='running'`` uses the running
statistics (at initialisation: the identity). Nothing else runs in training mode (no dropout
or dropped blocks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

BN_MODES = ("batch", "running")


@contextlib.contextmanager
def gradient_mode(model: nn.Module, bn: str) -> Iterator[nn.Module]:
    """``model`` in eval mode except its BN layers with ``bn='batch'`` (batch statistics, running
    statistics restored on exit); train/eval flags restored on exit."""
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}")
    flags = {m: m.training for m in model.modules()}
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    saved = [{k: v.clone() for k, v in m.state_dict().items() if k.startswith("running") or k == "num_batches_tracked"}
             for m in norms]
    model.eval()
    if bn == "batch":
        for m in norms:
            m.train()
    try:
        yield model
    finally:
        with torch.no_grad():
            for m, state in zip(norms, saved):
                for name, value in state.items():
                    getattr(m, name).copy_(value)
        for m, training in flags.items():
            m.training = training


def line_of_inputs(shape: Sequence[int], points: int, radius: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(ts, inputs x0 + t u for each t, direction u): a line through a random Gaussian image."""
    x0 = torch.randn(*shape, generator=generator)
    u = torch.randn(*shape, generator=generator)
    ts = torch.linspace(-radius, radius, points)
    return ts, x0 + ts.view(-1, *[1] * len(shape)) * u, u


def directional_gradients(model: nn.Module, inputs: Tensor, direction: Tensor, readout: Tensor) -> Tensor:
    """g_k = grad_x (readout . model(x))|_{x = inputs[k]} . direction, for each input (float64).

    The gradient is that of sum_k readout . model(inputs[k]); with per-image layers it is each
    input's own; with batch statistics each also carries the (small) effect of the others'."""
    x = inputs.detach().clone().requires_grad_(True)
    output = model(x).float() @ readout.to(x.device)
    (grad,) = torch.autograd.grad(output.sum(), x)
    return (grad.double() * direction.to(grad.device).double()).flatten(1).sum(1)


def autocorrelation(signal: Tensor, max_lag: int) -> list[float]:
    """r(k) = sum_t (g_t - m)(g_{t+k} - m) / sum_t (g_t - m)^2 for k = 0..max_lag (biased
    estimator: the sums run over the n - k overlapping terms, the denominator over all n)."""
    g = signal.double() - signal.double().mean()
    energy = g.square().sum()
    if energy == 0:
        return [1.0] + [0.0] * max_lag
    return [1.0] + [float((g[:-k] * g[k:]).sum() / energy) for k in range(1, max_lag + 1)]


def shattering(model: nn.Module, input_shape: Sequence[int], num_classes: int, *, points: int = 256,
               radius: float = 1.0, lines: int = 4, max_lag: int = 20, seed: int = 0, bn: str = "batch",
               device: str = "cpu") -> dict:
    """Directional gradients along ``lines`` random lines (the same lines and readout for every
    model with the same ``seed``) and their autocorrelation, averaged over the lines."""
    generator = torch.Generator().manual_seed(seed)
    readout = torch.randn(num_classes, generator=generator)
    readout /= readout.norm()
    curves, correlations = [], []
    with gradient_mode(model, bn):
        for _ in range(lines):
            ts, inputs, u = line_of_inputs(input_shape, points, radius, generator)
            g = directional_gradients(model, inputs.to(device), u, readout)
            curves.append(g.cpu())
            correlations.append(autocorrelation(g, max_lag))
    mean_correlation = torch.tensor(correlations).mean(0).tolist()
    return {"ts": ts.tolist(), "gradient": curves[0].tolist(), "autocorrelation": mean_correlation,
            "lag1_autocorrelation": mean_correlation[1] if max_lag >= 1 else None,
            "lag1_per_line": [c[1] for c in correlations] if max_lag >= 1 else []}


def shattered_study(models: dict[str, nn.Module], input_shape: Sequence[int], num_classes: int, *, points: int = 256,
                    radius: float = 1.0, lines: int = 4, max_lag: int = 20, seed: int = 0, bn: str = "batch",
                    device: str = "cpu", tick: Optional[Callable[[], None]] = None) -> dict:
    """:func:`shattering` of each labelled model, its number of blocks and the claim table;
    ``tick()`` is called after each model."""
    from reslab.analysis.lesion import block_modules
    from reslab.models.layers import residual_blocks

    entries = []
    for label, model in models.items():
        entry = {"label": label, "residual": bool(residual_blocks(model)), "blocks": len(block_modules(model))}
        entry.update(shattering(model, input_shape, num_classes, points=points, radius=radius, lines=lines,
                                max_lag=max_lag, seed=seed, bn=bn, device=device))
        entries.append(entry)
        if tick is not None:
            tick()
    return {"experiment": "shattered", "title": "Shattered gradients at initialisation (Balduzzi et al. 2017)",
            "points": points, "radius": radius, "lines": lines, "seed": seed, "bn": bn, "precision": "fp32",
            "models": entries, "claims": shattered_claims(entries), "plotted": ["ts", "gradient", "lag1_per_line"]}


def shattered_claims(entries: Sequence[dict]) -> list[dict]:
    """Balduzzi et al.: plain nets' gradients decorrelate with depth (white noise), residual
    nets' stay correlated (lag-1 autocorrelation above the plain net's of the same depth)."""
    plain = sorted((e for e in entries if not e["residual"]), key=lambda e: e["blocks"])
    residual = sorted((e for e in entries if e["residual"]), key=lambda e: e["blocks"])

    def show(group: list[dict]) -> str:
        return ", ".join(f"{e['label']} {e['lag1_autocorrelation']:.2f}" for e in group)

    rows = []
    if len(plain) >= 2:
        rows.append({"claim": "plain nets' input gradients look like white noise with depth: lag-1 autocorrelation "
                              "falls with depth",
                     "paper": "Balduzzi et al. 2017, Fig. 1-2, Thm. 1 (correlation ~ 2^-L)",
                     "reslab": f"lag-1 autocorrelation {show(plain)}",
                     "holds": plain[-1]["lag1_autocorrelation"] < plain[0]["lag1_autocorrelation"]})
    if plain and residual:
        by_depth = {e["blocks"]: e for e in plain}
        pairs = [(r, by_depth[r["blocks"]]) for r in residual if r["blocks"] in by_depth] or [(residual[-1], plain[-1])]
        rows.append({"claim": "residual nets' gradients stay correlated: lag-1 autocorrelation above the plain "
                              "net's of the same depth",
                     "paper": "Balduzzi et al. 2017, Fig. 2, Thm. 3 (correlation ~ 1/sqrt(L) with BN)",
                     "reslab": "; ".join(f"{r['label']} {r['lag1_autocorrelation']:.2f} vs {p['label']} "
                                         f"{p['lag1_autocorrelation']:.2f}" for r, p in pairs),
                     "holds": all(r["lag1_autocorrelation"] > p["lag1_autocorrelation"] for r, p in pairs)})
    if not rows:
        rows.append({"claim": "lag-1 autocorrelation of the input gradient", "paper": "-",
                     "reslab": show(plain + residual), "holds": None})
    return rows


def plot_shattered(result: dict, path) -> None:
    """Left: each model's gradient along the line (scaled to unit std, offset per model); right:
    the autocorrelation against the lag, plain nets dashed (Balduzzi et al. 2017, Fig. 1-2)."""
    from reslab.analysis.plots import colors, figure, save_figure

    entries = result["models"]
    fig, axes = figure(ncols=2, size=(12.0, max(4.5, 0.9 * len(entries) + 2)))
    for k, (entry, color) in enumerate(zip(entries, colors(len(entries)))):
        g = torch.tensor(entry["gradient"], dtype=torch.float64)
        g = (g - g.mean()) / (g.std() if g.std() > 0 else 1.0)
        style = "-" if entry["residual"] else "--"
        axes[0].plot(entry["ts"], (g / 4 + k).tolist(), color=color, lw=0.8)
        axes[1].plot(range(len(entry["autocorrelation"])), entry["autocorrelation"], style, color=color, marker=".",
                     label=f"{entry['label']} ({entry['blocks']} blocks)")
    axes[0].set_yticks(range(len(entries)), [e["label"] for e in entries], fontsize=8)
    axes[0].set_xlabel("t along the line x0 + t u")
    axes[0].set_title("gradient along the line (each scaled to unit std)")
    axes[1].axhline(0, color="0.5", lw=0.8)
    axes[1].set_xlabel("lag (points)")
    axes[1].set_ylabel("autocorrelation")
    axes[1].set_title(f"autocorrelation, mean of {result['lines']} lines (plain dashed)")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    save_figure(fig, path)
