"""Several seeds of one config: ``DIR/seed<k>/`` each, and ``DIR/summary.json`` with the mean
and standard deviation of the final test error (the papers report medians or means of 5 runs;
one run's error says little about a 0.2% difference)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from reslab.errors import TrainingError
from reslab.train.config import TrainConfig
from reslab.train.distributed import detect
from reslab.train.state import CHECKPOINT_FILE, environment, write_json
from reslab.train.trainer import train

SEEDS_FILE = "seeds.json"
SUMMARY_FILE = "summary.json"


def train_seeds(config: TrainConfig, seeds: Sequence[int], callbacks: Sequence[Any] = (), *,
                resume: bool = False) -> dict[str, Any]:
    """Train ``config`` once per seed into ``config.out/seed<k>``; the summary of the runs.
    ``resume=True`` continues the unfinished runs of a folder started this way."""
    out = Path(config.out)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"give distinct seeds, e.g. 0,1,2; got {list(seeds)}")
    main = detect().is_main
    if main and not resume:
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / SEEDS_FILE, {"seeds": list(seeds), "config": config.to_dict()})
        except OSError as exc:
            raise TrainingError(f"cannot write to the run folder {out}: {exc.strerror or exc}") from None
    results = []
    for seed in seeds:
        run = replace(config, seed=seed, out=str(out / f"seed{seed}"))
        started = (Path(run.out) / CHECKPOINT_FILE).exists()
        results.append(train(run, callbacks, resume=resume and started))
    errors = [r["test_error"] for r in results]
    summary = {"seeds": list(seeds), "test_errors": errors, "test_error_mean": statistics.fmean(errors),
               "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
               "std_note": "sample standard deviation (n - 1) over the seeds",
               "torch_version": torch.__version__, "environment": environment(torch.device(
                   "cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")),
               "config": config.to_dict(), "runs": results}
    if main:
        write_json(out / SUMMARY_FILE, summary)
    return summary


def read_seeds(out: Path) -> tuple[TrainConfig, list[int]]:
    """The config and seeds of a folder started by :func:`train_seeds`, its ``out`` set to
    ``out`` (where the folder is now)."""
    data = json.loads((Path(out) / SEEDS_FILE).read_text())
    config = TrainConfig.from_dict({**data["config"], "out": str(out)}, str(Path(out) / SEEDS_FILE))
    return config, list(data["seeds"])
