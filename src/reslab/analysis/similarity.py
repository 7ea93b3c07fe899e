"""Layer similarity by linear centred kernel alignment (CKA, Kornblith et al. 2019).

Kornblith, Norouzi, Lee and Hinton, "Similarity of Neural Network Representations Revisited"
(ICML 2019), compare two layers by their responses X (n x p1) and Y (n x p2) to the same n
images. With the Gram matrices K = X X^T, L = Y Y^T and the centring matrix H = I - 11^T / n,

    HSIC(K, L) = tr(K H L H) / (n - 1)^2                     (eq. 3)
    CKA(K, L)  = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))    (eq. 4)

For linear kernels this equals ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features
(eq. 5). CKA is invariant to orthogonal transforms and isotropic scaling of either
representation, not to arbitrary invertible linear maps (sec. 3), and is 1 for identical ones.

Kornblith et al. (sec. 6.1, Fig. 5-6) find that in deep plain nets many later layers have
nearly the same representation (a block of high CKA), where residual nets' similarity changes
gradually, with steps at the downsampling stages. Here each block's output (a residual block of
the model, or a block-like unit of a plain net: :func:`reslab.analysis.lesion.block_modules`)
on a fixed set of images is flattened, its Gram matrix taken in one forward pass, and CKA
computed for every pair: an L x L heatmap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import Tensor, nn

from reslab.analysis.evaluate import autocast, evaluation_mode

HIGH_SIMILARITY = 0.9  # what counts as "nearly the same representation" in the claim table


def gram(features: Tensor) -> Tensor:
    """The linear kernel's Gram matrix X X^T (float64) of ``features`` flattened per image."""
    flat = features.flatten(1).float()
    with torch.autocast(device_type=flat.device.type, enabled=False):  # hooks run inside the model's autocast
        return (flat @ flat.T).double()


def centred(gram_matrix: Tensor) -> Tensor:
    """H K H, with H = I - 11^T / n: the Gram matrix of the centred features."""
    return gram_matrix - gram_matrix.mean(0, keepdim=True) - gram_matrix.mean(1, keepdim=True) + gram_matrix.mean()


def cka_from_grams(k: Tensor, l: Tensor) -> float:
    """CKA (Kornblith et al. 2019, eq. 4) of two Gram matrices of the same images."""
    kc, lc = centred(k), centred(l)
    hsic_kl = (kc * lc).sum()  # tr(KHLH): the common factor 1 / (n - 1)^2 cancels
    denominator = ((kc * kc).sum() * (lc * lc).sum()).sqrt()
    return float(hsic_kl / denominator) if denominator > 0 else float("nan")


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations (n x ...) of the same n images."""
    if len(x) != len(y):
        raise ValueError(f"CKA compares responses to the same images: got {len(x)} and {len(y)} rows")
    return cka_from_grams(gram(x), gram(y))


@torch.no_grad()
def block_grams(model: nn.Module, images: Tensor, *, bf16: bool = False) -> list[tuple[str, Tensor]]:
    """(block name, Gram matrix of its output) for each block of ``model`` on ``images`` (one
    forward pass in eval mode: the Gram matrix needs every image's response at once)."""
    from reslab.analysis.lesion import block_modules

    blocks = block_modules(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no blocks to compare: layer similarity applies to the zoo's "
                         "residual nets and to plain nets built of blocks")
    grams: dict[str, Tensor] = {}
    handles = [module.register_forward_hook(lambda m, i, out, name=name: grams.__setitem__(name, gram(out)))
               for name, module in blocks]
    try:
        with evaluation_mode(model), autocast(images.device, bf16):
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return [(name, grams[name]) for name, _ in blocks]


def cka_matrix(grams: Sequence[Tensor]) -> list[list[float]]:
    """CKA between every pair of Gram matrices (symmetric, ones on the diagonal)."""
    n = len(grams)
    matrix = [[1.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i][j] = matrix[j][i] = cka_from_grams(grams[i], grams[j])
    return matrix


def similarity_study(models: dict[str, tuple[nn.Module, Tensor]], *, bf16: bool = False,
                     tick: Optional[Callable[[], None]] = None) -> dict:
    """Block-by-block CKA of each labelled model on its (normalised) images, and the claim table;
    ``tick()`` is called after each model."""
    from reslab.models.layers import residual_blocks

    entries = []
    for label, (model, images) in models.items():
        named = block_grams(model, images, bf16=bf16)
        matrix = cka_matrix([g for _, g in named])
        n = len(matrix)
        adjacent = [matrix[i][i + 1] for i in range(n - 1)]
        off_diagonal = [matrix[i][j] for i in range(n) for j in range(n) if i != j]
        entries.append({"label": label, "residual": bool(residual_blocks(model)), "blocks": [name for name, _ in named],
                        "num_images": len(images), "cka": matrix,
                        "mean_adjacent_cka": sum(adjacent) / len(adjacent) if adjacent else None,
                        "mean_cka": sum(off_diagonal) / len(off_diagonal) if off_diagonal else None,
                        "high_similarity_share": (sum(v > HIGH_SIMILARITY for v in off_diagonal) / len(off_diagonal)
                                                  if off_diagonal else None)})
        if tick is not None:
            tick()
    return {"experiment": "similarity", "title": "Layer similarity by linear CKA (Kornblith et al. 2019)",
            "precision": "bf16" if bf16 else "fp32", "models": entries, "claims": similarity_claims(entries),
            "plotted": ["cka", "blocks"]}


def similarity_claims(entries: Sequence[dict]) -> list[dict]:
    """Kornblith et al. sec. 6.1: deep plain nets have a block of near-identical later layers
    (many pairs with CKA > 0.9); residual nets do not."""
    def measured(e: dict) -> str:
        share = e["high_similarity_share"]
        return f"{e['label']} {100 * share:.0f}%" if share is not None else f"{e['label']} -"

    residual = [e for e in entries if e["residual"] and e["high_similarity_share"] is not None]
    plain = [e for e in entries if not e["residual"] and e["high_similarity_share"] is not None]
    row = {"claim": f"deep plain nets have many near-identical block outputs (share of block pairs with CKA > "
                    f"{HIGH_SIMILARITY}); residual nets fewer",
           "paper": "Kornblith et al. 2019, sec. 6.1, Fig. 5-6 (plain nets past ~20 layers)",
           "reslab": ", ".join(measured(e) for e in entries), "holds": None}
    if residual and plain:
        row["holds"] = max(e["high_similarity_share"] for e in residual) < min(e["high_similarity_share"] for e in plain)
    return [row]


def plot_similarity(result: dict, path) -> None:
    """One CKA heatmap per model, blocks in network order (Kornblith et al. 2019, Fig. 5)."""
    from reslab.analysis.plots import figure, save_figure

    entries = result["models"]
    fig, axes = figure(ncols=len(entries), size=(5.2 * len(entries), 4.8))
    for ax, entry in zip([axes] if len(entries) == 1 else axes, entries):
        image = ax.imshow(torch.tensor(entry["cka"]).numpy(), cmap="magma", vmin=0, vmax=1, origin="lower")
        ax.set_xlabel("block")
        ax.set_ylabel("block")
        ax.set_title(f"{entry['label']} ({entry['num_images']} images)")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="linear CKA")
    save_figure(fig, path)
