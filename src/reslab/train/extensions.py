"""Extensions: what a run may add to the training loop without a branch in it.

An extension is any object with some of these methods (the hooks, called in this order):

* ``setup(context) -> str | None``: once, after the model is built and moved to its device,
  before the optimiser sees its parameters; ``context`` (:class:`SetupContext`) holds the
  config, the unwrapped model, the training data and whether the run resumes. The line it
  returns is printed with the run's start messages.
* ``transform_batch(batch, iteration) -> Batch``: each training batch, before the forward pass.
* ``after_backward(model, iteration)``: gradients are in place, the step not yet taken.
* ``after_step(model, iteration)``: the optimiser has stepped.
* ``on_epoch_end(epoch, metrics) -> dict | None``: after each epoch's evaluation; returned
  fields join the metrics line.
* ``evaluated_model(model) -> nn.Module``: the model to evaluate and to save (default: ``model``).
* ``state_dict()`` / ``load_state_dict(state)`` with a ``name``: state saved in the training
  checkpoint, so that a resumed run continues exactly.

:class:`Extension` is a base with every hook a no-op; subclassing it is optional. The trainer
builds :class:`Ema` and :class:`Mixup` from the config (``--ema-decay``, ``--mixup``,
``--cutmix``); :class:`GhostBatchNorm` and :class:`WhitenStem` are research switches that did
not pay on the fast recipe (``experiments/fast-recipe/``), kept for the Python API:
``train(config, [GhostBatchNorm(32)])``.

* :class:`ModelEma`: Polyak averaging with an exponential weight (as timm's ``ModelEmaV2``):
  after each step ``ema = decay * ema + (1 - decay) * live``, batch-norm statistics averaged too
  (``experiments/ema/``); integer buffers are copied.
* :func:`mix_batch`: mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019, sec. 3.1) of a whole
  batch with a permutation of itself, one ratio per batch from Beta(alpha, alpha), drawn from a
  generator seeded by the iteration, so a resumed run draws the same.
* Ghost batch norm: Hoffer, Hubara & Soudry 2017, sec. 4.1 (:mod:`reslab.train.batchnorm`).
* Whitened stem: airbench's patch-whitening first layer (:mod:`reslab.train.whitening`).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reslab.checkpoint import unwrap

if TYPE_CHECKING:
    from reslab.train.config import TrainConfig
    from reslab.train.data import TrainingData


@dataclass
class Batch:
    """A training batch: images, labels, and for a mixed batch the partner labels and the
    weight ``lam`` of the own labels in the loss."""

    images: Tensor
    labels: Tensor
    partner: Optional[Tensor] = None
    lam: float = 1.0

    def loss(self, logits: Tensor, label_smoothing: float) -> Tensor:
        return mixed_loss(logits, self.labels, self.partner, self.lam, label_smoothing)

    def dominant_labels(self) -> Tensor:
        """The labels a prediction counts as right against (the larger part of a mix)."""
        return self.labels if self.partner is None or self.lam >= 0.5 else self.partner


@dataclass
class SetupContext:
    """What ``setup`` hooks see."""

    config: "TrainConfig"
    model: nn.Module  # unwrapped, on its device
    data: "TrainingData"
    resuming: bool
    rank: int = 0
    distributed: bool = False


class Extension:
    """An extension with every hook a no-op (see the module); override the ones you need."""

    name = ""  # the key of the extension's state in the checkpoint; "" = no state

    def setup(self, context: SetupContext) -> Optional[str]:
        return None

    def transform_batch(self, batch: Batch, iteration: int) -> Batch:
        return batch

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        pass

    def after_step(self, model: nn.Module, iteration: int) -> None:
        pass

    def on_epoch_end(self, epoch: int, metrics: dict) -> Optional[dict]:
        return None

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        return model


class Hooks:
    """Calls the hooks of a list of extensions (objects with any subset of them)."""

    def __init__(self, extensions: Sequence[Any]) -> None:
        self.extensions = list(extensions)

    def _each(self, hook: str) -> list:
        return [getattr(e, hook) for e in self.extensions if hasattr(e, hook)]

    def setup(self, context: SetupContext) -> list[str]:
        return [line for f in self._each("setup") if (line := f(context))]

    def transform_batch(self, batch: Batch, iteration: int) -> Batch:
        for f in self._each("transform_batch"):
            batch = f(batch, iteration)
        return batch

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        for f in self._each("after_backward"):
            f(model, iteration)

    def after_step(self, model: nn.Module, iteration: int) -> None:
        for f in self._each("after_step"):
            f(model, iteration)

    def on_epoch_end(self, epoch: int, metrics: dict) -> dict:
        extra: dict = {}
        for f in self._each("on_epoch_end"):
            extra.update(f(epoch, {**metrics, **extra}) or {})
        return extra

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        for f in self._each("evaluated_model"):
            model = f(model)
        return model

    def state_dict(self) -> dict[str, Any]:
        return {e.name: e.state_dict() for e in self.extensions if getattr(e, "name", "") and hasattr(e, "state_dict")}

    def load_state_dict(self, states: dict[str, Any]) -> None:
        for e in self.extensions:
            if getattr(e, "name", "") in states and hasattr(e, "load_state_dict"):
                e.load_state_dict(states[e.name])


def extensions_from_config(config: "TrainConfig") -> list[Extension]:
    """The extensions that config values ask for (none in the papers' recipes)."""
    extensions: list[Extension] = []
    if config.mixup or config.cutmix:
        extensions.append(Mixup(config.mixup, config.cutmix))
    if config.ema_decay:
        extensions.append(Ema(config.ema_decay))
    return extensions


# ------------------------------------------------------------------------------------------
# Mixup / CutMix


class Mixup(Extension):
    """Mixup and/or CutMix of every training batch (see :func:`mix_batch`)."""

    def __init__(self, mixup: float, cutmix: float) -> None:
        self.mixup, self.cutmix = mixup, cutmix
        self.seed, self.rank = 0, 0

    def setup(self, context: SetupContext) -> Optional[str]:
        self.seed, self.rank = context.config.seed, context.rank
        return None

    def transform_batch(self, batch: Batch, iteration: int) -> Batch:
        from reslab.data.loader import derived_seed

        images, partner, lam = mix_batch(batch.images, batch.labels, mixup=self.mixup, cutmix=self.cutmix,
                                         seed=derived_seed(self.seed, iteration, self.rank))
        return replace(batch, images=images, partner=partner, lam=lam)


def mix_batch(images: Tensor, labels: Tensor, *, mixup: float, cutmix: float,
              seed: int) -> tuple[Tensor, Tensor, float]:
    """``(mixed images, partner labels, lam)``: the loss is ``lam * CE(labels) + (1 - lam) *
    CE(partner labels)``. With both alphas set, one of the two is chosen per batch."""
    rng = random.Random(seed)
    use_cutmix = cutmix > 0 and (mixup == 0 or rng.random() < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = rng.betavariate(alpha, alpha)
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).to(labels.device)
    partner = images.index_select(0, perm)
    if use_cutmix:
        height, width = images.shape[-2:]
        cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
        cy, cx = rng.randrange(height), rng.randrange(width)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        images = images.clone()
        images[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)  # the area actually kept
    else:
        images = images * lam + partner * (1.0 - lam)
    return images, labels.index_select(0, perm), lam


def mixed_loss(logits: Tensor, labels: Tensor, partner: Optional[Tensor], lam: float, label_smoothing: float) -> Tensor:
    """Cross-entropy of ``logits``, for mixed targets when ``partner`` labels are given."""
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if partner is None:
        return loss
    return lam * loss + (1.0 - lam) * F.cross_entropy(logits, partner, label_smoothing=label_smoothing)


# ------------------------------------------------------------------------------------------
# EMA of the weights


class ModelEma:
    """An exponential moving average of a model's weights and floating-point buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self._float = [t for t in self.module.state_dict().values() if t.is_floating_point()]
        self._other = [t for t in self.module.state_dict().values() if not t.is_floating_point()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        live = unwrap(model).state_dict().values()
        torch._foreach_lerp_(self._float, [t for t in live if t.is_floating_point()], 1.0 - self.decay)
        for mine, theirs in zip(self._other, [t for t in live if not t.is_floating_point()]):
            mine.copy_(theirs)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.module.load_state_dict(state)


class Ema(Extension):
    """Evaluate and save an EMA of the weights (:class:`ModelEma`), updated after every step."""

    name = "ema"

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.ema: Optional[ModelEma] = None

    def setup(self, context: SetupContext) -> str:
        self.ema = ModelEma(context.model, self.decay)
        return f"evaluating an EMA of the weights (decay {self.decay} per step; BN statistics averaged too)"

    def after_step(self, model: nn.Module, iteration: int) -> None:
        self.ema.update(model)

    def evaluated_model(self, model: nn.Module) -> nn.Module:
        return self.ema.module

    def state_dict(self) -> dict[str, Tensor]:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.ema.load_state_dict(state)


# ------------------------------------------------------------------------------------------
# Research switches that did not pay (experiments/fast-recipe/)


class GhostBatchNorm(Extension):
    """Batch-norm training statistics per group of ``ghost_batch`` images of a batch (Hoffer et
    al. 2017; :func:`reslab.train.batchnorm.use_ghost_batch_norm`)."""

    def __init__(self, ghost_batch: int) -> None:
        if not isinstance(ghost_batch, int) or ghost_batch < 1:
            raise ValueError(f"ghost_batch must be a positive number of images, got {ghost_batch!r}")
        self.ghost_batch = ghost_batch

    def setup(self, context: SetupContext) -> str:
        from reslab.train.batchnorm import use_ghost_batch_norm

        config = context.config
        if config.batch_size % self.ghost_batch:
            raise ValueError(f"ghost_batch ({self.ghost_batch}) must divide batch_size ({config.batch_size}), "
                             "e.g. GhostBatchNorm(32) with --batch-size 128")
        if config.sync_bn:
            raise ValueError("ghost_batch and sync_bn contradict each other (statistics of a few images against "
                             "statistics over every process): give one of them")
        layers = use_ghost_batch_norm(context.model, self.ghost_batch)
        return (f"ghost batch norm: {layers} BN layer{'s' if layers != 1 else ''} take their training statistics "
                f"per group of {self.ghost_batch} images")


class WhitenStem(Extension):
    """Start the first convolution as patch-whitening filters of the training images (airbench;
    :func:`reslab.train.whitening.whiten_stem_`); ``freeze=True`` keeps it from training."""

    def __init__(self, freeze: bool = False) -> None:
        self.freeze = freeze

    def setup(self, context: SetupContext) -> str:
        from reslab.train.whitening import first_conv, whiten_stem_

        lines = []
        if not context.resuming:  # a resumed run loads its trained stem
            data = context.data
            whitened = whiten_stem_(context.model, data.train_images, data.mean, data.std)
            lines.append(f"whitened stem: {whitened} channels of the first convolution start as patch-whitening filters")
        if self.freeze:
            frozen = first_conv(context.model).requires_grad_(False).weight.numel()
            lines.append(f"frozen stem: the first convolution ({frozen:,} weights) is not trained")
        return "\n".join(lines)
