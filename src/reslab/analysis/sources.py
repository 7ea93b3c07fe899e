"""What an analysis saves beside its JSON so that anyone can rerun it and check its inputs.

``<experiment>_run.json`` holds the exact command, the reslab and torch versions, the seed, each
model's source (a checkpoint file, run folder or model name), its weights' sha256 and the file's,
the data set, split and the indices of the images used. The weights hash is over the state dict
itself (names, dtypes, shapes and bytes, in name order), so it is the same for a model however it
was stored, and it exists for a model built at initialisation that has no file.
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn


def command_line() -> str:
    """The command as typed: ``reslab ARGS`` when run through the ``reslab`` entry point or
    ``python -m reslab``, else the interpreter's whole argv."""
    program = Path(sys.argv[0]).name
    if program in ("reslab", "__main__.py"):
        return shlex.join(["reslab", *sys.argv[1:]])
    return shlex.join(sys.argv)


def weights_sha256(model: nn.Module) -> str:
    """sha256 of ``model``'s state dict: each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_record(source: str, model: nn.Module, model_name: str, *, at_init: bool = False) -> dict:
    """Source, registry name, weights hash and (for a file, run folder or name with weights) the
    file's path and sha256 of one model an analysis used."""
    record: dict[str, Any] = {"source": source, "model": model_name, "weights_sha256": weights_sha256(model)}
    if at_init:
        record["weights"] = "initialisation (no file)"
        return record
    from reslab.checkpoint import resolve_checkpoint_path
    from reslab.pretrained import sha256_of

    path = resolve_checkpoint_path(source)
    record.update(file=str(path), file_sha256=sha256_of(path))
    return record


def run_record(experiment: str, *, seed: int, models: Sequence[dict], data: Optional[str] = None,
               split: Optional[str] = None, image_indices: Optional[Sequence[int]] = None, **extra: Any) -> dict:
    """The record written beside an experiment's JSON (see the module docstring)."""
    from reslab import __version__

    # no "experiment" key: the report gathers the tables that have one, and this is evidence, not a table
    record = {"command": command_line(), "of_experiment": experiment, "reslab_version": __version__,
              "torch_version": torch.__version__, "seed": seed, "models": list(models)}
    if data is not None:
        record.update(data=str(data), split=split,
                      image_indices=None if image_indices is None else [int(i) for i in image_indices])
    record.update(extra)
    return record


def image_indices(labels: torch.Tensor, classes: Sequence[str], n: Optional[int], seed: int, source: str = "") -> list[int]:
    """The indices of the images that ``--images N`` picks (a class-balanced subset, as every
    analysis's data options do), or all of them."""
    from reslab.data.dataset import balanced_indices

    if not n:
        return list(range(len(labels)))
    return [int(i) for i in balanced_indices(labels, n, classes, seed, source)]


def write_run_record(folder: Union[str, Path], record: dict) -> Path:
    """Write ``record`` as ``<experiment>_run.json`` into ``folder`` (atomically)."""
    from reslab.analysis.plots import write_json

    return write_json(Path(folder) / f"{record['of_experiment']}_run.json", record)


def load_models_on_images(args: Any, sources: Sequence[str]) -> tuple[list[int], dict[str, tuple[nn.Module, Any, list]]]:
    """For the analysis commands: the indices of the images the data options pick, and for each
    checkpoint or model name with weights, ``label -> (model, card, normalised batches)`` by the
    loader every analysis command uses (:func:`reslab.commands.options.load_checkpoint_batches`)."""
    from reslab.commands.options import load_checkpoint_batches
    from reslab.data import load_dataset

    dataset = load_dataset(args.data, split=args.split)
    indices = image_indices(dataset.labels, dataset.classes, args.images, args.seed, dataset.source)
    subset = dataset.subset(indices) if args.images else dataset
    loaded: dict[str, tuple[nn.Module, Any, list]] = {}
    for source in sources:
        model, card, _, batches = load_checkpoint_batches(source, subset, args)
        label = card.model if card.model not in loaded else f"{card.model} ({source})"
        loaded[label] = (model, card, batches)
    return indices, loaded
