"""Lesion study: delete and reorder blocks of a trained network at test time (Veit et al. 2016).

Veit et al. ("Residual Networks Behave Like Ensembles of Relatively Shallow Networks", sec. 4)
show that deleting one block of a residual network barely changes its test error, except at the
downsampling blocks (Fig. 3 a), while deleting one layer of a plain network (VGG) gives
chance-level error (Fig. 3 b); that the error rises smoothly with the number of blocks deleted
(Fig. 5 a) and with the number of blocks reordered (Fig. 5 b).

Blocks are found by walking the model, never by architecture:

* a residual network's *units* are its :class:`~reslab.models.layers.ResidualBlock` s; deleting
  one sets ``branch_enabled = False``, so the block computes only its shortcut (the identity,
  or the projection / zero-padding of a downsampling block);
* a plain network's units are the block-like children (those holding a convolution) of its
  ``nn.Sequential`` / ``nn.ModuleList`` containers; one whose input and output shapes are
  equal is deleted by replacing it with ``nn.Identity``, one that changes the shape cannot be.

Shapes come from a probe forward pass. Reordering swaps the module objects of pairs of residual
blocks with identical input and output shapes inside their parent containers. Every change is
made by a context manager that restores the model on exit, even on error.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from reslab.analysis.evaluate import Batch, accuracy, evaluation_mode
from reslab.analysis.plots import figure, save_figure
from reslab.models.layers import ResidualBlock, residual_blocks

RESIDUAL_COLOR, DOWNSAMPLING_COLOR, PLAIN_COLOR = "tab:blue", "tab:orange", "tab:red"


@dataclass(frozen=True)
class Unit:
    """A block of a network that a lesion can delete, with its per-image input/output shapes."""

    name: str
    residual: bool
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def reshapes(self) -> bool:
        """True for a block that changes the shape (a downsampling block)."""
        return self.in_shape != self.out_shape

    @property
    def deletable(self) -> bool:
        """A residual block always keeps its shortcut; a plain block only if shapes allow."""
        return self.residual or not self.reshapes


def block_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's residual blocks; for a network without any, its block-like units: the
    children of ``nn.Sequential``/``nn.ModuleList`` containers that hold a convolution,
    outermost first (a unit inside another unit is not a unit)."""
    blocks = residual_blocks(model)
    if blocks:
        return list(blocks)
    found = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            for child_name, child in parent.named_children():
                if any(isinstance(m, nn.Conv2d) for m in child.modules()):
                    found.append((f"{parent_name}.{child_name}" if parent_name else child_name, child))
    names = [name for name, _ in found]
    return [(name, m) for name, m in found if not any(name.startswith(other + ".") for other in names)]


class _ShapeRecorder:
    """Forward hook that keeps the per-image input and output shapes of its module."""

    def __init__(self) -> None:
        self.shapes: Optional[tuple[tuple[int, ...], tuple[int, ...]]] = None

    def __call__(self, module: nn.Module, inputs: tuple, output: Tensor) -> None:
        self.shapes = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))


@torch.no_grad()
def find_units(model: nn.Module, example: Tensor) -> list[Unit]:
    """The model's units (:func:`block_modules`) with shapes from one forward pass of ``example``."""
    modules = block_modules(model)
    recorders = [_ShapeRecorder() for _ in modules]
    handles = [m.register_forward_hook(r) for (_, m), r in zip(modules, recorders)]
    try:
        with evaluation_mode(model):
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    units = []
    for (name, module), recorder in zip(modules, recorders):
        if recorder.shapes is None:
            raise ValueError(f"block {name} was not called in the forward pass, so its shapes are unknown")
        units.append(Unit(name, isinstance(module, ResidualBlock), *recorder.shapes))
    return units


# ------------------------------------------------------------------------------------------
# Changes made for the duration of a `with` block


@contextlib.contextmanager
def lesioned(model: nn.Module, units: Sequence[Unit]) -> Iterator[nn.Module]:
    """Delete ``units`` for the duration: a residual block loses its branch, a shape-preserving
    plain block becomes ``nn.Identity``. Restored on exit."""
    undo: list[tuple[Unit, object]] = []
    try:
        for unit in units:
            if not unit.deletable:
                raise ValueError(f"block {unit.name} changes the shape {unit.in_shape} -> {unit.out_shape} "
                                 "and has no shortcut, so it cannot be deleted")
            if unit.residual:
                block = model.get_submodule(unit.name)
                undo.append((unit, block.branch_enabled))
                block.branch_enabled = False
            else:
                undo.append((unit, model.get_submodule(unit.name)))
                model.set_submodule(unit.name, nn.Identity())
        yield model
    finally:
        for unit, saved in reversed(undo):
            if unit.residual:
                model.get_submodule(unit.name).branch_enabled = saved
            else:
                model.set_submodule(unit.name, saved)


def swappable_pairs(units: Sequence[Unit]) -> list[tuple[str, str]]:
    """Pairs of residual blocks that can trade places: identical input and output shapes, and
    neither inside the other."""
    candidates = [u for u in units if u.residual and not u.reshapes]
    return [(a.name, b.name) for i, a in enumerate(candidates) for b in candidates[i + 1:]
            if a.in_shape == b.in_shape and not _nested(a.name, b.name)]


def _nested(a: str, b: str) -> bool:
    return a.startswith(b + ".") or b.startswith(a + ".")


@contextlib.contextmanager
def reordered(model: nn.Module, swaps: Sequence[tuple[str, str]]) -> Iterator[nn.Module]:
    """Swap the modules at each pair of positions, in order, for the duration. Restored on exit."""
    positions = sorted({name for pair in swaps for name in pair})
    original = {name: model.get_submodule(name) for name in positions}
    arrangement = dict(original)
    for a, b in swaps:
        arrangement[a], arrangement[b] = arrangement[b], arrangement[a]
    try:
        for name in positions:
            model.set_submodule(name, arrangement[name])
        yield model
    finally:
        for name in positions:
            model.set_submodule(name, original[name])


# ------------------------------------------------------------------------------------------
# The studies


def lesion_evaluations(units: Sequence[Unit], max_k: int, draws: int, *, include_downsampling: bool = False,
                       plain_units: Optional[Sequence[Unit]] = None) -> int:
    """How many passes over the test images :func:`lesion_study` makes (for a progress bar)."""
    def single(found: Sequence[Unit]) -> int:
        return sum(1 for u in found if u.deletable) + 1

    candidates = sum(1 for u in units if include_downsampling or not u.reshapes)
    pairs = len(swappable_pairs(units))
    return (single(units) + draws * (min(max_k, candidates) + min(max_k, pairs))
            + (single(plain_units) if plain_units is not None else 0))


def error_pct(model: nn.Module, batches: Sequence[Batch], bf16: bool = False,
              tick: Optional[Callable[[], None]] = None) -> float:
    """Test error of ``model`` on ``batches`` in %; ``tick()`` after the pass."""
    error = 100.0 * (1.0 - accuracy(model, batches, bf16=bf16))
    if tick is not None:
        tick()
    return error


def delete_each(model: nn.Module, batches: Sequence[Batch], *, bf16: bool = False,
                tick: Optional[Callable[[], None]] = None) -> dict:
    """Test error with each unit deleted alone (Veit et al. 2016, Fig. 3), with the baseline
    and chance-level errors; a unit that cannot be deleted gets ``error_pct = None``."""
    example = batches[0][0][:2]
    units = find_units(model, example)
    with evaluation_mode(model), torch.no_grad():
        num_classes = model(example).shape[1]
    rows = []
    for index, unit in enumerate(units, 1):
        error = None
        if unit.deletable:
            with lesioned(model, [unit]):
                error = error_pct(model, batches, bf16, tick)
        rows.append({"index": index, "block": unit.name, "downsampling": unit.reshapes,
                     "deletable": unit.deletable, "error_pct": error})
    return {"residual": any(u.residual for u in units), "baseline_error_pct": error_pct(model, batches, bf16, tick),
            "chance_error_pct": 100.0 * (1 - 1 / num_classes), "blocks": rows}


def _summary(k: int, errors: list[float]) -> dict:
    return {"k": k, "draws": len(errors), "mean_error_pct": statistics.fmean(errors),
            "std_error_pct": statistics.pstdev(errors), "min_error_pct": min(errors),
            "max_error_pct": max(errors), "errors_pct": errors}


def error_vs_k(model: nn.Module, batches: Sequence[Batch], choices: Sequence, change: Callable, max_k: int, draws: int,
               rng: random.Random, *, bf16: bool = False, tick: Optional[Callable[[], None]] = None) -> list[dict]:
    """Test error under ``change(model, k random choices)`` (a context manager), ``draws``
    draws for each k = 1..max_k (at most the number of choices)."""
    rows = []
    for k in range(1, min(max_k, len(choices)) + 1):
        errors = []
        for _ in range(draws):
            with change(model, rng.sample(list(choices), k)):
                errors.append(error_pct(model, batches, bf16, tick))
        rows.append(_summary(k, errors))
    return rows


def delete_random(model: nn.Module, batches: Sequence[Batch], candidates: Sequence[Unit], max_k: int, draws: int,
                  rng: random.Random, *, bf16: bool = False, tick: Optional[Callable[[], None]] = None) -> list[dict]:
    """Test error with k random ``candidates`` deleted (Veit et al. 2016, Fig. 5 a)."""
    return error_vs_k(model, batches, candidates, lesioned, max_k, draws, rng, bf16=bf16, tick=tick)


def reorder_random(model: nn.Module, batches: Sequence[Batch], pairs: Sequence[tuple[str, str]], max_k: int,
                   draws: int, rng: random.Random, *, bf16: bool = False,
                   tick: Optional[Callable[[], None]] = None) -> list[dict]:
    """Test error with k random ``pairs`` of same-shape blocks swapped (Veit et al. 2016, Fig. 5 b)."""
    return error_vs_k(model, batches, pairs, reordered, max_k, draws, rng, bf16=bf16, tick=tick)


def lesion_study(model: nn.Module, batches: Sequence[Batch], *, plain: Optional[tuple[nn.Module, Sequence[Batch]]] = None,
                 max_k: int = 10, draws: int = 5, seed: int = 0, include_downsampling: bool = False,
                 bf16: bool = False, tick: Optional[Callable[[], None]] = None) -> dict:
    """The whole study of Veit et al. 2016, sec. 4, as one JSON-ready table.

    ``single``: error with each block deleted alone; ``deleted``: error vs the number k of
    random blocks deleted (downsampling blocks are candidates only with
    ``include_downsampling``); ``reordered``: error vs the number k of random swaps of
    same-shape blocks; ``plain`` (when a plain net and its batches are given): each of its
    units deleted alone; ``claims``: the paper's claims against these numbers. ``tick()`` is
    called after each pass over the test images. The models are left as they were.
    """
    if not residual_blocks(model):
        raise ValueError(f"{type(model).__name__} has no residual blocks: pass a residual network, "
                         "and a plain one as the plain network to compare")
    rng = random.Random(seed)
    with evaluation_mode(model):
        single = delete_each(model, batches, bf16=bf16, tick=tick)
        units = find_units(model, batches[0][0][:2])
        candidates = [u for u in units if include_downsampling or not u.reshapes]
        pairs = swappable_pairs(units)
        result = {
            "experiment": "lesion",
            "title": "Lesion study (Veit et al. 2016, Fig. 3 and 5)",
            "num_images": sum(len(y) for _, y in batches), "draws": draws, "seed": seed,
            "deletion_candidates": "all blocks" if include_downsampling else "blocks that keep the shape (not downsampling)",
            "single": single,
            "deleted": delete_random(model, batches, candidates, max_k, draws, rng, bf16=bf16, tick=tick),
            "reordered": reorder_random(model, batches, pairs, max_k, draws, rng, bf16=bf16, tick=tick),
        }
    if plain is not None:
        plain_model, plain_batches = plain
        with evaluation_mode(plain_model):
            result["plain"] = delete_each(plain_model, plain_batches, bf16=bf16, tick=tick)
    result["claims"] = lesion_claims(result)
    return result


def lesion_claims(result: dict) -> list[dict]:
    """Veit et al. 2016, sec. 4 against a lesion study's numbers. "Barely changes" is read as a
    median rise of under 2 points over the blocks that keep the shape; "collapses" as a median
    within 10 points of chance; "rises smoothly" as a mean error that never falls as k grows by
    more than sampling noise allows (two standard errors of the difference of two means over the
    draws, at least 0.5 points) and stays below chance at the largest k."""
    single = result["single"]
    base, chance = single["baseline_error_pct"], single["chance_error_pct"]
    kept = [r["error_pct"] for r in single["blocks"] if not r["downsampling"] and r["error_pct"] is not None]
    down = [r["error_pct"] for r in single["blocks"] if r["downsampling"] and r["error_pct"] is not None]
    median = statistics.median(kept) if kept else None
    rows = [{"claim": "deleting one residual block (not downsampling) barely changes the test error",
             "paper": "ResNet-110: most single deletions stay near the ~6% baseline (Fig. 3 a)",
             "reslab": (f"baseline {base:.2f}%, median {median:.2f}%, worst {max(kept):.2f}% over {len(kept)} blocks"
                        if kept else "no block that keeps the shape"),
             "holds": None if median is None else median - base < 2.0}]
    if down:
        rows.append({"claim": "deleting a downsampling block hurts more than the others",
                     "paper": "ResNet-110: the downsampling blocks are the exceptions (Fig. 3 a)",
                     "reslab": f"downsampling blocks {', '.join(f'{e:.1f}%' for e in down)}",
                     "holds": None if median is None else min(down) > median})
    if "plain" in result:
        plain = [r["error_pct"] for r in result["plain"]["blocks"] if r["error_pct"] is not None]
        plain_median = statistics.median(plain) if plain else None
        rows.append({"claim": "deleting one layer of a plain network gives chance-level error",
                     "paper": "VGG-15 on CIFAR-10: ~90% error for any single deletion (Fig. 3 b)",
                     "reslab": (f"plain baseline {result['plain']['baseline_error_pct']:.2f}%, median {plain_median:.1f}%, "
                                f"best {min(plain):.1f}% over {len(plain)} blocks" if plain else "no deletable block"),
                     "holds": None if plain_median is None else plain_median > chance - 10})
    for key, what, paper in (("deleted", "deleting", "Fig. 5 a: smooth rise, ~20% error at 10 of 54 blocks deleted"),
                             ("reordered", "reordering", "Fig. 5 b: smooth rise with the number of swaps")):
        studies = result.get(key, [])
        means = [r["mean_error_pct"] for r in studies]
        if len(means) > 1:  # a rise needs two k at least
            # the standard error of each mean over its draws; a fall within two of them is noise
            errors = [r.get("std_error_pct", 0.0) / math.sqrt(max(result["draws"], 1)) for r in studies]
            falls = [(a - b, max(0.5, 2 * math.hypot(ea, eb)))
                     for a, b, ea, eb in zip(means, means[1:], errors, errors[1:])]
            fall, allowed = max(falls)
            rows.append({"claim": f"the error rises smoothly with the number of blocks {what[:-3] + 'ed'}",
                         "paper": f"ResNet-110, {paper}",
                         "reslab": f"mean error k=1 {means[0]:.1f}%, k={len(means)} {means[-1]:.1f}% "
                                   f"({result['draws']} draws each); largest fall {max(fall, 0.0):.1f} points "
                                   f"(noise allows {allowed:.1f})",
                         "holds": all(f <= a for f, a in falls) and means[-1] < chance})
    return rows


# ------------------------------------------------------------------------------------------
# Figures


def _plot_single(ax, study: dict, title: str) -> None:
    rows = study["blocks"]
    x = [r["index"] for r in rows]
    kept = [r for r in rows if r["error_pct"] is not None]
    color = RESIDUAL_COLOR if study["residual"] else PLAIN_COLOR
    ax.bar([r["index"] for r in kept], [r["error_pct"] for r in kept], width=0.8,
           color=[DOWNSAMPLING_COLOR if r["downsampling"] else color for r in kept])
    blocked = [r["index"] for r in rows if r["error_pct"] is None]
    if blocked:
        ax.plot(blocked, [0] * len(blocked), "kx", ms=7, clip_on=False, label="cannot be deleted (changes shape)")
    ax.axhline(study["baseline_error_pct"], color="k", ls="--", lw=1,
               label=f"nothing deleted ({study['baseline_error_pct']:.1f}%)")
    ax.axhline(study["chance_error_pct"], color="0.5", ls=":", lw=1.2, label=f"chance ({study['chance_error_pct']:.0f}%)")
    handles, labels = ax.get_legend_handles_labels()
    if study["residual"] and any(r["downsampling"] for r in kept):
        from matplotlib.patches import Patch

        handles.append(Patch(color=DOWNSAMPLING_COLOR))
        labels.append("downsampling block")
    ax.set_xlim(0.3, max(x) + 0.7)
    ax.set_ylim(0, 100)
    ax.set_xlabel("deleted block (network order)")
    ax.set_ylabel("test error (%)")
    ax.set_title(title)
    ax.legend(handles, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)


def plot_single_deletions(result: dict, path) -> None:
    """Test error with each block deleted: residual vs plain, with the chance line (Veit Fig. 3)."""
    panels = [("single", "residual network: one block deleted")]
    if "plain" in result:
        panels.append(("plain", "plain network: one block deleted"))
    fig, axes = figure(ncols=len(panels), size=(6.0 * len(panels), 5.5))
    for ax, (key, title) in zip(axes if len(panels) > 1 else [axes], panels):
        _plot_single(ax, result[key], title)
    save_figure(fig, path)


def plot_k_studies(result: dict, path) -> None:
    """Test error vs the number of blocks deleted and reordered (Veit et al. 2016, Fig. 5)."""
    fig, axes = figure(ncols=2, size=(11.0, 4.8))
    baseline = result["single"]["baseline_error_pct"]
    for ax, key, xlabel in ((axes[0], "deleted", "number of blocks deleted"),
                            (axes[1], "reordered", "number of swaps of same-shape blocks")):
        rows = result[key]
        ks = [0] + [r["k"] for r in rows]
        ax.errorbar(ks, [baseline] + [r["mean_error_pct"] for r in rows], yerr=[0] + [r["std_error_pct"] for r in rows],
                    color=RESIDUAL_COLOR, marker="o", capsize=3, label="mean ± std over draws")
        for r in rows:
            ax.plot([r["k"]] * len(r["errors_pct"]), r["errors_pct"], ".", color="0.6", ms=4)
        ax.axhline(result["single"]["chance_error_pct"], color="0.5", ls=":", lw=1.2, label="chance")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test error (%)")
        ax.set_xticks(ks if len(ks) <= 21 else ks[:: math.ceil(len(ks) / 20)])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("deleting random blocks")
    axes[1].set_title("reordering random blocks")
    save_figure(fig, path)
