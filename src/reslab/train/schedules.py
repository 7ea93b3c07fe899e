"""Learning-rate schedules as data, stepped once per iteration (warm-up included).

A :class:`Schedule` is a frozen dataclass: the learning rate (and the momentum) are pure
functions of the number of updates already taken, so a resumed run takes exactly the same
values and a test can read any point of the curve. Shapes, after an optional linear warm-up
from ``warmup_start x peak`` to the peak (Goyal et al. 2017, "Accurate, Large Minibatch SGD"):

* ``step``: the peak multiplied by ``gamma`` at each milestone (He et al. 2015, sec. 4.2:
  0.1, divided by 10 at 32k and 48k iterations, stop at 64k).
* ``cosine``: half a cosine from the peak to ``final_lr x peak`` (Loshchilov & Hutter 2017,
  SGDR, without restarts).
* ``linear``: a straight line from the peak to ``final_lr x peak`` (the piecewise-linear
  schedules of the fast CIFAR trainers, e.g. Page's ResNet-9 and airbench).
* ``one-cycle``: the same triangle of learning rate, with the momentum cycled the other way,
  from ``momentum`` down to ``momentum_low`` at the peak and back (Smith & Topin 2019,
  "Super-Convergence", sec. 3).

:class:`LowLrStart` is He et al. 2015's start for ResNet-110 (sec. 4.2): "we use 0.01 to warm
up the training until the training error is below 80% (about 400 iterations), and then go back
to 0.1". It depends on the training error, so it is state (saved in the training checkpoint),
not part of the pure schedule.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Optional


SHAPES = ("step", "cosine", "linear", "one-cycle")


@dataclass(frozen=True)
class Schedule:
    """Learning rate and momentum at each iteration of a run of ``total_iterations`` updates."""

    peak_lr: float
    total_iterations: int
    shape: str = "step"
    warmup_iterations: int = 0
    warmup_start: float = 0.0  # lr factor of the first warm-up step
    milestones: tuple[int, ...] = ()  # iterations where a step schedule multiplies by gamma
    gamma: float = 0.1
    final_lr: float = 0.0  # lr factor at the end of cosine, linear and one-cycle
    momentum: float = 0.9
    momentum_low: float = 0.85  # one-cycle's momentum at the peak learning rate

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"schedule must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.total_iterations < 1:
            raise ValueError(f"a run needs at least one iteration, got {self.total_iterations}")
        if not 0 <= self.warmup_iterations <= self.total_iterations:
            raise ValueError(f"warm-up of {self.warmup_iterations} iterations does not fit a run of {self.total_iterations}")
        if self.shape == "one-cycle" and self.warmup_iterations == 0:
            raise ValueError("a one-cycle schedule rises to its peak during the warm-up: give it a warm-up (e.g. --warmup 0.25)")
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing, got {list(self.milestones)}")

    def factor(self, iteration: int) -> float:
        """The learning rate at ``iteration`` (updates already taken) as a fraction of the peak."""
        if iteration < self.warmup_iterations:
            return self.warmup_start + (1.0 - self.warmup_start) * iteration / self.warmup_iterations
        if self.shape == "step":
            return self.gamma ** sum(iteration >= m for m in self.milestones)
        progress = self._decay_progress(iteration)
        if self.shape == "cosine":
            return self.final_lr + (1.0 - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - (1.0 - self.final_lr) * progress  # linear and one-cycle

    def lr(self, iteration: int) -> float:
        return self.peak_lr * self.factor(iteration)

    def momentum_at(self, iteration: int) -> float:
        if self.shape != "one-cycle":
            return self.momentum
        swing = self.momentum - self.momentum_low
        if iteration < self.warmup_iterations:
            return self.momentum - swing * iteration / self.warmup_iterations
        return self.momentum_low + swing * self._decay_progress(iteration)

    def _decay_progress(self, iteration: int) -> float:
        """0 at the end of the warm-up, 1 at the last iteration."""
        span = self.total_iterations - self.warmup_iterations
        return min(1.0, (iteration - self.warmup_iterations) / span) if span else 1.0

    def describe(self) -> str:
        """One line with the curve's shape and its key points."""
        points = sorted({0, self.warmup_iterations, *self.milestones, self.total_iterations // 2, self.total_iterations - 1})
        curve = ", ".join(f"it {i}: {self.lr(i):.4g}" for i in points if i < self.total_iterations)
        return f"{self.shape} schedule over {self.total_iterations} iterations ({curve})"


class LowLrStart:
    """A low learning rate until the running training error falls below ``until_error``
    (He et al. 2015, sec. 4.2, for ResNet-110), for at most ``max_iterations`` iterations.

    The running error is that of the last ``window`` mini-batches of training (their images
    counted together), so one lucky batch does not end it. ``until_error=None`` keeps the low
    learning rate for exactly ``max_iterations`` iterations.
    """

    def __init__(self, lr: float, until_error: Optional[float], max_iterations: int, window: int = 10) -> None:
        if max_iterations < 1:
            raise ValueError(f"the low-lr start needs a cap of at least one iteration, got {max_iterations}")
        self.lr = lr
        self.until_error = until_error
        self.max_iterations = max_iterations
        self.window = window
        self.active = True
        self.ended_at: Optional[int] = None
        self._recent: deque[tuple[int, int]] = deque(maxlen=window)

    def running_error(self) -> float:
        wrong = sum(w for w, _ in self._recent)
        seen = sum(n for _, n in self._recent)
        return wrong / seen if seen else 1.0

    def observe(self, iteration: int, wrong: int, seen: int) -> bool:
        """Record the training mistakes of update ``iteration``; True when this ends the start."""
        if not self.active:
            return False
        self._recent.append((int(wrong), int(seen)))
        reached = (self.until_error is not None and len(self._recent) == self.window
                   and self.running_error() < self.until_error)
        if reached or iteration + 1 >= self.max_iterations:
            self.active, self.ended_at = False, iteration + 1
            return True
        return False

    def state_dict(self) -> dict:
        return {"active": self.active, "ended_at": self.ended_at, "recent": [list(r) for r in self._recent]}

    def load_state_dict(self, state: dict) -> None:
        self.active, self.ended_at = bool(state["active"]), state["ended_at"]
        self._recent = deque((tuple(r) for r in state["recent"]), maxlen=self.window)


class LearningRate:
    """The learning rate and momentum of each iteration: the :class:`Schedule`, or He et al.'s
    :class:`LowLrStart` while it lasts. :meth:`apply` sets them on an optimiser's groups (SGD's
    ``momentum``, or Adam's first beta)."""

    def __init__(self, schedule: Schedule, low_start: Optional[LowLrStart]) -> None:
        self.schedule, self.low_start = schedule, low_start

    def apply(self, optimizer, iteration: int) -> float:
        """Set the lr and momentum of ``iteration`` on ``optimizer``; returns the lr."""
        low = self.low_start is not None and self.low_start.active
        lr = self.low_start.lr if low else self.schedule.lr(iteration)
        momentum = self.schedule.momentum_at(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # a fine-tuned backbone's lower rate (--backbone-lr-scale)
            if "betas" in group:
                group["betas"] = (momentum, group["betas"][1])
            else:
                group["momentum"] = momentum
        return lr

    def observe(self, iteration: int, wrong: float, seen: float) -> Optional[str]:
        """Record a step's training mistakes; the line to show when this ends the low-lr start."""
        if self.low_start is not None and self.low_start.observe(iteration, wrong, seen):
            return (f"low-lr start ended after {self.low_start.ended_at} iterations "
                    f"(running training error {self.low_start.running_error():.3f})")
        return None


def scale_lr(lr: float, batch_size: int, base_batch_size: int) -> tuple[float, Optional[str]]:
    """The linear scaling rule (Goyal et al. 2017, sec. 2.1): lr x batch / base batch, and the
    sentence that says so (None when the batch is the recipe's)."""
    if batch_size == base_batch_size:
        return lr, None
    scaled = lr * batch_size / base_batch_size
    return scaled, (f"batch size {batch_size} is not the recipe's {base_batch_size}: learning rate scaled linearly "
                    f"{lr:g} x {batch_size}/{base_batch_size} = {scaled:g} (Goyal et al. 2017); "
                    f"pass --base-batch-size {batch_size} to use --lr as it is")
