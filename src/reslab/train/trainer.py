"""The training loop: ``train(config)`` turns a :class:`TrainConfig` into a trained model, its
metrics and its checkpoints in ``config.out``.

Read it top to bottom: build the data, the model, the optimiser and the schedule; restore them
on resume; then per iteration set the learning rate, run the forward pass (in bf16 autocast
where the hardware computes in bf16, :mod:`reslab.precision`), check the loss, step, and log;
per epoch evaluate, write the metrics line, the model files and the training checkpoint.
SIGINT/SIGTERM finish the current step and save a checkpoint; a run resumed from it
(``resume=True``) takes exactly the steps the uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reslab.checkpoint import make_card, partial_writes, save_model, unwrap
from reslab.errors import DataError, ReslabError, TrainingError
from reslab.inference.fold import folded_for_evaluation
from reslab.precision import resolve_precision
from reslab.train import distributed
from reslab.train.batchnorm import use_ghost_batch_norm, use_moment_batch_norm
from reslab.train.config import TrainConfig
from reslab.train.distributed import DistributedEnv
from reslab.train.extras import ModelEma, check_tta_translate, mix_batch, mixed_loss, tta_logits, views_label
from reslab.train.memory import keep_freed_memory
from reslab.train.progress import METRICS_FILE, STEPS_FILE, Progress, RunLog, plural
from reslab.train.schedules import scale_lr, weighted_depth
from reslab.train.state import (CHECKPOINT_FILE, CONFIG_FILE, RESULT_FILE, environment, load_training_state,
                                save_training_state, set_rng_state, write_config, write_json)
from reslab.train.whitening import first_conv, whiten_stem_

MODEL_FILE, BEST_FILE = "model.safetensors", "best.safetensors"
RUN_FILES = (CHECKPOINT_FILE, MODEL_FILE, BEST_FILE, CONFIG_FILE, RESULT_FILE, METRICS_FILE, STEPS_FILE)


class TrainingInterrupted(ReslabError):
    """A run stopped by SIGINT/SIGTERM after saving its checkpoint; ``exit_status`` is 128 + signal."""

    def __init__(self, signum: int, out: Path, iteration: int) -> None:
        self.signum, self.exit_status = signum, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {iteration}; the checkpoint is "
                         f"{out / CHECKPOINT_FILE}. Continue with: reslab train --resume {out}")


def train(config: TrainConfig, callbacks: Sequence[Any] = (), *, resume: bool = False) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``config.out``; returns the final result.

    A callback may define ``after_backward(model, iteration)`` (gradients are in place) and
    ``on_epoch_end(epoch, metrics) -> dict | None`` (returned fields join the metrics line).
    ``resume=True`` continues the run saved in ``config.out``.
    """
    config.validate()
    if config.deterministic:  # cuBLAS reads this when it starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env = distributed.detect()
    device = distributed.pick_device(config.device, env)
    if config.sync_bn and device.type != "cuda":
        raise TrainingError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); leave it out on the CPU")
    joined = distributed.setup(env, device)
    try:
        with _runtime(config, device):
            return _train(config, list(callbacks), resume, env, device)
    finally:
        distributed.teardown(joined)


def _train(config: TrainConfig, callbacks: list, resume: bool, env: DistributedEnv, device: torch.device) -> dict:
    from reslab.registry import create_model

    with torch.device("meta"):  # a misspelt model or override fails now, not after loading the data
        create_model(config.model, **config.model_overrides())
    out = Path(config.out)
    state = _prepare_out(out, resume, env)
    if state is not None and state["progress"]["finished"]:
        print(f"{out} is a finished run; nothing to resume")
        result = state["progress"]["result"]
        if env.is_main and not (out / RESULT_FILE).exists():  # stopped after its last checkpoint, before this file
            _write(out, RunState.from_dict(state["progress"]), write_json, out / RESULT_FILE, result)
        return result
    log = RunLog(out, env.is_main, config.tensorboard)  # first: a missing tensorboard fails at once
    data = _load_data(config, env, device)
    if state is not None:
        _check_same_classes(json.loads(state["card"]).get("class_names"), data["classes"], config.data)
    precision, precision_note = resolve_precision(config.precision, device)

    # Model: the same seed on every rank gives the same initial weights (and, with stochastic
    # depth, the same drop decisions); data randomness comes from the loader's own generators.
    _seed_everything(config.seed)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = create_model(config.model, num_classes=len(data["classes"]), **config.model_overrides())
    whitened = whiten_stem_(model, data["train_images"], data["mean"], data["std"]) \
        if config.whiten_stem and state is None else 0
    frozen = first_conv(model).requires_grad_(False).weight.numel() if config.freeze_stem else 0
    ghost_layers = use_ghost_batch_norm(model, config.ghost_batch) if config.ghost_batch else 0
    model = distributed.wrap(model.to(device, memory_format=memory_format), env, device, sync_bn=config.sync_bn)
    raw = unwrap(model)
    card = make_card(config.model, raw, num_classes=len(data["classes"]), overrides=config.model_overrides(),
                     class_names=data["classes"], mean=data["mean"], std=data["std"], input_size=data["input_size"],
                     config=config.to_dict())

    # Optimiser and schedule.
    train_loader = data["train"]
    peak_lr, scaling_note = scale_lr(config.lr, config.batch_size, config.base_batch_size)
    groups = parameter_groups(raw, config.weight_decay, config.decay_norm_and_bias)
    optimizer = torch.optim.SGD(groups, lr=peak_lr, momentum=config.momentum, nesterov=config.nesterov, foreach=True)
    per_epoch = len(train_loader)
    train_loader.use_small_crops(config.small_crop, config.small_crop_epochs(per_epoch))
    schedule = config.build_schedule(per_epoch)
    total, total_epochs = schedule.total_iterations, math.ceil(schedule.total_iterations / per_epoch)
    depth = weighted_depth(raw)
    low_start = config.build_low_lr_start(depth)
    ema = ModelEma(raw, config.ema_decay) if config.ema_decay else None
    run = RunState()

    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if low_start is not None:
            low_start.load_state_dict(state["progress"]["low_lr_start"])
        train_loader.load_state_dict(state["progress"]["loader"])
        run = RunState.from_dict(state["progress"])
    model, compile_note = _maybe_compile(model, config, total - run.iteration)

    show = Progress(config.progress, env.is_main, total_epochs)
    run_environment = {**environment(device), "precision": precision}
    if env.is_main:
        _write_start(out, config, run_environment, run.iteration if state is not None else None)
    with _writing(out, run, out / METRICS_FILE):
        log.start(run.iteration if state is not None else None)
    show.message(f"{config.model}: {sum(p.numel() for p in raw.parameters()):,} parameters, {depth} layers; "
                 f"{device} ({run_environment['device_name']}), {plural(torch.get_num_threads(), 'thread')} x "
                 f"{plural(env.world_size, 'process')}, {precision}{' autocast' if precision == 'bf16' else ''}, "
                 f"{'channels_last' if config.channels_last else 'NCHW'}")
    show.message(data["summary"])
    show.message(f"{'resuming at' if state is not None else 'run:'} iteration {run.iteration} of {total} "
                 f"({plural(total_epochs, 'epoch')} of {plural(per_epoch, 'iteration')} of {plural(config.batch_size, 'image')}); recipe {config.recipe or 'none'}")
    for line in (precision_note, scaling_note, describe_groups(optimizer.param_groups), "lr: " + schedule.describe(), compile_note):
        if line:
            show.message(line)
    if low_start is not None:
        show.message(f"low-lr start (He et al. 2015): lr {low_start.lr:g} until the training error of the last "
                     f"{low_start.window} batches < {config.low_lr_until_error}, at most {low_start.max_iterations} iterations")
    small_epochs = train_loader.small_crop[1]
    if small_epochs:
        first = "epoch 1" if small_epochs == 1 else f"epochs 1-{small_epochs}"
        rest = ", the rest on full-size images" if small_epochs < total_epochs else " (every epoch; evaluation sees whole images)"
        show.message(f"small crops: {first} train on random {config.small_crop}x{config.small_crop} crops{rest}")
    if whitened:
        show.message(f"whitened stem: {whitened} channels of the first convolution start as patch-whitening filters")
    if frozen:
        show.message(f"frozen stem: the first convolution ({frozen:,} weights) is not trained")
    if ghost_layers:
        show.message(f"ghost batch norm: {plural(ghost_layers, 'BN layer')} take their training statistics per group of "
                     f"{config.ghost_batch} images")
    if ema is not None:
        show.message(f"evaluating an EMA of the weights (decay {config.ema_decay} per step; BN statistics averaged too)")
    if config.lr == 0 and env.is_main:
        print("warning: the learning rate is 0: the weights will not change (batch-norm statistics will)", file=sys.stderr)
    if state is not None:
        set_rng_state(state["rng"])  # last: building the model above drew random numbers

    def save_checkpoint(finished: bool = False, result: Optional[dict] = None) -> None:
        run.finished, run.result = finished, result
        if not env.is_main:
            return
        progress = {**run.to_dict(), "saved_iteration": run.iteration, "loader": train_loader.state_dict(),
                    "low_lr_start": low_start.state_dict() if low_start is not None else None}
        _write(out, run, save_training_state, out / CHECKPOINT_FILE, model_state=raw.state_dict(),
               optimizer_state=optimizer.state_dict(), ema_state=ema.state_dict() if ema else None,
               card_json=card.to_json(), progress=progress, config=config)
        run.saved_iteration = run.iteration

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    hooks_backward = [cb for cb in callbacks if hasattr(cb, "after_backward")]
    hooks_epoch = [cb for cb in callbacks if hasattr(cb, "on_epoch_end")]
    wall_start = time.perf_counter() - run.wall_seconds
    stop = StopSignals()
    model.train()
    with stop, closing(show), closing(log):
        while run.iteration < total:
            epoch = train_loader.epoch
            if train_loader.batches_done == 0:
                run.epoch_tally = Tally()
            show.start_epoch(epoch, per_epoch, train_loader.batches_done)
            tick = time.perf_counter()
            for images, labels in train_loader:
                it = run.iteration
                lr = low_start.lr if low_start is not None and low_start.active else schedule.lr(it)
                for group in optimizer.param_groups:
                    group["lr"], group["momentum"] = lr, schedule.momentum_at(it)
                partner, lam = None, 1.0
                if config.mixup or config.cutmix:
                    from reslab.data.loader import derived_seed

                    images, partner, lam = mix_batch(images, labels, mixup=config.mixup, cutmix=config.cutmix,
                                                     seed=derived_seed(config.seed, it, env.rank))
                with autocast():
                    logits = model(images)
                loss = mixed_loss(logits.float(), labels, partner, lam, config.label_smoothing)
                dominant = labels if partner is None or lam >= 0.5 else partner
                # Loss and mistakes summed over the ranks (non-finite if any rank's loss is).
                step = torch.stack([loss.detach().double() * len(labels), (logits.argmax(1) != dominant).sum().double(),
                                    torch.tensor(float(len(labels)), device=device, dtype=torch.float64)])
                loss_sum, wrong, seen = distributed.all_reduce(step, env).tolist()
                if not math.isfinite(loss_sum):
                    if not config.skip_nonfinite:
                        raise TrainingError(_nonfinite_message(loss_sum, it, epoch, out, run.saved_iteration))
                    run.skipped_steps += 1
                    show.message(f"skipped iteration {it}: loss is {loss_sum} ({run.skipped_steps} skipped so far)")
                else:
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    for cb in hooks_backward:
                        cb.after_backward(raw, it)
                    optimizer.step()
                    if ema is not None:
                        ema.update(raw)
                    run.epoch_tally.add(loss_sum, wrong, seen)
                    run.interval_tally.add(loss_sum, wrong, seen)
                    if low_start is not None and low_start.observe(it, wrong, seen):
                        show.message(f"low-lr start ended after {low_start.ended_at} iterations "
                                     f"(running training error {low_start.running_error():.3f})")
                run.iteration += 1
                stops = stop.agreed(env, device)
                now = time.perf_counter()
                run.epoch_tally.seconds += now - tick
                run.interval_tally.seconds += now - tick
                tick = now
                show.step(lr, run.epoch_tally.summary())
                if run.iteration % config.log_interval == 0 and run.interval_tally.seen:
                    record = {"iteration": run.iteration, "epoch": epoch, "lr": lr, **run.interval_tally.summary(),
                              "skipped_steps": run.skipped_steps}
                    with _writing(out, run, out / STEPS_FILE):
                        log.steps(record)
                    show.interval(record)
                    run.interval_tally = Tally()
                if run.iteration == total:
                    break
                if stops and train_loader.batches_done < per_epoch:  # at the last batch, stop after the epoch's work
                    save_checkpoint()
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, out, run.iteration)

            # End of an epoch: evaluate, record, save.
            last = run.iteration == total
            metrics = {"epoch": epoch, "iteration": run.iteration, "lr": lr, **run.epoch_tally.summary(),
                       "epoch_seconds": run.epoch_tally.seconds, "skipped_steps": run.skipped_steps}
            for module in (raw, ema.module if ema is not None else None):
                if module is not None:
                    distributed.average_buffers(module, env)
            if last or (config.eval_interval and (epoch + 1) % config.eval_interval == 0):
                started = time.perf_counter()
                show.close()  # the epoch's bar, so that the evaluation shows its own progress
                evaluated = ema.module if ema is not None else raw
                metrics.update(evaluate_splits(evaluated, data, config, autocast, env, show, final=last))
                metrics["eval_seconds"] = time.perf_counter() - started
                model.train()
            metrics["wall_seconds"] = time.perf_counter() - wall_start
            for cb in hooks_epoch:
                metrics.update(cb.on_epoch_end(epoch, dict(metrics)) or {})
            show.end_epoch(metrics)
            with _writing(out, run, out / METRICS_FILE):
                log.epoch(metrics)
            run.wall_seconds = metrics["wall_seconds"]
            if env.is_main:
                evaluated = ema.module if ema is not None else raw
                _write(out, run, save_model, out / MODEL_FILE, evaluated, card)
                selection = "val_error" if "val" in data else "test_error"
                if selection in metrics and (run.best is None or metrics[selection] < run.best[selection]):
                    _write(out, run, save_model, out / BEST_FILE, evaluated, card)
                    run.best = {"epoch": epoch, "iteration": run.iteration, selection: metrics[selection],
                                "test_error": metrics["test_error"]}
            result = _result(config, metrics, run.best, "val" in data) if last else None
            if last and env.enabled:
                result["ranks_identical"] = distributed.ranks_identical(raw, env)
                if not result["ranks_identical"]:
                    raise TrainingError("the processes ended with different weights; DDP lost synchronisation "
                                        "(a rank-dependent random draw in the model?)")
            save_checkpoint(finished=last, result=result)
            if not last and stop.agreed(env, device):
                raise TrainingInterrupted(stop.signum or signal.SIGTERM, out, run.iteration)
    if env.is_main:
        _write(out, run, write_json, out / RESULT_FILE, run.result)
    return run.result


# ------------------------------------------------------------------------------------------
# The pieces the loop uses.


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """The optimiser's parameter groups: one group, all decayed (the papers' code), or
    ``weights`` (conv and linear kernels, decayed) and ``norm_and_bias`` (1-d tensors, not)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_norm_and_bias:
        return [{"name": "all", "params": params, "weight_decay": weight_decay}]
    return [{"name": "weights", "params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"name": "norm_and_bias", "params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def describe_groups(groups: Sequence[dict]) -> str:
    return "parameter groups: " + "; ".join(
        f"{g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} parameters, "
        f"weight decay {g['weight_decay']:g}" for g in groups)


def evaluate_splits(model: nn.Module, data: dict[str, Any], config: TrainConfig, autocast, env: DistributedEnv,
                    show: Progress, *, final: bool) -> dict[str, float]:
    """The metrics of an evaluation: loss and error of each split, single view (cheap, for the
    curves); after the last epoch (``final``) also the test set with the run's test-time views
    (``test_*_views``), when it has any."""
    metrics: dict[str, float] = {}
    for split in ("val", "test"):
        if split in data:
            metrics[f"{split}_loss"], metrics[f"{split}_error"] = evaluate(
                model, data[split], autocast, env, progress=show.evaluation(f"{split}: single view"))
    metrics["test_accuracy"] = 1.0 - metrics["test_error"]
    if final and (config.tta_flip or config.tta_translate):
        views = views_label(config.tta_flip, config.tta_translate)
        loss, error = evaluate(model, data["test"], autocast, env, flip=config.tta_flip, translate=config.tta_translate,
                               progress=show.evaluation(f"test: {views}", announce=True))
        metrics.update(test_loss_views=loss, test_error_views=error, test_accuracy_views=1.0 - error)
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader, autocast, env: DistributedEnv, *, flip: bool = False,
             translate: int = 0, progress=iter) -> tuple[float, float]:
    """(mean cross-entropy, error) of ``model`` in eval mode over ``loader``, summed over the
    ranks' shards; ``flip`` and ``translate`` add test-time views (:func:`tta_logits`). It runs
    a copy with BN folded into the convolutions where it can (:func:`folded_for_evaluation`).
    ``progress`` wraps the batches (a bar, :meth:`Progress.evaluation`)."""
    model = folded_for_evaluation(model)
    sums = torch.zeros(3, dtype=torch.float64)
    for images, labels in progress(loader):
        with autocast():
            logits = tta_logits(model, images, flip=flip, translate=translate)
        sums += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(),
                              (logits.argmax(1) != labels).sum().item(), len(labels)], dtype=torch.float64)
    sums = distributed.all_reduce(sums.to(next(model.parameters()).device), env).cpu()
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


@dataclass
class Tally:
    """Training loss and mistakes summed over the images of an interval, and its seconds."""

    loss: float = 0.0
    wrong: float = 0.0
    seen: float = 0.0
    seconds: float = 0.0

    def add(self, loss: float, wrong: float, seen: float) -> None:
        self.loss += loss
        self.wrong += wrong
        self.seen += seen

    def summary(self) -> dict[str, float]:
        seen = self.seen or math.nan
        return {"train_loss": self.loss / seen, "train_error": self.wrong / seen,
                "img_per_s": self.seen / self.seconds if self.seconds else 0.0}


@dataclass
class RunState:
    """Where the run is, beyond the model and optimiser: saved in the training checkpoint."""

    iteration: int = 0
    skipped_steps: int = 0
    wall_seconds: float = 0.0
    epoch_tally: Tally = None  # type: ignore[assignment]
    interval_tally: Tally = None  # type: ignore[assignment]
    best: Optional[dict] = None
    saved_iteration: Optional[int] = None
    finished: bool = False
    result: Optional[dict] = None

    def __post_init__(self) -> None:
        self.epoch_tally = self.epoch_tally or Tally()
        self.interval_tally = self.interval_tally or Tally()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunState":
        names = cls.__dataclass_fields__
        run = cls(**{k: v for k, v in data.items() if k in names and not k.endswith("_tally")})
        run.epoch_tally, run.interval_tally = Tally(**data["epoch_tally"]), Tally(**data["interval_tally"])
        return run


class StopSignals:
    """SIGINT and SIGTERM ask the loop to stop after the current step; a second signal acts as
    it did before (Ctrl-C twice interrupts at once)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def agreed(self, env: DistributedEnv, device: torch.device) -> bool:
        """Whether any process was asked to stop (all processes get the same answer)."""
        if not env.enabled:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)], device=device)
        return bool(distributed.all_reduce(flag, env, op="max").item())

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self._restore()
        print(f"\n{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
              "(send it again to stop at once)", flush=True)

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def __exit__(self, *exc: Any) -> None:
        self._restore()


@contextmanager
def _runtime(config: TrainConfig, device: torch.device) -> Iterator[None]:
    """Threads and determinism for the run, restored afterwards."""
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if config.threads:
        torch.set_num_threads(config.threads)
    if device.type == "cpu":
        keep_freed_memory()  # no page faults on the activations of every step (reslab.train.memory)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


def _maybe_compile(model: nn.Module, config: TrainConfig, iterations_left: int) -> tuple[nn.Module, str]:
    """``torch.compile(model)`` if ``--compile`` asks and it pays: the run is long enough to earn
    back the compile time, and a C++ compiler exists (the CPU backend builds C++ kernels). With
    ``--moment-bn`` the model's BN layers become :class:`~reslab.train.batchnorm.MomentBatchNorm2d`,
    which compile to faster kernels (same state dict; evaluation unchanged).
    Returns the model to train and a line saying what was decided ("" without --compile, unless
    --moment-bn was asked for: it has no effect then, and the line says so)."""
    import shutil

    if not config.compile:
        return model, ("compile: off, so --moment-bn has no effect (eager training keeps PyTorch's BN kernel)"
                       if config.moment_bn else "")
    if iterations_left < config.compile_min_iterations:
        return model, (f"compile: skipped, {iterations_left} iterations to go is less than "
                       f"--compile-min-iterations {config.compile_min_iterations}")
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if next(model.parameters()).device.type == "cpu" and not compiler:
        return model, "compile: skipped, no C++ compiler found (install g++ or set CXX); training eagerly"
    note = "compile: torch.compile (the first steps compile, then run fused kernels; evaluation runs eagerly)"
    if config.moment_bn:
        note += f"; {use_moment_batch_norm(model)} BN layers take their batch statistics as two sums (MomentBatchNorm2d)"
    # dynamic=False: each input size (the --small-crop epochs, then full size) gets its own
    # static kernels; by default the second size would recompile for symbolic shapes.
    return torch.compile(model, dynamic=False), note


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # CPU and every CUDA device
    random.seed(seed)
    np.random.seed(seed)


def _prepare_out(out: Path, resume: bool, env: DistributedEnv) -> Optional[dict]:
    """The run folder, created and rid of the temporary files of writes that a crash cut short;
    on resume, the training state saved in it (none if the run stopped before its first checkpoint:
    it starts again from the beginning, having lost nothing)."""
    state = None
    if resume and ((out / CHECKPOINT_FILE).exists() or not (out / CONFIG_FILE).exists()):
        state = load_training_state(out / CHECKPOINT_FILE)
    elif resume and env.is_main:
        print(f"{out} holds no {CHECKPOINT_FILE}: the run stopped before its first checkpoint; starting it again")
    elif not resume and (out / CHECKPOINT_FILE).exists():
        raise TrainingError(f"{out} already holds a run ({CHECKPOINT_FILE}); continue it with "
                            f"`reslab train --resume {out}`, or choose another --out")
    if env.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            for leftover in partial_writes(out, RUN_FILES):
                leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise TrainingError(f"cannot create the run folder {out}: {exc.strerror or exc}") from None
    return state


def _write_start(out: Path, config: TrainConfig, run_environment: dict[str, Any], resumed_at: Optional[int]) -> None:
    """config.json at the start, with ``run_environment`` (torch, device, precision...); on
    resume, the resumption and its environment appended to its history."""
    import json

    try:
        if resumed_at is None:
            write_config(out, config, run_environment)
            return
        data = json.loads((out / CONFIG_FILE).read_text())
        data.setdefault("resumed", []).append({"iteration": resumed_at, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                               "environment": run_environment})
        write_json(out / CONFIG_FILE, data)
    except OSError as exc:
        raise TrainingError(f"cannot write to the run folder {out}: {exc.strerror or exc}") from None


def _write(out: Path, run: RunState, writer, path: Path, *args: Any, **kwargs: Any) -> None:
    """``writer(path, ...)``; a failed write (disk full, folder gone) becomes one clear error."""
    with _writing(out, run, path):
        writer(path, *args, **kwargs)


@contextmanager
def _writing(out: Path, run: RunState, path: Path) -> Iterator[None]:
    """A failed write to ``path`` in the block (disk full, folder gone) becomes one clear error
    that names the checkpoint to continue from."""
    try:
        yield
    except OSError as exc:
        kept = (f"{out / CHECKPOINT_FILE} still holds iteration {run.saved_iteration}; continue with "
                f"`reslab train --resume {out}` once there is space" if run.saved_iteration is not None
                else "no checkpoint had been written yet; run the command again once there is space")
        raise TrainingError(f"could not write {exc.filename or path} ({exc.strerror or exc}); {kept}") from None


def _nonfinite_message(loss: float, iteration: int, epoch: int, out: Path, saved: Optional[int]) -> str:
    kept = (f"the last good checkpoint is {out / CHECKPOINT_FILE} (iteration {saved})" if saved is not None
            else "no checkpoint had been written yet")
    return (f"the training loss is {loss} at iteration {iteration} (epoch {epoch + 1}); training stopped and "
            f"{kept}. Lower the learning rate (--lr) or pass --skip-nonfinite to skip such steps")


def _load_data(config: TrainConfig, env: DistributedEnv, device: torch.device) -> dict[str, Any]:
    """The loaders ('train', 'test' and, with --val, 'val'), class names and normalisation."""
    from reslab.data import BatchLoader, balanced_subset, channel_stats, load_dataset, split_validation

    if not config.data:
        raise DataError("no data set given: pass --data PATH (a folder with train/ and test/)")
    show = env.is_main and config.progress != "quiet"
    # Rank 0 decodes (or downloads) and fills the cache first; the other ranks then read the cache.
    if not env.is_main:
        distributed.barrier(env)
    train_set = load_dataset(config.data, "train", cache_dir=config.cache_dir, download=config.download, progress=show)
    test_set = load_dataset(config.data, "test", cache_dir=config.cache_dir, progress=show)
    if env.is_main:
        distributed.barrier(env)
    # Subset and validation split use a fixed seed: every seed of a run trains on the same images.
    if train_set.num_classes < 2:
        raise DataError(f"{config.data} has {plural(train_set.num_classes, 'class')} ({', '.join(train_set.classes)}): "
                        "a classifier needs at least 2, one folder each under train/ and test/")
    if config.train_subset:
        train_set = balanced_subset(train_set, config.train_subset, seed=0)
    sets = {"train": train_set, "test": test_set}
    if config.val:
        sets["train"], sets["val"] = split_validation(train_set, config.val, seed=0)
    for split in ("val", "test"):  # a fixed subset (seed 0): every epoch and every seed sees the same images
        if config.eval_subset and split in sets and config.eval_subset < len(sets[split]):
            sets[split] = balanced_subset(sets[split], config.eval_subset, seed=0)
    mean, std = channel_stats(sets["train"])
    common = dict(mean=mean, std=std, device=device, rank=env.rank, world_size=env.world_size,
                  channels_last=config.channels_last)
    check_tta_translate(config.tta_translate, train_set.image_size)
    if config.small_crop > min(train_set.image_size):
        raise DataError(f"--small-crop {config.small_crop} is larger than the {train_set.image_size[0]}x"
                        f"{train_set.image_size[1]} images; give at most {min(train_set.image_size)}")
    if config.batch_size > len(sets["train"]):
        raise DataError(f"batch size {config.batch_size} is larger than the {len(sets['train'])} training images")
    loaders: dict[str, Any] = {"train": BatchLoader(
        sets["train"], config.batch_size, train=True, crop_padding=config.crop_padding, padding_mode=config.padding_mode,
        flip=config.flip, alternating_flip=config.alternating_flip, cutout=config.cutout, seed=config.seed, **common)}
    for split in ("val", "test"):
        if split in sets:
            loaders[split] = BatchLoader(sets[split], config.eval_batch_size * env.world_size, train=False, **common)
    sizes = ", ".join(f"{len(s):,} {name}" for name, s in sets.items())
    summary = (f"data: {sizes} images from {config.data}, {plural(train_set.num_classes, 'class')}; "
               f"mean {tuple(round(m, 4) for m in mean)} std {tuple(round(s, 4) for s in std)}")
    return {**loaders, "train_images": sets["train"].images, "classes": train_set.classes, "mean": mean, "std": std,
            "input_size": train_set.image_size[0], "summary": summary}


def _check_same_classes(saved: Optional[list[str]], found: list[str], data: str) -> None:
    """A resumed run must see the classes it started with (``--data`` may point elsewhere now)."""
    if saved is not None and list(saved) != list(found):
        raise DataError(f"{data} has other classes than the run was trained on ({', '.join(found[:4])}... against "
                        f"{', '.join(saved[:4])}...); pass --data with the run's data set")


def _result(config: TrainConfig, metrics: dict[str, Any], best: Optional[dict], has_val: bool) -> dict[str, Any]:
    """The final result: the last epoch's test numbers are the reported ones; the best epoch is
    chosen on validation error, or, without a validation split, on test error (optimistic)."""
    result = {"model": config.model, "recipe": config.recipe, "seed": config.seed,
              "views": views_label(config.tta_flip, config.tta_translate), **metrics}
    if best is not None and has_val:
        result["best"] = {"epoch": best["epoch"], "val_error": best["val_error"], "test_error": best["test_error"]}
    elif best is not None:
        result["best"] = {"epoch": best["epoch"], "test_error_optimistic": best["test_error"],
                          "note": "chosen on the test set itself: an optimistic figure, not a result"}
    return result
