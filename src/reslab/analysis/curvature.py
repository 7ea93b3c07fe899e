"""Curvature of the loss: top Hessian eigenvalues and the Hessian's trace (as PyHessian).

Yao, Gholami, Keutzer and Mahoney, "PyHessian: Neural Networks Through the Lens of the
Hessian" (2020), measure the curvature of the training loss L(theta) at trained weights on a
fixed batch, without forming the Hessian H: only Hessian-vector products Hv, by differentiating
the gradient's inner product with v (Pearlmutter 1994; torch.autograd with create_graph):

* the top eigenvalues by power iteration, v <- Hv / ||Hv||, lambda = v^T H v, each next one
  after deflating the found ones (PyHessian Alg. 1);
* the trace by Hutchinson's method, tr(H) = E[v^T H v] over Rademacher vectors v (entries +-1
  with equal probability; PyHessian Alg. 2), with its standard error.

Both run in float32, in eval mode (BN with its running statistics, so the loss of each image
depends on the weights only, as in PyHessian's examples), on the parameters that take gradients.
The algorithms are those of ``hessian-eigenthings`` (its HessianOperator's autograd product,
``deflated_power_iteration`` and ``hutchinson``); this module adds the progress bar, the batch
and the claim table. A larger top eigenvalue and trace mean a sharper minimum; residual nets
sit in flatter ones than plain nets of the same depth (Li et al. 2018; Yao et al. 2020, Fig. 3).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.analysis.evaluate import Batch, evaluation_mode


def _operator(model: nn.Module, batch: Batch, tick: Optional[Callable[[], None]]):
    """hessian-eigenthings' Hessian of the mean cross-entropy on ``batch`` with exact products
    (its finite-difference products are not used: across the kinks of ReLU they are biased, 1.5%
    on the top eigenvalue of the tests' tiny ResNet), counting its products."""
    from hessian_eigenthings import HessianOperator, supervised_loss

    operator = HessianOperator(model, [batch], supervised_loss(F.cross_entropy), method="autograd")
    if tick is not None:
        product = operator.matvec

        def counted(v: Tensor) -> Tensor:
            result = product(v)
            tick()
            return result

        operator.matvec = counted
    return operator


def hessian_curvature(model: nn.Module, batch: Batch, *, top_k: int = 1, power_iterations: int = 100,
                      tolerance: float = 1e-3, trace_samples: int = 50, seed: int = 0,
                      tick: Optional[Callable[[], None]] = None) -> dict:
    """Top ``top_k`` Hessian eigenvalues (power iteration with deflation, at most
    ``power_iterations`` products each, stopped at relative change ``tolerance``) and the
    Hutchinson trace from ``trace_samples`` Rademacher vectors, of the mean cross-entropy of
    ``model`` on ``batch`` (images, labels). ``tick()`` is called after each Hessian-vector
    product (a double backward pass: about six times a gradient's cost on CPUs)."""
    from hessian_eigenthings import deflated_power_iteration, hutchinson

    images, labels = batch
    batch = (images.float(), labels)
    with evaluation_mode(model):
        operator = _operator(model, batch, tick)
        eigen = deflated_power_iteration(operator, k=top_k, max_iter=power_iterations, tol=tolerance, seed=seed)
        trace = hutchinson(operator, num_samples=trace_samples, distribution="rademacher", seed=seed)
        with torch.no_grad():
            loss = F.cross_entropy(model(batch[0]), labels).item()
    return {"parameters": operator.size, "loss": loss,
            "top_eigenvalues": [float(v) for v in eigen.eigenvalues],
            "converged": [bool(c) for c in eigen.converged], "power_products": int(eigen.iterations),
            "trace": trace.estimate, "trace_stderr": trace.stderr, "trace_samples": trace_samples}


def curvature_study(models: dict[str, tuple[nn.Module, Batch]], *, top_k: int = 1, power_iterations: int = 100,
                    tolerance: float = 1e-3, trace_samples: int = 50, seed: int = 0,
                    tick: Optional[Callable[[], None]] = None) -> dict:
    """:func:`hessian_curvature` of each labelled model on its batch, and the claim table."""
    from reslab.models.layers import residual_blocks

    entries = []
    for label, (model, batch) in models.items():
        entry = {"label": label, "residual": bool(residual_blocks(model)), "num_images": len(batch[1])}
        entry.update(hessian_curvature(model, batch, top_k=top_k, power_iterations=power_iterations,
                                       tolerance=tolerance, trace_samples=trace_samples, seed=seed, tick=tick))
        entries.append(entry)
    return {"experiment": "curvature", "title": "Hessian eigenvalues and trace (PyHessian, Yao et al. 2020)",
            "top_k": top_k, "trace_samples": trace_samples, "seed": seed, "precision": "fp32", "models": entries,
            "claims": curvature_claims(entries)}


def curvature_claims(entries: Sequence[dict]) -> list[dict]:
    """Residual nets sit in flatter minima: smaller top eigenvalue and trace than plain nets.

    A top eigenvalue whose power iteration did not converge is marked: it is a Rayleigh quotient,
    so a lower bound of the largest eigenvalue in magnitude. The claim then still holds when
    the unconverged values are the plain nets' (their true values are larger still), and cannot
    be judged (``None``) when a residual net's did not converge."""
    residual = [e for e in entries if e["residual"]]
    plain = [e for e in entries if not e["residual"]]
    if not (residual and plain):
        return [{"claim": f"{e['label']}: top eigenvalue and trace", "paper": "-",
                 "reslab": f"lambda_max {e['top_eigenvalues'][0]:.4g}, trace {e['trace']:.4g} +- {e['trace_stderr']:.2g}",
                 "holds": None} for e in entries]
    rows = []
    for key, name in (("top_eigenvalue", "top eigenvalue"), ("trace", "trace")):
        def value(e: dict) -> float:
            return e["top_eigenvalues"][0] if key == "top_eigenvalue" else e["trace"]

        def lower_bound(e: dict) -> bool:  # an unconverged power iteration's eigenvalue
            return key == "top_eigenvalue" and not all(e.get("converged", [True]))

        def shown(e: dict) -> str:
            return f"{e['label']} {value(e):.4g}" + (" (not converged: at least this)" if lower_bound(e) else "")

        holds = None if any(map(lower_bound, residual)) else max(map(value, residual)) < min(map(value, plain))
        rows.append({"claim": f"the residual net's Hessian {name} is smaller than the plain net's (flatter minimum)",
                     "paper": "Li et al. 2018 Fig. 7; Yao et al. 2020 Fig. 3: skip connections flatten the loss",
                     "reslab": ", ".join(shown(e) for e in [*residual, *plain]), "holds": holds})
    return rows


def plot_curvature(result: dict, path) -> None:
    """Top eigenvalues (left) and trace with its standard error (right) per model, log scale."""
    from reslab.analysis.lesion import PLAIN_COLOR, RESIDUAL_COLOR
    from reslab.analysis.plots import figure, save_figure

    entries = result["models"]
    fig, axes = figure(ncols=2, size=(10.0, 4.5))
    labels = [e["label"] for e in entries]
    colours = [RESIDUAL_COLOR if e["residual"] else PLAIN_COLOR for e in entries]
    for i, entry in enumerate(entries):
        values = entry["top_eigenvalues"]
        axes[0].plot([i] * len(values), values, "o", color=colours[i])
        axes[0].annotate(f"{values[0]:.3g}", (i, values[0]), textcoords="offset points", xytext=(6, 0), fontsize=8)
    axes[0].set_ylabel("top Hessian eigenvalues")
    axes[1].bar(range(len(entries)), [e["trace"] for e in entries], yerr=[e["trace_stderr"] or 0 for e in entries],
                color=colours, capsize=4)
    axes[1].set_ylabel("Hessian trace (Hutchinson)")
    for ax in axes:
        ax.set_xticks(range(len(entries)), labels, rotation=20, ha="right", fontsize=8)
        if all(v > 0 for e in entries for v in (e["top_eigenvalues"][0], e["trace"])):
            ax.set_yscale("log")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("power iteration (blue: residual, red: plain)")
    axes[1].set_title("trace by Hutchinson's method")
    save_figure(fig, path)
