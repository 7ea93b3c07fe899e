"""Stochastic depth: stronger early gradients, a shorter expected depth, less time (Huang et al. 2016).

Huang et al. 2016 ("Deep Networks with Stochastic Depth") drop each residual block l for a
whole mini-batch with probability 1 - p_l, p_l = 1 - (l / L)(1 - p_L) (eq. 4). Fig. 8: the
mean absolute gradient reaching the first layers stays larger than with constant depth, most
visibly after each learning-rate drop. Sec. 3: the expected number of blocks computed is
sum p_l = (3L - 1) / 4 for p_L = 0.5, which saves about 25% of the training time.

:func:`sdepth_experiment` trains the same net with constant depth and with stochastic depth
(``DIR/constant``, ``DIR/stochastic``), and a :class:`DepthProbe` callback logs each epoch's
mean absolute gradient of the first residual block's first convolution and the mean number of
blocks whose branch was computed per training step.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from reslab.analysis.degradation import train_or_reuse
from reslab.analysis.plots import colors, figure, read_jsonl, save_figure, write_json
from reslab.models.layers import residual_blocks

RUNS = ("constant", "stochastic")


def first_block_conv(model: nn.Module) -> nn.Conv2d:
    """The first convolution of the first residual block's branch (not of its shortcut)."""
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no residual blocks")
    block = blocks[0][1]
    shortcut = set() if block.downsample is None else {id(m) for m in block.downsample.modules()}
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and id(m) not in shortcut]
    if not convs:
        raise ValueError(f"the first residual block of {type(model).__name__} has no convolution in its branch")
    return convs[0]


class _BranchCounter:
    """Forward hook on a block's drop-path layer, which runs only when the branch is computed:
    counts the training-mode calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        if module.training:
            self.calls += 1


class DepthProbe:
    """Training callback: per epoch, ``first_block_grad`` (mean over steps of the mean |grad|
    of :func:`first_block_conv`'s weight; steps where that block was dropped count as 0) and
    ``active_blocks`` (mean number of residual branches computed per training step).

    Counting hooks are attached at the first step of each epoch and removed at its end, so the
    model carries no hook between epochs (or into a saved checkpoint); the first step of each
    epoch is therefore not counted for ``active_blocks``.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.grad_total, self.grad_steps = 0.0, 0
        self.active_total, self.active_steps = 0, 0
        self.counters: list[_BranchCounter] = []
        self.handles: list = []

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        weight = first_block_conv(model).weight
        self.grad_total += 0.0 if weight.grad is None else weight.grad.detach().abs().mean().item()
        self.grad_steps += 1
        if not self.handles:  # the first step of the epoch: start counting from the next one
            self.counters = [_BranchCounter() for _ in residual_blocks(model)]
            self.handles = [block.drop_path.register_forward_hook(counter)
                            for (_, block), counter in zip(residual_blocks(model), self.counters)]
            return
        self.active_total += sum(c.calls for c in self.counters)
        self.active_steps += 1
        for counter in self.counters:
            counter.calls = 0

    def on_epoch_end(self, epoch: int, metrics: dict) -> Optional[dict]:
        for handle in self.handles:
            handle.remove()
        logged = {}
        if self.grad_steps:
            logged["first_block_grad"] = self.grad_total / self.grad_steps
        if self.active_steps:
            logged["active_blocks"] = self.active_total / self.active_steps
        self._reset()
        return logged


def expected_depth(model_name: str, last_survival: float = 0.5, **overrides: Any) -> dict:
    """L, sum p_l and (3L - 1) / 4 for ``model_name`` with stochastic depth p_L."""
    from reslab.registry import create_model

    survivals = [b.drop_path.survival for _, b in residual_blocks(create_model(model_name, stochastic_depth=last_survival,
                                                                               **overrides))]
    n = len(survivals)
    return {"blocks": n, "sum_survival": sum(survivals), "paper_formula": (3 * n - 1) / 4}


def _epoch_table(run_dir: Path) -> list[dict]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    if not rows or "first_block_grad" not in rows[-1]:
        raise ValueError(f"{run_dir} has no first_block_grad in metrics.jsonl: it was not trained by "
                         "`reslab sdepth` (the run folder names constant/ and stochastic/ are reserved for it)")
    return rows


def _mean_epoch_seconds(rows: list[dict]) -> float:
    """Mean training seconds per epoch, leaving out the first epoch (warm-up) when there are more."""
    seconds = [r["epoch_seconds"] for r in rows]
    return statistics.fmean(seconds[1:] if len(seconds) > 1 else seconds)


def sdepth_summary(out: Union[str, Path], model: str, last_survival: float = 0.5) -> dict:
    """The table of the two runs in ``out``: gradients per epoch, depth and time."""
    out = Path(out)
    tables = {name: _epoch_table(out / name) for name in RUNS}
    seconds = {name: _mean_epoch_seconds(rows) for name, rows in tables.items()}
    measured = [r["active_blocks"] for r in tables["stochastic"] if "active_blocks" in r]
    expected = expected_depth(model, last_survival)
    summary = {
        "experiment": "sdepth", "title": "Stochastic depth (Huang et al. 2016, Fig. 8)", "model": model,
        "last_survival": last_survival,
        "depth": {**expected, "measured_active_blocks": statistics.fmean(measured) if measured else None},
        "time": {"constant_epoch_seconds": seconds["constant"], "stochastic_epoch_seconds": seconds["stochastic"],
                 "time_saved_pct": 100.0 * (1 - seconds["stochastic"] / seconds["constant"]),
                 "expected_saved_pct": 100.0 * (1 - expected["sum_survival"] / expected["blocks"])},
        "final_test_error_pct": {name: 100.0 * rows[-1]["test_error"] for name, rows in tables.items()
                                 if rows[-1].get("test_error") is not None},
        "epochs": [{"epoch": a["epoch"] + 1, "lr": a["lr"], "constant_grad": a["first_block_grad"],
                    "stochastic_grad": b["first_block_grad"], "stochastic_active_blocks": b.get("active_blocks"),
                    "constant_test_error_pct": _pct(a.get("test_error")), "stochastic_test_error_pct": _pct(b.get("test_error"))}
                   for a, b in zip(tables["constant"], tables["stochastic"])],
    }
    summary["claims"] = sdepth_claims(summary)
    return summary


def sdepth_claims(summary: dict) -> list[dict]:
    """Huang et al. 2016 against the two runs: the measured depth against (3L - 1)/4, the time
    saved against the block work saved (it holds when at least 2/3 of it is saved), and the
    first block's gradient, larger with stochastic depth over the second half of training."""
    depth, time, epochs = summary["depth"], summary["time"], summary["epochs"]
    rows = []
    if depth["measured_active_blocks"] is not None:
        rows.append({"claim": "blocks computed per step = sum of p_l = (3L - 1)/4",
                     "paper": "ResNet-110: 40.25 of 54 blocks on average (p_L = 0.5)",
                     "reslab": f"{depth['measured_active_blocks']:.2f} of {depth['blocks']} measured, "
                               f"{depth['sum_survival']:.2f} expected",
                     "holds": abs(depth["measured_active_blocks"] - depth["sum_survival"]) < 0.05 * depth["blocks"]})
    rows.append({"claim": "training time falls with the expected depth",
                 "paper": "about 25% less (C10+: 20h42m -> 15h7m, Table 2)",
                 "reslab": f"{time['time_saved_pct']:.1f}% less time per epoch "
                           f"({time['expected_saved_pct']:.1f}% of the block work saved)",
                 "holds": time["time_saved_pct"] >= 2 / 3 * time["expected_saved_pct"]})
    late = epochs[len(epochs) // 2:]
    ratios = [r["stochastic_grad"] / r["constant_grad"] for r in late if r["constant_grad"]]
    if ratios:
        rows.append({"claim": "a larger gradient reaches the first block with stochastic depth",
                     "paper": "Fig. 8: larger throughout, most after each learning-rate drop",
                     "reslab": f"stochastic / constant mean |grad| over the last {len(late)} epochs: "
                               f"{min(ratios):.2f}-{max(ratios):.2f}x (mean {statistics.fmean(ratios):.2f}x)",
                     "holds": statistics.fmean(ratios) > 1.0})
    return rows


def _pct(value: Optional[float]) -> Optional[float]:
    return None if value is None else 100.0 * value


def plot_sdepth(result: dict, path: Union[str, Path]) -> None:
    """Huang et al. 2016, Fig. 8: mean |gradient| of the first block's first convolution per
    epoch (left, log scale, learning-rate drops dotted) and test error per epoch (right)."""
    rows = result["epochs"]
    epochs = [r["epoch"] for r in rows]
    fig, axes = figure(ncols=2, size=(12.0, 5.0))
    constant, stochastic = colors(2)
    axes[0].plot(epochs, [r["constant_grad"] for r in rows], color=constant, lw=2, label="constant depth")
    axes[0].plot(epochs, [r["stochastic_grad"] for r in rows], color=stochastic, lw=2,
                 label=f"stochastic depth (p_L = {result['last_survival']:g})")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mean |gradient| of the first block's first conv")
    axes[0].set_title("gradient reaching the first block")
    for previous, current in zip(rows, rows[1:]):
        if current["lr"] < 0.5 * previous["lr"]:
            for ax in axes:
                ax.axvline(current["epoch"] - 0.5, color="0.5", ls=":", lw=1)
    axes[1].plot(epochs, [r["constant_test_error_pct"] for r in rows], color=constant, lw=2, label="constant depth")
    axes[1].plot(epochs, [r["stochastic_test_error_pct"] for r in rows], color=stochastic, lw=2, label="stochastic depth")
    axes[1].set_ylabel("test error (%)")
    time = result["time"]
    axes[1].set_title(f"test error; training time per epoch {time['constant_epoch_seconds']:.3g} s vs "
                      f"{time['stochastic_epoch_seconds']:.3g} s ({time['time_saved_pct']:.0f}% saved)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def sdepth_experiment(data: str, out: Union[str, Path], model: str = "resnet56", recipe: str = "stochastic-depth",
                      last_survival: float = 0.5, **overrides: Any) -> dict:
    """Train ``model`` with constant depth (``out/constant``) and with stochastic depth p_L =
    ``last_survival`` (``out/stochastic``), both with ``recipe`` and ``overrides``, each logged
    by a :class:`DepthProbe`; write ``sdepth.json`` and ``sdepth.png``; return the table."""
    from reslab.train import TrainConfig

    out = Path(out)
    status = {}
    for name, survival in zip(RUNS, (None, last_survival)):
        config = TrainConfig.from_recipe(recipe, model=model, data=str(data), out=str(out / name),
                                         stochastic_depth=survival, **overrides)
        status[name] = train_or_reuse(config, [DepthProbe()])
    result = {**sdepth_summary(out, model, last_survival), "recipe": recipe, "overrides": dict(overrides), "status": status}
    write_json(out / "sdepth.json", result)
    plot_sdepth(result, out / "sdepth.png")
    return result
