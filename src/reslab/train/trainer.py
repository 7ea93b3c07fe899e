"""The training loop: ``train(config)`` turns a :class:`TrainConfig` into a trained model, its
metrics and its checkpoints in ``config.out``.

Read :meth:`Training.fit` top to bottom: epochs of steps (:meth:`Training.step`: learning rate,
forward pass in bf16 autocast where the hardware computes in bf16 (:mod:`reslab.precision`),
loss, backward, optimiser step), each epoch ended by :meth:`Training.end_epoch` (evaluation,
the metrics line, the model files and the training checkpoint). What a recipe does not need
comes in through extensions (:mod:`reslab.train.extensions`), never as a branch in the loop.
:func:`_build` makes the parts (data, model, optimiser, schedule) and restores them on resume.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reslab.checkpoint import make_card, partial_writes, save_model, unwrap
from reslab.errors import DataError, ReslabError, TrainingError
from reslab.inference.fold import folded_for_evaluation
from reslab.inference.views import tta_logits, views_label
from reslab.models.depth import weighted_depth
from reslab.precision import resolve_precision
from reslab.train import distributed
from reslab.train.batchnorm import use_moment_batch_norm
from reslab.train.config import TrainConfig
from reslab.train.data import TrainingData, load_training_data
from reslab.train.distributed import DistributedEnv
from reslab.train.extensions import Batch, Hooks, SetupContext, extensions_from_config
from reslab.train.init import freeze_backbone, init_from, keep_frozen_statistics
from reslab.train.memory import keep_freed_memory
from reslab.train.progress import METRICS_FILE, STEPS_FILE, Progress, RunLog, plural
from reslab.train.schedules import LearningRate, scale_lr
from reslab.train.state import (CHECKPOINT_FILE, CONFIG_FILE, RESULT_FILE, environment, load_training_state,
                                save_training_state, set_rng_state, write_config, write_json)

MODEL_FILE, BEST_FILE = "model.safetensors", "best.safetensors"
RUN_FILES = (CHECKPOINT_FILE, MODEL_FILE, BEST_FILE, CONFIG_FILE, RESULT_FILE, METRICS_FILE, STEPS_FILE)


class TrainingInterrupted(ReslabError):
    """A run stopped by SIGINT/SIGTERM after saving its checkpoint; ``exit_status`` is 128 + signal."""

    def __init__(self, signum: int, out: Path, iteration: int) -> None:
        self.signum, self.exit_status = signum, 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {iteration}; the checkpoint is "
                         f"{out / CHECKPOINT_FILE}. Continue with: reslab train --resume {out}")


def train(config: TrainConfig, extensions: Sequence[Any] = (), *, resume: bool = False,
          callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train as ``config`` says, writing into ``config.out``; returns the final result.

    ``extensions``: objects with any of the hooks of :mod:`reslab.train.extensions` (e.g.
    ``after_backward(model, iteration)``, ``on_epoch_end(epoch, metrics) -> dict | None``), after
    those the config asks for (EMA, mixup); ``callbacks`` is their name in earlier releases and
    is appended to them. ``resume=True`` continues the run saved in ``config.out``.
    """
    config.validate()
    if config.deterministic:  # cuBLAS reads this when it starts
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    env = distributed.detect()
    device = distributed.pick_device(config.device, env)
    if config.sync_bn and device.type != "cuda":
        raise TrainingError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); leave it out on the CPU")
    joined = distributed.setup(env, device)
    finished = False
    try:
        with _runtime(config, device):
            hooks = Hooks([*extensions_from_config(config), *extensions, *callbacks])
            result = _run(config, hooks, resume, env, device)
        finished = True
        return result
    finally:
        distributed.teardown(joined, finished=finished)


def _run(config: TrainConfig, hooks: Hooks, resume: bool, env: DistributedEnv, device: torch.device) -> dict:
    from reslab.registry import create_model

    with torch.device("meta"):  # a misspelt model or override fails now, not after loading the data
        create_model(config.model, **config.model_overrides())
    out = Path(config.out)
    state = _prepare_out(out, resume, env)
    if state is not None and state["progress"]["finished"]:
        return _finished_result(out, state, env)
    log = RunLog(out, env.is_main, config.tensorboard)  # first: a missing tensorboard fails at once
    data = load_training_data(config, env, device)
    if state is not None:
        _check_same_classes(json.loads(state["card"]).get("class_names"), data.classes, config.data)
    training = _build(config, data, hooks, state, env, device, log)
    training.announce()
    if state is not None:
        set_rng_state(state["rng"])  # last: building the model above drew random numbers
    return training.fit()


@dataclass
class Training:
    """The parts of a run, built by :func:`_build`, and the loop over them."""

    config: TrainConfig
    data: TrainingData
    hooks: Hooks
    env: DistributedEnv
    device: torch.device
    log: RunLog
    model: nn.Module  # what the steps run: wrapped for DDP, maybe compiled
    raw: nn.Module  # the model itself
    card: Any
    optimizer: torch.optim.Optimizer
    lr: LearningRate
    run: "RunState"
    precision: str
    notes: list[str]  # start messages of the parts (precision, lr scaling, compile, extensions)
    resumed: bool
    frozen_norms: list[nn.Module] = field(default_factory=list)  # BN layers of a frozen backbone (--freeze-backbone)

    def __post_init__(self) -> None:
        self.out = Path(self.config.out)
        self.per_epoch = len(self.data.train)
        self.total = self.lr.schedule.total_iterations
        self.total_epochs = math.ceil(self.total / self.per_epoch)
        self.show = Progress(self.config.progress, self.env.is_main, self.total_epochs)
        self.stop = StopSignals()

    def fit(self) -> dict[str, Any]:
        """The loop: epochs of steps, each ended by evaluation, the metrics line and a checkpoint."""
        wall_start = time.perf_counter() - self.run.wall_seconds
        self.train_mode()
        with self.stop, closing(self.show), closing(self.log):
            while self.run.iteration < self.total:
                epoch = self.data.train.epoch
                lr = self.train_epoch(epoch)
                self.end_epoch(epoch, lr, wall_start)
        if self.env.is_main:
            self.write(write_json, self.out / RESULT_FILE, self.run.result)
        return self.run.result

    def train_epoch(self, epoch: int) -> float:
        """The steps of one epoch (or of what is left of it); returns the last learning rate."""
        loader, run = self.data.train, self.run
        if loader.batches_done == 0:
            run.epoch_tally = Tally()
        self.show.start_epoch(epoch, self.per_epoch, loader.batches_done)
        tick = time.perf_counter()
        for images, labels in loader:
            lr = self.step(Batch(images, labels), epoch)
            stops = self.stop.agreed(self.env, self.device)
            now = time.perf_counter()
            run.epoch_tally.seconds += now - tick
            run.interval_tally.seconds += now - tick
            tick = now
            self.show.step(lr, run.epoch_tally.summary())
            if run.iteration % self.config.log_interval == 0 and run.interval_tally.seen:
                self.log_steps(epoch, lr)
            if run.iteration == self.total:
                break
            if stops and loader.batches_done < self.per_epoch:  # at the last batch, stop after the epoch's work
                self.save_checkpoint()
                raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.out, run.iteration)
        return lr

    def step(self, batch: Batch, epoch: int) -> float:
        """One iteration: learning rate, forward, loss, backward, optimiser step; returns the lr."""
        it, run = self.run.iteration, self.run
        lr = self.lr.apply(self.optimizer, it)
        batch = self.hooks.transform_batch(batch, it)
        with self.autocast():
            logits = self.model(batch.images)
        loss = batch.loss(logits.float(), self.config.label_smoothing)
        # Loss and mistakes summed over the ranks (non-finite if any rank's loss is).
        counts = torch.stack([loss.detach().double() * len(batch.labels),
                              (logits.argmax(1) != batch.dominant_labels()).sum().double(),
                              torch.tensor(float(len(batch.labels)), device=self.device, dtype=torch.float64)])
        loss_sum, wrong, seen = distributed.all_reduce(counts, self.env).tolist()
        if not math.isfinite(loss_sum):
            self.skip_or_stop(loss_sum, it, epoch)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.hooks.after_backward(self.raw, it)
            self.optimizer.step()
            self.hooks.after_step(self.raw, it)
            run.epoch_tally.add(loss_sum, wrong, seen)
            run.interval_tally.add(loss_sum, wrong, seen)
            if (line := self.lr.observe(it, wrong, seen)) is not None:
                self.show.message(line)
        run.iteration += 1
        return lr

    def end_epoch(self, epoch: int, lr: float, wall_start: float) -> None:
        """Evaluate (when due), write the metrics line and the model files, save the checkpoint."""
        run, config = self.run, self.config
        last = run.iteration == self.total
        metrics = {"epoch": epoch, "iteration": run.iteration, "lr": lr, **run.epoch_tally.summary(),
                   "epoch_seconds": run.epoch_tally.seconds, "skipped_steps": run.skipped_steps}
        evaluated = self.hooks.evaluated_model(self.raw)
        for module in {id(m): m for m in (self.raw, evaluated)}.values():
            distributed.average_buffers(module, self.env)
        if last or (config.eval_interval and (epoch + 1) % config.eval_interval == 0):
            started = time.perf_counter()
            self.show.close()  # the epoch's bar, so that the evaluation shows its own progress
            metrics.update(evaluate_splits(evaluated, self.data, config, self.autocast, self.env, self.show, final=last))
            metrics["eval_seconds"] = time.perf_counter() - started
            self.train_mode()
        metrics["wall_seconds"] = time.perf_counter() - wall_start
        metrics.update(self.hooks.on_epoch_end(epoch, dict(metrics)))
        self.show.end_epoch(metrics)
        with _writing(self.out, run, self.out / METRICS_FILE):
            self.log.epoch(metrics)
        run.wall_seconds = metrics["wall_seconds"]
        if self.env.is_main:
            self.save_models(evaluated, epoch, metrics)
        result = _result(config, metrics, run.best, self.data.val is not None) if last else None
        if last and self.env.enabled:
            result["ranks_identical"] = distributed.ranks_identical(self.raw, self.env)
            if not result["ranks_identical"]:
                raise TrainingError("the processes ended with different weights; DDP lost synchronisation "
                                    "(a rank-dependent random draw in the model?)")
        self.save_checkpoint(finished=last, result=result)
        if not last and self.stop.agreed(self.env, self.device):
            raise TrainingInterrupted(self.stop.signum or signal.SIGTERM, self.out, run.iteration)

    def save_models(self, evaluated: nn.Module, epoch: int, metrics: dict[str, Any]) -> None:
        """model.safetensors (the latest) and best.safetensors (lowest validation error, else test)."""
        self.write(save_model, self.out / MODEL_FILE, evaluated, self.card)
        selection = "val_error" if self.data.val is not None else "test_error"
        if selection in metrics and (self.run.best is None or metrics[selection] < self.run.best[selection]):
            self.write(save_model, self.out / BEST_FILE, evaluated, self.card)
            self.run.best = {"epoch": epoch, "iteration": self.run.iteration, selection: metrics[selection],
                             "test_error": metrics["test_error"]}

    def save_checkpoint(self, finished: bool = False, result: Optional[dict] = None) -> None:
        run = self.run
        run.finished, run.result = finished, result
        if not self.env.is_main:
            return
        low_start = self.lr.low_start
        progress = {**run.to_dict(), "saved_iteration": run.iteration, "loader": self.data.train.state_dict(),
                    "low_lr_start": low_start.state_dict() if low_start is not None else None}
        self.write(save_training_state, self.out / CHECKPOINT_FILE, model_state=self.raw.state_dict(),
                   optimizer_state=self.optimizer.state_dict(), extension_states=self.hooks.state_dict(),
                   card_json=self.card.to_json(), progress=progress, config=self.config)
        run.saved_iteration = run.iteration

    def skip_or_stop(self, loss_sum: float, iteration: int, epoch: int) -> None:
        """A non-finite loss: stop with a clear error, or (``skip_nonfinite``) skip the step."""
        if not self.config.skip_nonfinite:
            raise TrainingError(_nonfinite_message(loss_sum, iteration, epoch, self.out, self.run.saved_iteration))
        self.run.skipped_steps += 1
        self.show.message(f"skipped iteration {iteration}: loss is {loss_sum} ({self.run.skipped_steps} skipped so far)")

    def log_steps(self, epoch: int, lr: float) -> None:
        """A line of steps.jsonl: the training numbers of the last ``log_interval`` iterations."""
        run = self.run
        record = {"iteration": run.iteration, "epoch": epoch, "lr": lr, **run.interval_tally.summary(),
                  "skipped_steps": run.skipped_steps}
        with _writing(self.out, run, self.out / STEPS_FILE):
            self.log.steps(record)
        self.show.interval(record)
        run.interval_tally = Tally()

    def train_mode(self) -> None:
        """The model in training mode, but for the BN layers of a frozen backbone (kept in eval)."""
        self.model.train()
        keep_frozen_statistics(self.frozen_norms)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def write(self, writer, path: Path, *args: Any, **kwargs: Any) -> None:
        _write(self.out, self.run, writer, path, *args, **kwargs)

    def announce(self) -> None:
        """config.json (or its resume history), the log files, and the run's start messages."""
        config, run, show = self.config, self.run, self.show
        run_environment = {**environment(self.device), "precision": self.precision}
        resumed_at = run.iteration if self.resumed else None
        if self.env.is_main:
            _write_start(self.out, config, run_environment, resumed_at)
        with _writing(self.out, run, self.out / METRICS_FILE):
            self.log.start(resumed_at)
        show.message(f"{config.model}: {sum(p.numel() for p in self.raw.parameters()):,} parameters, "
                     f"{weighted_depth(self.raw)} layers; {self.device} ({run_environment['device_name']}), "
                     f"{plural(torch.get_num_threads(), 'thread')} x {plural(self.env.world_size, 'process')}, "
                     f"{self.precision}{' autocast' if self.precision == 'bf16' else ''}, "
                     f"{'channels_last' if config.channels_last else 'NCHW'}")
        show.message(self.data.summary)
        show.message(f"{'resuming at' if self.resumed else 'run:'} iteration {run.iteration} of {self.total} "
                     f"({plural(self.total_epochs, 'epoch')} of {plural(self.per_epoch, 'iteration')} of "
                     f"{plural(config.batch_size, 'image')}); recipe {config.recipe or 'none'}; evaluation: "
                     f"{_describe_evaluation(config)}")
        for line in self.notes:
            show.message(line)
        if config.lr == 0 and self.env.is_main:
            print("warning: the learning rate is 0: the weights will not change (batch-norm statistics will)",
                  file=sys.stderr)


def _build(config: TrainConfig, data: TrainingData, hooks: Hooks, state: Optional[dict], env: DistributedEnv,
           device: torch.device, log: RunLog) -> Training:
    """Model, extensions, optimiser and schedule of a run; on resume, restored from ``state``."""
    from reslab.registry import create_model

    # The same seed on every rank gives the same initial weights (and, with stochastic depth, the
    # same drop decisions); data randomness comes from the loader's own generators.
    _seed_everything(config.seed)
    precision, precision_note = resolve_precision(config.precision, device)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    raw = create_model(config.model, num_classes=len(data.classes), **config.model_overrides())
    init_note = init_from(raw, config.init, data.classes).describe() if config.init and state is None else ""
    frozen_norms = freeze_backbone(raw) if config.freeze_backbone else []
    raw = raw.to(device, memory_format=memory_format)
    notes = hooks.setup(SetupContext(config, raw, data, state is not None, env.rank, env.enabled))
    model = distributed.wrap(raw, env, device, sync_bn=config.sync_bn)
    raw = unwrap(model)
    card = make_card(config.model, raw, num_classes=len(data.classes), overrides=config.model_overrides(),
                     class_names=data.classes, mean=data.mean, std=data.std, input_size=data.input_size,
                     config=config.to_dict())
    peak_lr, scaling_note = scale_lr(config.lr, config.batch_size, config.base_batch_size)
    groups = parameter_groups(raw, config.weight_decay, config.decay_norm_and_bias, config.backbone_lr_scale)
    optimizer = build_optimizer(config, groups, peak_lr)
    per_epoch = len(data.train)
    data.train.use_small_crops(config.small_crop, config.small_crop_epochs(per_epoch))
    lr = LearningRate(config.build_schedule(per_epoch), config.build_low_lr_start(weighted_depth(raw)))
    run = RunState()
    if state is not None:
        raw.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        hooks.load_state_dict(state.get("extensions") or ({"ema": state["ema"]} if state.get("ema") else {}))
        if lr.low_start is not None:
            lr.low_start.load_state_dict(state["progress"]["low_lr_start"])
        data.train.load_state_dict(state["progress"]["loader"])
        run = RunState.from_dict(state["progress"])
    model, compile_note = _maybe_compile(model, config, lr.schedule.total_iterations - run.iteration)
    notes = [init_note, _describe_fine_tuning(config, len(frozen_norms)), precision_note, scaling_note,
             config.describe_large_batch_warmup(), describe_groups(optimizer.param_groups),
             "lr: " + lr.schedule.describe(), compile_note, _describe_low_start(lr, config),
             _describe_small_crops(data, config, lr), *notes]
    return Training(config, data, hooks, env, device, log, model, raw, card, optimizer, lr, run, precision,
                    [line for note in notes if note for line in note.split("\n")], state is not None, frozen_norms)


def _finished_result(out: Path, state: dict, env: DistributedEnv) -> dict:
    print(f"{out} is a finished run; nothing to resume")
    result = state["progress"]["result"]
    if env.is_main and not (out / RESULT_FILE).exists():  # stopped after its last checkpoint, before this file
        _write(out, RunState.from_dict(state["progress"]), write_json, out / RESULT_FILE, result)
    return result


def _describe_evaluation(config: TrainConfig) -> str:
    every = (f"single view every {'' if config.eval_interval == 1 else f'{config.eval_interval} '}epoch"
             f"{'' if config.eval_interval == 1 else 's'} and after the last"
             if config.eval_interval else "after the last epoch")
    views = views_label(config.tta_flip, config.tta_translate)
    return every + ("" if views == "single view" else f", then the test set with the {views}")


def _describe_fine_tuning(config: TrainConfig, frozen_norms: int) -> str:
    """The start message of a linear probe, and warnings for fine-tuning settings without --init."""
    lines = []
    if config.freeze_backbone:
        lines.append(f"frozen backbone (linear probe): only the classifier trains; {plural(frozen_norms, 'BN layer')} "
                     "keep their statistics (eval mode)")
    if not config.init and (config.freeze_backbone or config.recipe == "finetune"):
        what = "--freeze-backbone freezes" if config.freeze_backbone else "the finetune recipe trains"
        lines.append(f"warning: no --init: {what} randomly initialised weights")
    return "\n".join(lines)


def _describe_low_start(lr: LearningRate, config: TrainConfig) -> str:
    low = lr.low_start
    if low is None:
        return ""
    return (f"low-lr start (He et al. 2015): lr {low.lr:g} until the training error of the last "
            f"{low.window} batches < {config.low_lr_until_error}, at most {low.max_iterations} iterations")


def _describe_small_crops(data: TrainingData, config: TrainConfig, lr: LearningRate) -> str:
    small_epochs = data.train.small_crop[1]
    if not small_epochs:
        return ""
    total_epochs = math.ceil(lr.schedule.total_iterations / len(data.train))
    first = "epoch 1" if small_epochs == 1 else f"epochs 1-{small_epochs}"
    rest = ", the rest on full-size images" if small_epochs < total_epochs else " (every epoch; evaluation sees whole images)"
    return f"small crops: {first} train on random {config.small_crop}x{config.small_crop} crops{rest}"


# ------------------------------------------------------------------------------------------
# The pieces the loop uses.


def build_optimizer(config: TrainConfig, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """SGD with momentum (the papers'), or AdamW (Loshchilov & Hutter 2019) with ``momentum``
    as its first beta; each group keeps its own weight decay."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(config.momentum, 0.999), foreach=True)
    return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov, foreach=True)


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool,
                     backbone_lr_scale: float = 1.0) -> list[dict]:
    """The optimiser's parameter groups: one group, all decayed (the papers' code), or
    ``weights`` (conv and linear kernels, decayed) and ``norm_and_bias`` (1-d tensors, not).
    With ``backbone_lr_scale`` other than 1 each is split in ``backbone`` (``lr_scale``: its rate
    is that factor of the schedule's) and ``classifier``; parameters that do not train are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = ([{"name": "all", "params": params, "weight_decay": weight_decay}] if decay_norm_and_bias else
              [{"name": "weights", "params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
               {"name": "norm_and_bias", "params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}])
    if backbone_lr_scale == 1:
        return groups
    head = {id(p) for p in unwrap(model).get_classifier().parameters()}
    split = []
    for group in groups:
        for part, scale in (("backbone", backbone_lr_scale), ("classifier", 1.0)):
            members = [p for p in group["params"] if (id(p) in head) == (part == "classifier")]
            if members:
                split.append({**group, "name": f"{part} {group['name']}", "params": members, "lr_scale": scale})
    return split


def describe_groups(groups: Sequence[dict]) -> str:
    return "parameter groups: " + "; ".join(
        f"{g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} parameters, "
        f"weight decay {g['weight_decay']:g}" + (f", lr x{g['lr_scale']:g}" if g.get("lr_scale", 1) != 1 else "")
        for g in groups)


def evaluate_splits(model: nn.Module, data: TrainingData, config: TrainConfig, autocast, env: DistributedEnv,
                    show: Progress, *, final: bool) -> dict[str, float]:
    """The metrics of an evaluation: loss and error of each split, single view (cheap, for the
    curves); after the last epoch (``final``) also the test set with the run's test-time views
    (``test_*_views``), when it has any."""
    metrics: dict[str, float] = {}
    for split, loader in data.evaluation_splits().items():
        metrics[f"{split}_loss"], metrics[f"{split}_error"] = evaluate(
            model, loader, autocast, env, progress=show.evaluation(f"{split}: single view"))
    metrics["test_accuracy"] = 1.0 - metrics["test_error"]
    if final and (config.tta_flip or config.tta_translate):
        views = views_label(config.tta_flip, config.tta_translate)
        loss, error = evaluate(model, data.test, autocast, env, flip=config.tta_flip, translate=config.tta_translate,
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
    if drops_blocks_per_batch(model):
        # each block draws in Python whether its branch runs, which the graph cannot hold: dynamo
        # breaks the graph at every block and recompiles per survival value, and the fallback ran
        # at 0.41-0.52x eager speed (ResNet-56, p_L 0.5, 1 thread: experiments/stochastic-depth)
        return model, ("compile: skipped, per-batch stochastic depth decides in Python which blocks run, which "
                       "torch.compile cannot trace (it ran at half the eager speed); training eagerly")
    compiler = os.environ.get("CXX") or next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)
    if next(model.parameters()).device.type == "cpu" and not compiler:
        return model, "compile: skipped, no C++ compiler found (install g++ or set CXX); training eagerly"
    note = "compile: torch.compile (the first steps compile, then run fused kernels; evaluation runs eagerly)"
    if config.moment_bn:
        note += f"; {use_moment_batch_norm(model)} BN layers take their batch statistics as two sums (MomentBatchNorm2d)"
    # dynamic=False: each input size (the --small-crop epochs, then full size) gets its own
    # static kernels; by default the second size would recompile for symbolic shapes.
    return torch.compile(model, dynamic=False), note


def drops_blocks_per_batch(model: nn.Module) -> bool:
    """Whether some residual block of ``model`` drops its whole branch for a mini-batch
    (stochastic depth in Huang et al.'s per-batch mode), a decision taken in Python each step."""
    from reslab.models.layers import residual_blocks

    return any(block.drop_path.mode == "batch" and block.drop_path.survival < 1
               for _, block in residual_blocks(model))


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
