"""What every experiment writes: PNG figures and JSON tables, and the error-curve plot.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no GUI,
no global state), 8 x 5 inches at 130 dpi by default so that they read on a screen. Both kinds
of file are written atomically, so an interrupted experiment never leaves half a file.

:func:`plot_error_curves` draws training error (thin) and test error (bold) against
iterations, one colour per run, as He et al. 2015, Fig. 1 and 6.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from reslab.checkpoint import atomic_write_bytes

FIGURE_SIZE = (8.0, 5.0)  # inches
DPI = 130
PathLike = Union[str, Path]


def figure(ncols: int = 1, nrows: int = 1, size: Optional[tuple[float, float]] = None, **subplot_kw: Any):
    """A new Agg figure and its axes (an array when there are several)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size or FIGURE_SIZE, dpi=DPI)
    axes = fig.subplots(nrows, ncols, squeeze=True, **subplot_kw)
    return fig, axes


def save_figure(fig, path: PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made as needed, atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def write_json(path: PathLike, table: Any) -> Path:
    """Write ``table`` as indented JSON (NaN and infinities become null), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(table), indent=2) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def colors(n: int) -> list:
    """``n`` distinct colours (matplotlib's tab10 cycle, then tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


# ------------------------------------------------------------------------------------------
# Training curves of run folders


@dataclass
class RunCurves:
    """The error curves of one training run (errors in %)."""

    name: str
    train_iterations: list[int]
    train_error: list[float]
    test_iterations: list[int]
    test_error: list[float]


def plot_error_curves(ax, runs: Sequence[RunCurves], *, smooth: int = 1, styles: Optional[Sequence] = None) -> None:
    """Training error (thin) and test error (bold) of ``runs`` vs iterations on ``ax``, one
    colour per run; training error smoothed by a ``smooth``-point moving average. Test points
    are marked, so a curve of one point (a run evaluated once) shows, and its label says so."""
    for run, color in zip(runs, styles or colors(len(runs))):
        if run.train_iterations:
            ax.plot(run.train_iterations, moving_average(run.train_error, smooth), color=color, lw=0.8, alpha=0.8)
        if run.test_iterations:
            single = len(run.test_iterations) == 1
            ax.plot(run.test_iterations, run.test_error, color=color, lw=2.2, marker="o", ms=6 if single else 3,
                    label=f"{run.name} (test evaluated once)" if single else run.name)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    ax.plot([], [], color="0.4", lw=0.8, label="training (thin)")
    ax.plot([], [], color="0.4", lw=2.2, label="test (bold)")
    ax.legend(fontsize=8)


def read_jsonl(path: PathLike) -> list[dict]:
    """The records of a JSON-lines file; a torn last line (a run killed mid-write) is skipped."""
    records = []
    lines = Path(path).read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}, is not JSON; is it a metrics file written by `reslab train`?") from None
    return records


def read_run(run_dir: PathLike, name: Optional[str] = None) -> RunCurves:
    """The error curves of a run folder written by ``reslab train``, in %: training error from
    ``steps.jsonl`` (every log interval; per epoch from ``metrics.jsonl`` if it is missing)
    and test error from ``metrics.jsonl`` (which hold fractions)."""
    run = Path(run_dir)
    metrics_path = run / "metrics.jsonl"
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{run} has no metrics.jsonl; pass run folders written by `reslab train`")
    metrics = read_jsonl(metrics_path)
    steps = read_jsonl(run / "steps.jsonl") if (run / "steps.jsonl").is_file() else []
    train = [r for r in (steps or metrics) if r.get("train_error") is not None]
    test = [r for r in metrics if r.get("test_error") is not None]
    return RunCurves(name or run.name, [r["iteration"] for r in train], [100.0 * r["train_error"] for r in train],
                     [r["iteration"] for r in test], [100.0 * r["test_error"] for r in test])
