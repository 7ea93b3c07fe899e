"""Classify image files with a saved model: top-k classes with their probabilities.

The model, its class names and its input transform all come from the checkpoint's model card
(:mod:`reslab.checkpoint`), so ``Predictor.from_checkpoint(path)`` needs nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor, nn

from reslab.checkpoint import ModelCard, load_model
from reslab.inference.preprocess import ImageReadError, Preprocess, find_images, load_image, path_list


def resolve_device(name: Optional[str] = None) -> torch.device:
    """``name`` as a device; ``None`` or ``'auto'`` is CUDA when available, else the CPU."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:1 or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for but is not available here; use --device cpu")
    return device


@dataclass
class ClassScore:
    """One of an image's top-k classes."""

    index: int
    name: str
    probability: float


@dataclass
class Prediction:
    """The top-k classes of one image, best first, or why it could not be read."""

    path: str
    top: list[ClassScore] = field(default_factory=list)
    error: Optional[str] = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top_k": [vars(score) for score in self.top]}


class Predictor:
    """A model in eval mode, its card's class names and its input transform."""

    def __init__(self, model: nn.Module, card: ModelCard, device: Union[str, torch.device] = "cpu",
                 resize_size: Optional[int] = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.card = card
        self.preprocess = Preprocess.for_card(card, resize_size)
        names = card.class_names or []
        self.class_names = [names[i] if i < len(names) else str(i) for i in range(card.num_classes)]

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                        resize_size: Optional[int] = None) -> "Predictor":
        """Load a reslab model file or run folder (see :func:`reslab.checkpoint.load_model`)."""
        model, card = load_model(path, with_card=True)
        return cls(model, card, device, resize_size)

    @torch.inference_mode()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax probabilities (float32, on the CPU) of a normalised batch (N, 3, S, S)."""
        return self.model(images.to(self.device)).float().softmax(dim=1).cpu()

    def top_k(self, probabilities: Tensor, k: int) -> list[list[ClassScore]]:
        values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
        return [[ClassScore(int(i), self.class_names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
                for row_p, row_i in zip(values, indices)]

    def predict_files(self, paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]], top_k: int = 5,
                      batch_size: int = 64) -> Iterator[Prediction]:
        """Predictions in the order of ``paths`` (one image file or several), ``batch_size``
        images per forward pass.

        A file that cannot be decoded gives a :class:`Prediction` with ``error`` set; the
        others are still predicted.
        """
        if top_k < 1 or batch_size < 1:
            raise ValueError(f"top_k and batch_size must be positive, got {top_k} and {batch_size}")
        paths = path_list(paths)
        for start in range(0, len(paths), batch_size):
            chunk = [str(p) for p in paths[start:start + batch_size]]
            decoded: dict[int, Tensor] = {}
            errors: dict[int, str] = {}
            for i, path in enumerate(chunk):
                try:
                    decoded[i] = self.preprocess(load_image(path))
                except ImageReadError as exc:
                    errors[i] = str(exc)
            tops = iter(self.top_k(self.probabilities(torch.stack(list(decoded.values()))), top_k)) if decoded else iter(())
            for i, path in enumerate(chunk):
                yield Prediction(path, error=errors[i]) if i in errors else Prediction(path, next(tops))


def predict_images(checkpoint: Union[str, os.PathLike], images: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
                   top_k: int = 5, device: Optional[str] = None) -> list[Prediction]:
    """Top-k predictions of image files and folders (walked recursively) by a checkpoint."""
    predictor = Predictor.from_checkpoint(checkpoint, resolve_device(device))
    return list(predictor.predict_files(find_images(images), top_k))
