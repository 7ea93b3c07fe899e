"""What a run shows and records while it trains.

* :class:`Progress`: a tqdm bar per epoch (loss, error, learning rate, images/s) on a terminal;
  plain lines every ``log_interval`` iterations when stdout is a file or a CI log.
* :class:`RunLog`: ``DIR/metrics.jsonl`` (one line per epoch), ``DIR/steps.jsonl`` (one line
  every ``log_interval`` iterations: the training error at a finer grain than epochs, for the
  degradation plots) and, if asked, TensorBoard scalars.

Only rank 0 shows and records; the other ranks get disabled instances.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

from reslab.checkpoint import atomic_write_bytes
from reslab.errors import ReslabError
from reslab.train.state import strict_json

METRICS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"


def plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, in the plural unless ``count`` is 1 ("1 epoch", "2 classes")."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count:,} {noun}{'es' if noun.endswith(('s', 'sh', 'tch', 'nch', 'x')) else 's'}"  # epochs, batches


class Progress:
    """Progress of the epochs on stdout."""

    def __init__(self, mode: str, enabled: bool, total_epochs: int) -> None:
        self.enabled = enabled and mode != "quiet"
        self.use_bar = self.enabled and (mode == "bar" or (mode == "auto" and sys.stdout.isatty()))
        self.plain_steps = self.enabled and not self.use_bar
        self.total_epochs = total_epochs
        self._bar = None
        self._epoch = 0

    def message(self, text: str) -> None:
        """A line of information (through the bar, so that it is not overwritten)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def start_epoch(self, epoch: int, batches: int, done: int) -> None:
        self._epoch = epoch
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=batches, initial=done, desc=f"epoch {epoch + 1}/{self.total_epochs}",
                             unit="it", dynamic_ncols=True, leave=False)

    def step(self, lr: float, epoch_so_far: dict[str, float]) -> None:
        """One iteration done; the bar shows the epoch's running loss, error and speed."""
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{epoch_so_far['train_loss']:.3f}", err=f"{100 * epoch_so_far['train_error']:.1f}%",
                                  lr=f"{lr:.3g}", img_s=f"{epoch_so_far['img_per_s']:.0f}", refresh=False)
            self._bar.update()

    def evaluation(self, label: str, announce: bool = False):
        """A function that wraps an evaluation's batches: a bar on a terminal; with plain lines,
        a line before a long evaluation (``announce``) and none for the cheap per-epoch ones."""
        def wrap(loader):
            if self.use_bar:
                from tqdm import tqdm

                return tqdm(loader, total=len(loader), desc=f"evaluating {label}", unit="batch", dynamic_ncols=True,
                            leave=False)
            if self.enabled and announce:
                print(f"evaluating {label} ({plural(len(loader), 'batch')})", flush=True)
            return iter(loader)

        return wrap

    def interval(self, record: dict[str, Any]) -> None:
        """The numbers of the last ``log_interval`` iterations, as a line when there is no bar."""
        if self.plain_steps:
            print(f"epoch {self._epoch + 1}/{self.total_epochs} it {record['iteration']}: loss {record['train_loss']:.4f} "
                  f"err {100 * record['train_error']:.2f}% lr {record['lr']:.4g} {record['img_per_s']:.0f} img/s", flush=True)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        self.close()
        if not self.enabled:
            return
        parts = [f"epoch {metrics['epoch'] + 1}/{self.total_epochs}", f"it {metrics['iteration']}",
                 f"train loss {metrics['train_loss']:.4f} err {100 * metrics['train_error']:.2f}%"]
        for split in ("val", "test"):
            if f"{split}_error" in metrics:
                parts.append(f"{split} loss {metrics[f'{split}_loss']:.4f} err {100 * metrics[f'{split}_error']:.2f}%")
        if "test_error_views" in metrics:
            parts.append(f"test with views err {100 * metrics['test_error_views']:.2f}%")
        parts.append(f"lr {metrics['lr']:.4g} {metrics['img_per_s']:.0f} img/s {metrics['epoch_seconds']:.1f}s")
        print(" | ".join(parts), flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _lines_up_to(path: Path, iteration: int) -> list[str]:
    """The lines of a ``.jsonl`` log that record iterations up to ``iteration``. A last line
    without its newline is a write cut short (a kill, a full disk) and is dropped."""
    *complete, _torn = path.read_text().split("\n")
    kept = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            record_iteration = json.loads(line)["iteration"]
        except (ValueError, KeyError, TypeError):
            raise ReslabError(f"{path} line {number} is not a reslab log record ({line[:60]!r}); "
                              "delete that line and resume again") from None
        if record_iteration <= iteration:
            kept.append(line)
    return kept


class RunLog:
    """The run's metric files (and TensorBoard), appended line by line."""

    def __init__(self, out: Path, enabled: bool, tensorboard: bool) -> None:
        self.out, self.enabled = out, enabled
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ReslabError("--tensorboard needs the tensorboard package: pip install tensorboard "
                                  "(or leave out --tensorboard; metrics.jsonl has the same numbers)") from None
            self._writer = SummaryWriter(str(out / "tensorboard"))

    def start(self, resume_iteration: Optional[int]) -> None:
        """Fresh files, or (on resume) the files cut back to the lines the checkpoint covers:
        lines written after it (by the epoch a crash interrupted) would otherwise be doubled.
        Rewritten atomically, so a crash here loses nothing either."""
        if not self.enabled:
            return
        for name in (METRICS_FILE, STEPS_FILE):
            path = self.out / name
            kept = [] if resume_iteration is None or not path.exists() else _lines_up_to(path, resume_iteration)
            atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())

    def epoch(self, metrics: dict[str, Any]) -> None:
        self._append(METRICS_FILE, metrics, "epoch")

    def steps(self, record: dict[str, Any]) -> None:
        self._append(STEPS_FILE, record, "step")

    def _append(self, name: str, record: dict[str, Any], prefix: str) -> None:
        if not self.enabled:
            return
        with open(self.out / name, "a") as f:
            f.write(strict_json(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "iteration"):
                    self._writer.add_scalar(f"{prefix}/{key}", value, record["iteration"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
