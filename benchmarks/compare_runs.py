"""Compare finished `reslab train` runs epoch by epoch: time per phase and training error.

For each run folder: how many epochs trained on small crops (the trainer's own
``TrainConfig.small_crop_epochs`` of the run's ``config.json``), the mean epoch time of that phase and of the full-size one, the
summed epoch times (training only, without evaluation), the final training error, the final
test accuracy with the run's test-time views (``result.json``) and single view (``eval/eval.json``,
written by ``reslab eval RUN --out RUN/eval``, when present), and the training error minus the
first run's, epoch by epoch. Wall times of runs made hours apart on a machine that drifts are
best compared through the ratios within each run (small-crop epoch / full-size epoch).

    python benchmarks/compare_runs.py experiments/fast-recipe/runs/icelake_seed0 experiments/fast-recipe/runs/icelake_crop16of25_seed0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

from reslab.analysis.plots import read_jsonl
from reslab.errors import ReslabError
from reslab.train.progress import METRICS_FILE
from reslab.train.state import RESULT_FILE, read_config


def read_run(folder: Path) -> dict[str, Any]:
    """The parts of a finished run folder that the comparison needs."""
    try:
        config = read_config(folder)
        metrics = read_jsonl(folder / METRICS_FILE)
        result = json.loads((folder / RESULT_FILE).read_text())
        eval_file = folder / "eval" / "eval.json"
        single_view: Optional[float] = json.loads(eval_file.read_text())["accuracy_pct"] if eval_file.exists() else None
        small = config.small_crop_epochs(iterations_per_epoch=metrics[0]["iteration"])
        seconds = [m["epoch_seconds"] for m in metrics]
        errors = [m["train_error"] for m in metrics]
        accuracy = result["test_accuracy"]
    except (ReslabError, OSError, KeyError, IndexError, ValueError) as error:
        raise SystemExit(f"compare_runs.py: {folder} is not a finished run folder of reslab train ({error})")
    return dict(small_epochs=small, seconds=seconds, errors=errors, accuracy=accuracy, single_view=single_view)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Small-crop epochs, mean epoch seconds per phase, training seconds and the final figures."""
    small, seconds = run["small_epochs"], run["seconds"]
    return dict(small_epochs=small, small_mean=_mean(seconds[:small]), full_mean=_mean(seconds[small:]),
                training_seconds=sum(seconds), train_error=100 * run["errors"][-1],
                accuracy=100 * run["accuracy"], single_view=run["single_view"])


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by reslab train")
    args = parser.parse_args(argv)
    runs = [read_run(folder) for folder in args.runs]
    print("| run | small-crop epochs | mean epoch s, small / full | training s | training error, last epoch "
          "| accuracy, the run's views | single view |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for folder, run in zip(args.runs, runs):
        s = summarise(run)
        single = "" if s["single_view"] is None else f"{s['single_view']:.2f}%"
        print(f"| {folder} | {s['small_epochs']} | {s['small_mean']:.1f} / {s['full_mean']:.1f} | "
              f"{s['training_seconds']:.0f} | {s['train_error']:.2f}% | {s['accuracy']:.2f}% | {single} |")
    first = runs[0]["errors"]
    for folder, run in zip(args.runs[1:], runs[1:]):
        differences = [round(100 * (error - base), 2) for error, base in zip(run["errors"], first)]
        print(f"{folder}: training error minus {args.runs[0]}'s, per epoch (points): {differences}")


if __name__ == "__main__":
    sys.exit(main())
