"""The training configuration: one dataclass, and the papers' recipes as data.

Every knob of a run is a field of :class:`TrainConfig`; a *recipe* is a named set of field
values (:data:`RECIPES`), and ``TrainConfig.from_recipe(name, **overrides)`` applies the recipe
and then the overrides. The command line has one flag per field (``--batch-size``, ``--lr``,
``--schedule``...), and a run saves its resolved config in ``DIR/config.json``. The fields come
in five groups (:data:`CONFIG_GROUPS`: data, model, optimisation and schedule, evaluation,
runtime); the range of every numeric field is checked in one place (:data:`FIELD_RANGES`, read by
:meth:`TrainConfig.validate` and by the flags). Options that no recipe needs are extensions
(:mod:`reslab.train.extensions`); fields that earlier releases had for them are
:data:`RETIRED_FIELDS`.

Schedule positions (``milestones``, ``warmup``) are fractions of the run, so a recipe keeps its
shape when ``--epochs`` changes: He et al.'s 32k and 48k of 64k iterations are 0.5 and 0.75.
The learning rate ``lr`` is the peak for ``base_batch_size`` images; another ``batch_size``
scales it linearly (Goyal et al. 2017), and the run says so when it starts.
"""

from __future__ import annotations

import functools
import json
import typing
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Optional

from reslab.argtypes import (are_increasing_fractions, count_or_fraction, fraction, nonnegative_float, nonnegative_int,
                             positive_float, positive_int, probability, random_seed, survival_probability, thread_count)
from reslab.data.pipeline import PIPELINES
from reslab.precision import PRECISIONS
from reslab.train.schedules import SHAPES, LowLrStart, Schedule, scale_lr

DEVICES = ("auto", "cpu", "cuda")
LARGE_BATCH = 1024  # global batches above this get the large-batch warm-up (Goyal et al. 2017, sec. 2.2)
PADDING_MODES = ("zeros", "reflect")
PROGRESS_MODES = ("auto", "bar", "plain", "quiet")
OPTIMIZERS = ("sgd", "adamw")


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults are plain SGD with the C10+ augmentation;
    the named recipes set the rest."""

    # Data: the images and their augmentation.
    data: str = field(default="", metadata=_help("data set folder with train/ and test/ (CIFAR-10 as class folders)"))
    val: float = field(default=0, metadata=_help(
        "hold out this many training images for validation (He et al.: 5000), or this fraction of them (0.1), "
        "class-balanced; a folder without test/ or val/ evaluates on them"))
    train_subset: int = field(default=0, metadata=_help("train on a class-balanced subset of this many images; 0 = all"))
    crop_padding: int = field(default=4, metadata=_help("pixels of padding for the random crop"))
    padding_mode: str = field(default="zeros", metadata=_help("padding of the random crop", choices=PADDING_MODES))
    flip: bool = field(default=True, metadata=_help("random horizontal flips"))
    alternating_flip: bool = field(default=False, metadata=_help(
        "flip each image in every other epoch (from a random first epoch) instead of a coin per epoch (Jordan 2024)"))
    cutout: int = field(default=0, metadata=_help("cutout square size in pixels (DeVries & Taylor 2017); 0 = off"))
    small_crop: int = field(default=0, metadata=_help(
        "train the first --small-crop-part of the run on random crops of this many pixels a side (cut, not resized); 0 = off"))
    small_crop_part: float = field(default=0.0, metadata=_help(
        "fraction of the run, rounded to whole epochs, that trains on --small-crop crops at the start"))
    mixup: float = field(default=0.0, metadata=_help("mixup alpha (Zhang et al. 2018); 0 = off"))
    cutmix: float = field(default=0.0, metadata=_help("CutMix alpha (Yun et al. 2019); 0 = off; with --mixup, one of the two per batch"))
    cache_dir: Optional[str] = field(default=None, metadata=_help("folder of the decoded data set cache; none = reslab's default"))
    download: bool = field(default=False, metadata=_help("download CIFAR-10/100 into --data if it is missing (by the folder's name)"))
    pipeline: str = field(default="auto", metadata=_help(
        "data path: memory (one decoded tensor, same-size images), stream (files decoded per batch in worker "
        "processes), or auto (memory when the images share a small size and fit; docs/own-images.md)",
        choices=PIPELINES))
    image_size: Optional[int] = field(default=None, metadata=_help(
        "streaming: side of the square training crops and evaluation centre crops; none = the model's input size"))
    workers: Optional[int] = field(default=None, metadata=_help(
        "streaming: decoding worker processes per training process; 0 = decode in it; none = the cores left, up to 8"))
    bad_image_limit: float = field(default=0.01, metadata=_help(
        "streaming: stop the run when more than this fraction of the images cannot be read (each one is skipped and named)"))

    # Model: what to train (create_model's name and overrides).
    model: str = field(default="resnet20", metadata=_help("registered model name (`reslab models`)"))
    model_args: dict[str, Any] = field(default_factory=dict, metadata=_help("extra create_model overrides"))
    stochastic_depth: Optional[float] = field(default=None, metadata=_help(
        "survival probability p_L of the last block (Huang et al. 2016; 0.5 in the paper); none = off"))
    dropout: Optional[float] = field(default=None, metadata=_help("dropout between a block's convolutions (WRN); none = model default"))
    init: Optional[str] = field(default=None, metadata=_help(
        "start from these weights (fine-tuning): a reslab model file or run folder, a torchvision or timm state dict "
        "of the same architecture (.pth/.safetensors), or a model name with weights (resnet56); the classifier is "
        "remade when the classes differ; none = random weights"))
    freeze_backbone: bool = field(default=False, metadata=_help(
        "train the classifier only (linear probe): the rest keeps its weights and its BN statistics"))

    # Optimisation and schedule: length, optimiser, learning-rate curve (stepped per iteration;
    # positions are fractions of the run), regularisation in the loss and of the weights.
    epochs: Optional[float] = field(default=30, metadata=_help("length of the run in epochs (or give --iterations)"))
    iterations: Optional[int] = field(default=None, metadata=_help("length of the run in iterations (He et al.: 64000)"))
    optimizer: str = field(default="sgd", metadata=_help(
        "sgd (with --momentum, --nesterov) or adamw (--momentum is its first beta; decoupled weight decay)",
        choices=OPTIMIZERS))
    batch_size: int = field(default=128, metadata=_help("global mini-batch size (split over the processes)"))
    base_batch_size: int = field(default=128, metadata=_help("batch size --lr is meant for; other batch sizes scale lr linearly"))
    lr: float = field(default=0.1, metadata=_help("peak learning rate at --base-batch-size"))
    momentum: float = field(default=0.9, metadata=_help("SGD momentum (AdamW: its first beta)"))
    nesterov: bool = field(default=False, metadata=_help("Nesterov momentum (SGD)"))
    backbone_lr_scale: float = field(default=1.0, metadata=_help(
        "learning rate of everything but the classifier, as a factor of --lr (fine-tuning: e.g. 0.1)"))
    weight_decay: float = field(default=1e-4, metadata=_help("L2 weight decay"))
    decay_norm_and_bias: bool = field(default=True, metadata=_help(
        "apply weight decay to BN weights and biases too (the papers' code does)"))
    label_smoothing: float = field(default=0.0, metadata=_help("label smoothing of the training loss (Szegedy et al. 2016)"))
    ema_decay: float = field(default=0.0, metadata=_help("exponential moving average of the weights, decay per step; 0 = off"))
    schedule: str = field(default="step", metadata=_help("learning-rate curve", choices=SHAPES))
    milestones: tuple[float, ...] = field(default=(0.5, 0.75), metadata=_help(
        "step schedule: fractions of the run where lr is multiplied by --gamma"))
    gamma: float = field(default=0.1, metadata=_help("step schedule: factor at each milestone"))
    warmup: float = field(default=0.0, metadata=_help("fraction of the run spent in linear warm-up"))
    warmup_start: float = field(default=0.0, metadata=_help("lr factor at the first warm-up step"))
    large_batch_warmup: float = field(default=0.0, metadata=_help(
        f"epochs of linear warm-up, from the lr of --base-batch-size, when the global batch is over {LARGE_BATCH} "
        "and --warmup is 0 (Goyal et al. 2017: 5); 0 = off"))
    final_lr: float = field(default=0.0, metadata=_help("cosine/linear/one-cycle: lr factor at the end"))
    momentum_low: float = field(default=0.85, metadata=_help("one-cycle: momentum at the peak learning rate"))
    low_lr: Optional[float] = field(default=None, metadata=_help(
        "He et al.'s start: this lr (at --base-batch-size) until training error < --low-lr-until-error; none = off"))
    low_lr_until_error: Optional[float] = field(default=0.8, metadata=_help(
        "end the low-lr start when the running training error falls below this; none = after the cap"))
    low_lr_max_iterations: int = field(default=500, metadata=_help("cap of the low-lr start in iterations"))
    low_lr_min_depth: int = field(default=110, metadata=_help("the low-lr start applies to models of at least this many layers"))

    # Evaluation: when, on how many images, with which test-time views.
    eval_interval: int = field(default=1, metadata=_help(
        "evaluate (single view) every this many epochs and after the last; 0 = after the last only"))
    eval_subset: int = field(default=0, metadata=_help(
        "evaluate on a class-balanced fixed subset of this many test (and validation) images; 0 = all"))
    tta_flip: bool = field(default=False, metadata=_help("evaluate on each image and its mirror image, averaging the logits"))
    tta_translate: int = field(default=0, metadata=_help(
        "also evaluate each view shifted this many pixels up-left and down-right; the shifted views weigh half (airbench)"))
    eval_batch_size: int = field(default=1000, metadata=_help("batch size of evaluation"))

    # Runtime: where the run is written, how fast and how reproducibly it runs, what it shows.
    out: str = field(default="", metadata=_help("run folder: config, metrics, checkpoints"))
    recipe: str = field(default="", metadata=_help("the named recipe these values started from"))
    seed: int = field(default=0, metadata=_help("seed of weights, data order and augmentation"))
    device: str = field(default="auto", metadata=_help("where to train", choices=DEVICES))
    precision: str = field(default="auto", metadata=_help(
        "auto: bf16 autocast where the CPU or GPU has bf16 instructions, else fp32; or bf16, fp32", choices=PRECISIONS))
    channels_last: bool = field(default=True, metadata=_help("NHWC memory format (faster convolutions)"))
    compile: bool = field(default=False, metadata=_help(
        "torch.compile the model (needs a C++ compiler; fuses BN, ReLU and adds: about 1.2x on ResNet-20)"))
    compile_min_iterations: int = field(default=2000, metadata=_help(
        "with --compile, compile only runs at least this long (compiling takes 0.5-1 min)"))
    moment_bn: bool = field(default=False, metadata=_help(
        "with --compile, BN's batch statistics as two sums (MomentBatchNorm2d): ~1.07x images/s; "
        "no effect on an eager (not compiled) step, which keeps PyTorch's BN kernel"))
    deterministic: bool = field(default=False, metadata=_help("bit-reproducible kernels (torch.use_deterministic_algorithms)"))
    threads: int = field(default=0, metadata=_help("CPU threads per process; 0 = torch's default"))
    log_interval: int = field(default=50, metadata=_help("iterations between lines of steps.jsonl"))
    sync_bn: bool = field(default=False, metadata=_help("synchronised batch norm across processes"))
    skip_nonfinite: bool = field(default=False, metadata=_help("skip a step whose loss is not finite instead of stopping"))
    progress: str = field(default="auto", metadata=_help("bar on a terminal, plain lines otherwise", choices=PROGRESS_MODES))
    tensorboard: bool = field(default=False, metadata=_help("also log to TensorBoard (DIR/tensorboard)"))

    def __post_init__(self) -> None:
        self.milestones = tuple(float(m) for m in self.milestones)
        self.model_args = dict(self.model_args)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that makes no sense."""
        for name in ("schedule", "precision", "device", "padding_mode", "progress", "optimizer", "pipeline"):
            choices = next(f for f in fields(self) if f.name == name).metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("give the length of the run as epochs or as iterations, not both and not neither")
        types = field_types()
        for name, kind in FIELD_RANGES.items():
            value = getattr(self, name)
            if value is None and type(None) in typing.get_args(types[name]):
                continue
            if not kind.accepts(value):
                raise ValueError(f"{name} must be {kind.requirement}, got {value!r}")
        if not are_increasing_fractions(self.milestones):
            raise ValueError(f"milestones are increasing fractions of the run in (0, 1), e.g. 0.5,0.75; got {list(self.milestones)}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("Nesterov momentum needs a momentum above 0")
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov is SGD's; leave it out (--no-nesterov) with optimizer {self.optimizer}")
        if self.freeze_backbone and self.backbone_lr_scale != 1:
            raise ValueError("freeze_backbone trains the classifier only; leave out backbone_lr_scale "
                             f"({self.backbone_lr_scale}), which sets the rate of the backbone")
        if bool(self.small_crop) != bool(self.small_crop_part):
            raise ValueError(f"small_crop ({self.small_crop}) and small_crop_part ({self.small_crop_part}) go "
                             "together: give both (e.g. --small-crop 24 --small-crop-part 0.5) or neither")

    # -------------------------------------------------------------------------------------
    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "TrainConfig":
        """The recipe's values, then ``overrides``. Giving ``epochs`` clears the recipe's
        ``iterations`` and the other way round."""
        if name not in RECIPES:
            raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
        for name in set(overrides) & set(RETIRED_FIELDS):
            raise ValueError(retired_field_message(name, overrides[name]))
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"TrainConfig has no field {', '.join(sorted(unknown))}")
        values = {**RECIPES[name], "recipe": name}
        if "epochs" in overrides and "iterations" not in overrides:
            values["iterations"] = None
        if "iterations" in overrides and "epochs" not in overrides:
            values["epochs"] = None
        return cls(**{**values, **overrides})

    def total_iterations(self, iterations_per_epoch: int) -> int:
        return self.iterations or max(1, round(self.epochs * iterations_per_epoch))

    def small_crop_epochs(self, iterations_per_epoch: int) -> int:
        """How many epochs at the start train on ``small_crop`` crops: ``small_crop_part`` of the run."""
        return round(self.small_crop_part * self.total_iterations(iterations_per_epoch) / iterations_per_epoch)

    def build_schedule(self, iterations_per_epoch: int) -> Schedule:
        """The learning-rate curve of this run, in iterations (the peak scaled to the batch size)."""
        total = self.total_iterations(iterations_per_epoch)
        peak = scale_lr(self.lr, self.batch_size, self.base_batch_size)[0]
        warmup, start = round(self.warmup * total), self.warmup_start
        if self.uses_large_batch_warmup():
            warmup, start = min(total, round(self.large_batch_warmup * iterations_per_epoch)), self.base_batch_size / self.batch_size
        return Schedule(peak, total, self.schedule, warmup, start,
                        tuple(round(m * total) for m in self.milestones), self.gamma, self.final_lr,
                        self.momentum, self.momentum_low)

    def uses_large_batch_warmup(self) -> bool:
        """Whether this run warms up for its large batch: Goyal et al. 2017 (sec. 2.2) raise the
        rate linearly from the base batch's to the scaled one over the first 5 epochs, which
        keeps the first steps of a batch over ~1k images from diverging."""
        return bool(self.large_batch_warmup) and self.batch_size > LARGE_BATCH and not self.warmup

    def describe_large_batch_warmup(self) -> str:
        """The start message of the large-batch warm-up ("" when there is none)."""
        if not self.uses_large_batch_warmup():
            return ""
        return (f"large-batch warm-up: global batch {self.batch_size} > {LARGE_BATCH}, so the lr rises linearly from "
                f"{scale_lr(self.lr, self.base_batch_size, self.base_batch_size)[0]:g} to "
                f"{scale_lr(self.lr, self.batch_size, self.base_batch_size)[0]:g} over the first "
                f"{self.large_batch_warmup:g} epochs (Goyal et al. 2017)")

    def build_low_lr_start(self, depth: int) -> Optional[LowLrStart]:
        """He et al.'s low-lr start, for a model of ``depth`` layers if the recipe asks for it there."""
        if self.low_lr is None or depth < self.low_lr_min_depth:
            return None
        low_lr = scale_lr(self.low_lr, self.batch_size, self.base_batch_size)[0]
        return LowLrStart(low_lr, self.low_lr_until_error, self.low_lr_max_iterations)

    def model_overrides(self) -> dict[str, Any]:
        """The keyword arguments of ``create_model`` (recorded in the model card)."""
        extra = {"stochastic_depth": self.stochastic_depth, "dropout": self.dropout}
        return {**self.model_args, **{k: v for k, v in extra.items() if v is not None}}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["milestones"] = list(self.milestones)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """The config of a saved dict; fields that earlier releases retired load if they hold
        their old default (a run that used one needs its extension: the error says which)."""
        data = dict(data)
        for name, (default, _) in RETIRED_FIELDS.items():
            if name in data and data.pop(name) != default:
                raise ValueError(f"{source}: " + retired_field_message(name, data.get(name, "set")))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source} has fields this reslab does not know: {', '.join(unknown)} (written by another version?)")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


# The fields of each group, in the order of the class (``reslab train --help`` shows them so).
CONFIG_GROUPS: dict[str, tuple[str, ...]] = {
    "data": (
        "data", "val", "train_subset", "crop_padding", "padding_mode", "flip", "alternating_flip", "cutout",
        "small_crop", "small_crop_part", "mixup", "cutmix", "cache_dir", "download", "pipeline", "image_size", "workers",
        "bad_image_limit",
    ),
    "model": (
        "model", "model_args", "stochastic_depth", "dropout", "init", "freeze_backbone",
    ),
    "optimisation": (
        "epochs", "iterations", "optimizer", "batch_size", "base_batch_size", "lr", "momentum", "nesterov",
        "backbone_lr_scale", "weight_decay", "decay_norm_and_bias", "label_smoothing", "ema_decay", "schedule", "milestones",
        "gamma", "warmup", "warmup_start", "large_batch_warmup", "final_lr", "momentum_low", "low_lr", "low_lr_until_error",
        "low_lr_max_iterations", "low_lr_min_depth",
    ),
    "evaluation": (
        "eval_interval", "eval_subset", "tta_flip", "tta_translate", "eval_batch_size",
    ),
    "runtime": (
        "out", "recipe", "seed", "device", "precision", "channels_last", "compile", "compile_min_iterations",
        "moment_bn", "deterministic", "threads", "log_interval", "sync_bn", "skip_nonfinite", "progress",
        "tensorboard",
    ),
}

# Fields of earlier releases, retired: research switches that did not pay on the fast recipe
# (experiments/fast-recipe/). A saved config holding one at its default loads; at another value
# the error names the extension that does the same (reslab.train.extensions).
RETIRED_FIELDS: dict[str, tuple[Any, str]] = {
    "whiten_stem": (
        False, "WhitenStem()",
    ),
    "freeze_stem": (
        False, "WhitenStem(freeze=True)",
    ),
    "ghost_batch": (
        0, "GhostBatchNorm(N)",
    ),
}


def retired_field_message(name: str, value: Any) -> str:
    """One line: what replaced the retired field ``name``."""
    return (f"{name} was retired after reslab 0.1: it did not pay on the fast recipe (experiments/fast-recipe/); "
            f"from Python it is the extension reslab.train.extensions.{RETIRED_FIELDS[name][1]}: "
            "train(config, [extension]) (docs/training.md)")


# The range of each numeric field, as the argparse type of its flag: the command line rejects a
# value out of range (or not finite) as a usage error, and validate() checks the same ranges.
FIELD_RANGES = {
    "stochastic_depth": survival_probability, "dropout": probability, "epochs": positive_float,
    "iterations": positive_int, "batch_size": positive_int, "base_batch_size": positive_int, "lr": nonnegative_float,
    "momentum": fraction, "weight_decay": nonnegative_float, "gamma": fraction, "warmup": fraction,
    "warmup_start": fraction, "large_batch_warmup": nonnegative_float, "backbone_lr_scale": positive_float,
    "final_lr": fraction, "momentum_low": fraction, "low_lr": positive_float,
    "low_lr_until_error": fraction, "low_lr_max_iterations": positive_int, "low_lr_min_depth": nonnegative_int,
    "label_smoothing": fraction, "mixup": nonnegative_float, "cutmix": nonnegative_float, "ema_decay": fraction,
    "tta_translate": nonnegative_int, "compile_min_iterations": nonnegative_int,
    "val": count_or_fraction, "image_size": positive_int, "workers": nonnegative_int, "bad_image_limit": fraction,
    "train_subset": nonnegative_int, "crop_padding": nonnegative_int, "cutout": nonnegative_int,
    "small_crop": nonnegative_int, "small_crop_part": fraction,
    "seed": random_seed, "threads": thread_count, "eval_batch_size": positive_int, "eval_interval": nonnegative_int,
    "eval_subset": nonnegative_int,
    "log_interval": positive_int,
}


@functools.cache
def field_types() -> Mapping[str, Any]:
    """Each field's type annotation, resolved (for validation and the command-line flags).
    Resolved once: every TrainConfig and every flag of every command reads it."""
    return MappingProxyType(typing.get_type_hints(TrainConfig))


# ----------------------------------------------------------------------------------------
# Recipes. Each states the values it sets on top of TrainConfig's defaults, with its source.

# The CIFAR recipe the papers share: SGD momentum 0.9, batch 128, lr 0.1 stepped down, C10+
# augmentation, weight decay on every parameter (as their Caffe/Torch code), no extras.
_SGD_STEP = dict(optimizer="sgd", batch_size=128, base_batch_size=128, lr=0.1, momentum=0.9, nesterov=False, decay_norm_and_bias=True,
                 schedule="step", milestones=(0.5, 0.75), gamma=0.1, warmup=0.0, label_smoothing=0.0, ema_decay=0.0,
                 tta_flip=False, tta_translate=0, alternating_flip=False, mixup=0.0, cutmix=0.0, padding_mode="zeros", cutout=0,
                 low_lr=None)

# He et al. 2015, sec. 4.2: wd 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k.
# ResNet-110 and deeper: 0.01 until the training error is below 80% ("about 400 iterations"),
# then 0.1; the cap of 500 iterations only guards against never getting there.
_PAPER = dict(_SGD_STEP, epochs=None, iterations=64000, weight_decay=1e-4, low_lr=0.01, low_lr_until_error=0.8,
              low_lr_max_iterations=500, low_lr_min_depth=110)

RECIPES: dict[str, dict[str, Any]] = {
    "paper": _PAPER,
    # He et al. 2016 (pre-activation), appendix: the same schedule; the 0.01 start is for the
    # 1001-layer nets.
    "preact": dict(_PAPER, low_lr_min_depth=1001),
    # Zagoruyko & Komodakis 2016, sec. 4: Nesterov 0.9, wd 5e-4, lr 0.1 x0.2 at epochs 60, 120,
    # 160 of 200, reflection padding, dropout 0.3 between the convolutions.
    "wrn": dict(_SGD_STEP, epochs=200, iterations=None, nesterov=True, weight_decay=5e-4, milestones=(0.3, 0.6, 0.8),
                gamma=0.2, padding_mode="reflect", dropout=0.3),
    # Xie et al. 2017, sec. 5.3: 300 epochs, lr 0.1 divided by 10 at 150 and 225, wd 5e-4.
    "resnext": dict(_SGD_STEP, epochs=300, iterations=None, weight_decay=5e-4),
    # Huang et al. 2016, sec. 4: 500 epochs, lr 0.1 divided by 10 at 250 and 375, wd 1e-4,
    # Nesterov 0.9, survival falling linearly to p_L = 0.5, one drop decision per mini-batch.
    "stochastic-depth": dict(_SGD_STEP, epochs=500, iterations=None, nesterov=True, weight_decay=1e-4,
                             stochastic_depth=0.5),
    # Ours: the least CPU time to the paper's ResNet-20 accuracy (91.25%): 25 epochs, the first 13
    # on 24x24 crops, warm-up then linear decay, label smoothing, alternating flips, compiled; the
    # test-time views only after the last epoch. Every choice, its measurements and the variants
    # that did not pay (EMA, whitened stem, ghost batch norm, other lr, wd, batch sizes) are in
    # experiments/fast-recipe/README.md.
    "fast": dict(_SGD_STEP, epochs=25, iterations=None, batch_size=128, base_batch_size=128, lr=0.15, nesterov=True,
                 weight_decay=5e-4, decay_norm_and_bias=False, schedule="linear", milestones=(), warmup=0.15,
                 warmup_start=0.1, final_lr=0.0, label_smoothing=0.1, alternating_flip=True, small_crop=24,
                 small_crop_part=0.52, tta_flip=True, tta_translate=1, eval_interval=5, compile=True,
                 moment_bn=True),
}
# The recipe the shipped CIFAR weights are trained with: fast, twice as long, evaluated single
# view every epoch (reslab train MODEL --recipe fast --epochs 50 --eval-interval 1 --no-tta-flip
# --tta-translate 0).
RECIPES["zoo"] = dict(RECIPES["fast"], epochs=50, eval_interval=1, tta_flip=False, tta_translate=0)

# Fine-tuning a trained network on new images and classes (--init; the reasons in docs/finetune.md):
# a tenth of the from-scratch rate, as the best fine-tuning rates of Kornblith et al. 2019 (sec. 3)
# lie well below those of training from scratch; a short cosine decay; half an epoch of warm-up
# from 0.1x while the new classifier's first large gradients pass into the trained layers;
# label smoothing 0.1 (Szegedy et al. 2016), and no decay on BN and biases, as the fast recipe.
RECIPES["finetune"] = dict(_SGD_STEP, epochs=10, iterations=None, lr=0.01, nesterov=True, weight_decay=1e-4,
                           decay_norm_and_bias=False, schedule="cosine", milestones=(), warmup=0.05, warmup_start=0.1,
                           final_lr=0.0, label_smoothing=0.1, eval_interval=1)
# ImageNet as He et al. 2015 (sec. 3.4) and torchvision's original reference: batch 256, SGD
# momentum 0.9, weight decay 1e-4 on every parameter, lr 0.1 divided by 10 at epochs 30, 60 and
# 80 of 90 (Goyal et al. 2017's fixed version of He et al.'s "on plateaus"; torchvision's script
# steps every 30 epochs). Other global batch sizes scale lr linearly (0.1 x batch / 256), and a
# batch over 1024 warms up for 5 epochs (Goyal et al. 2017).
RECIPES["imagenet"] = dict(_SGD_STEP, epochs=90, iterations=None, batch_size=256, base_batch_size=256, lr=0.1,
                           weight_decay=1e-4, milestones=(30 / 90, 60 / 90, 80 / 90), large_batch_warmup=5.0,
                           eval_interval=1, eval_batch_size=256)


def describe_recipes() -> str:
    """A table of the recipes' main values (for ``reslab train --list-recipes``)."""
    columns = ("epochs", "iterations", "optimizer", "batch_size", "lr", "nesterov", "weight_decay", "decay_norm_and_bias",
               "schedule", "milestones", "gamma", "warmup", "label_smoothing", "alternating_flip", "eval_interval", "tta_flip", "tta_translate",
               "compile", "moment_bn", "low_lr")
    rows = [["recipe", *columns]]
    for name in RECIPES:
        config = TrainConfig.from_recipe(name)
        rows.append([name, *(str(getattr(config, c)) for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)
