"""Start a run from trained weights (fine-tuning, transfer learning): ``--init SOURCE``.

``SOURCE`` is a reslab model file or run folder, a torchvision or timm state dict of the same
architecture (the layouts :mod:`reslab.inference.interop` reads, recognised from the keys), or a
registered model name with shipped weights (``resnet56``: :mod:`reslab.pretrained`). Everything
is loaded but the classifier, which is remade (freshly initialised, as ``reset_classifier``)
when the new data set has another number of classes, when the source has none, or when a reslab
card names other classes; the rest must fit exactly, else one line names the mismatch. This is
the transfer recipe of Yosinski et al. 2014 and Kornblith et al. 2019: copy every layer but the
last, which is new for the new task.

    model = create_model("resnet18", num_classes=5)
    report = init_from(model, "resnet18-f37072fd.pth", class_names=["cat", "dog", ...])
    print(report.describe())   # init: 120 tensors from ... (torchvision/timm layout); new: fc.weight, fc.bias (1000 -> 5 classes)

:func:`freeze_backbone` turns the model into a linear probe: only the classifier trains, and
the batch-norm layers of the rest stay in eval mode (their running statistics are the source's,
as in Kornblith et al.'s "fixed feature extractor" setting).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from torch import Tensor, nn

from reslab.checkpoint import ModelCard, load_weights, read_checkpoint, resolve_checkpoint_path, unwrap
from reslab.errors import CheckpointError

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from` loaded: the source, its layout, and the tensors it did not give."""

    source: str
    layout: str  # "reslab: resnet56", "torchvision/timm layout", or a foreign flavour of interop
    loaded: int  # tensors taken from the source
    new: tuple[str, ...]  # tensors left freshly initialised (the classifier's, when remade)
    source_classes: Optional[int]
    classes: int
    other_class_names: bool = False  # remade because a reslab card names other classes

    def describe(self) -> str:
        """One line for the run's start messages."""
        text = f"init: {self.loaded:,} tensors from {self.source} ({self.layout})"
        if not self.new:
            return text + f"; the classifier too ({self.classes} classes, as the source's)"
        if self.source_classes is None:
            why = f"the source has no classifier; {self.classes} classes"
        elif self.source_classes == self.classes and self.other_class_names:
            why = f"{self.classes} classes, other than the source's"
        else:
            why = f"{self.source_classes} -> {self.classes} classes"
        return text + f"; new: {', '.join(self.new)} ({why})"


def classifier_names(model: nn.Module) -> list[str]:
    """The state-dict keys of the model's classifier (``get_classifier()``: ``fc`` in the zoo)."""
    model = unwrap(model)
    head = model.get_classifier()
    prefix = next(name for name, module in model.named_modules() if module is head)
    return [f"{prefix}.{key}" for key in head.state_dict()]


def read_init_source(source: PathLike) -> tuple[dict[str, Tensor], Optional[ModelCard], str]:
    """The state dict of ``source`` in reslab's names, its reslab card (None for foreign files)
    and its layout; a registry name resolves to its shipped weights file."""
    from reslab.inference.flavours import FOREIGN_FLAVOURS, detect_flavour, to_reslab
    from reslab.inference.interop import read_state_dict

    try:
        path = resolve_checkpoint_path(source)
    except CheckpointError as exc:
        raise CheckpointError(f"init: {exc}") from None
    try:
        state, card = read_checkpoint(path)
    except CheckpointError:  # a foreign file wrapped as {"state_dict": ...}: interop unwraps it below
        state, card = {}, None
    if card is not None:
        return state, card, f"reslab: {card.model}"
    state = read_state_dict(path)
    try:
        flavour = detect_flavour(state)
    except ValueError:
        flavour = None
    if flavour in FOREIGN_FLAVOURS:
        return to_reslab(state, flavour), None, flavour
    return state, None, "torchvision/timm layout"


def init_from(model: nn.Module, source: PathLike, class_names: Optional[Sequence[str]] = None) -> InitReport:
    """Load ``source`` (see the module) into ``model`` but for a classifier that does not fit,
    which keeps its fresh initialisation; returns what was loaded. ``class_names``: the new data
    set's classes (a reslab source whose card names others gets a new classifier too).

    Raises :class:`~reslab.errors.CheckpointError` (one line) for a missing source and for
    weights of another architecture."""
    from reslab.inference.flavours import FOREIGN_FLAVOURS
    from reslab.inference.interop import _fill_num_batches_tracked, check_meaning

    state, card, layout = read_init_source(source)
    if layout in FOREIGN_FLAVOURS:
        check_meaning(model, layout)
    state = _fill_num_batches_tracked(model, state)
    own = unwrap(model).state_dict()
    head = classifier_names(model)
    weight = next((state[k] for k in head if k.endswith("weight") and k in state), None)
    source_classes = int(weight.shape[0]) if weight is not None else None
    other_names = bool(card is not None and card.class_names and class_names is not None
                       and list(card.class_names) != list(class_names))
    remade = other_names or any(k not in state or state[k].shape != own[k].shape for k in head)
    if remade:
        state = {**{k: v for k, v in state.items() if k not in head}, **{k: own[k] for k in head}}
    try:
        load_weights(model, state, str(source))
    except CheckpointError as exc:  # "<source> does not fit ResNet: missing keys: ..." or "... other shapes ..."
        what = f"a {card.model} checkpoint" if card is not None else f"a {layout} state dict"
        mismatch = str(exc).removeprefix(f"{source} ")
        raise CheckpointError(f"init: {source} ({what}) {mismatch}") from None
    new = tuple(head) if remade else ()
    return InitReport(str(source), layout, len(state) - len(new), new, source_classes,
                      int(own[head[0]].shape[0]) if head and own[head[0]].ndim else 0, other_names)


def freeze_backbone(model: nn.Module) -> list[nn.Module]:
    """Stop every parameter but the classifier's from training; returns the batch-norm layers
    of the frozen part, which :func:`keep_frozen_statistics` keeps in eval mode."""
    model = unwrap(model)
    head = model.get_classifier()
    trainable = {id(p) for p in head.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not any(m is h for h in head.modules())]


def keep_frozen_statistics(frozen_norms: Sequence[nn.Module]) -> None:
    """Put the frozen batch-norm layers back in eval mode (after ``model.train()``), so their
    running statistics stay the source's and they normalise with them."""
    for norm in frozen_norms:
        norm.eval()
