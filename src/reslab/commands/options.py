"""Options that several ``reslab`` commands share, and the rule for where a command writes.

Output folders (:func:`output_folder`, :func:`output_file`, :func:`add_output_arguments`): a
command writes its results into ``--out``; without it, into ``runs/<command>/<name>`` under the
current directory (a fresh ``<name>-2``, ``-3``... when that one is taken), so a default never
lands inside the installed package or a committed results tree and never overwrites. A folder
``--out`` that already holds files, or a file ``--out`` that exists, is refused unless
``--overwrite`` is given; a path of the wrong kind (a file where a folder is wanted, or the
reverse) is refused. Each refusal is one line that says what to do.

Data options (:func:`add_data_arguments` and the helpers after it): the evaluation images of
``eval``, ``lesion``, ``paths`` and ``responses``. Training options (:func:`add_training_arguments`):
the recipe flags of the commands that train (``degradation``, ``sdepth``), with the same names
and value checks as ``reslab train``'s (:func:`flag_name`, :func:`field_argument_type`).

Heavy modules are imported inside functions so that ``reslab --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os
import re
import typing
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Optional, Union

from reslab.argtypes import increasing_fractions, key_value, positive_int, random_seed
from reslab.errors import ReslabError

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_ROOT = "runs"  # default output folders: runs/<command>/<name>, relative to the current directory
RUN_MODEL_FILES = ("model.safetensors", "best.safetensors", "checkpoint.pt")  # named after their run folder


class OutputError(ReslabError):
    """An output path a command must not write to as given."""


# ------------------------------------------------------------------------------------------
# Where results go


def add_output_arguments(parser: argparse.ArgumentParser, command: str, *, file: Optional[str] = None,
                         default: Optional[str] = None) -> None:
    """``--out`` and ``--overwrite``, the same in every command that writes results.

    ``file``: the command writes one file (e.g. ``"error_curves.png"``), so ``--out`` names a file;
    otherwise a folder. ``default``: how the help describes the default, when it is not
    ``runs/<command>/<name>``.
    """
    where = default or f"{DEFAULT_ROOT}/{command}/NAME/" + (file or "") + ", a fresh NAME-2, -3... if taken"
    if file:
        parser.add_argument("--out", metavar="FILE", help=f"file to write (default: {where}); an existing "
                            "file is refused unless --overwrite")
    else:
        parser.add_argument("--out", metavar="DIR", help=f"output folder (default: {where}); a folder that "
                            "already holds files is refused unless --overwrite")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out if it exists" if file else
                        "write into --out although it holds files, replacing those of the same names")


def output_folder(out: Optional[PathLike], command: str, name: str, *, overwrite: bool = False,
                  continues: Collection[str] = ()) -> Path:
    """The folder ``command`` writes its results into (checked now, created when written to).

    ``out`` is ``--out`` (None when not given): it is used when it is new, empty, holds only
    entries named in ``continues`` (the command's own files and run folders that it continues,
    as ``degradation`` resumes its runs), or when ``overwrite``. Without ``out``, the folder is
    ``runs/<command>/<name>`` in the current directory, or the first ``<name>-2``, ``-3``... that
    is free (with ``overwrite``: ``runs/<command>/<name>`` itself). ``name`` is a model or run
    name (:func:`checkpoint_name`); characters other than letters, digits and ``._-+`` become ``_``.

    Call it before the work, so that a bad ``--out`` fails in a second, not after an hour.
    Raises OutputError (one line) for a path that is a file, a folder that holds other files,
    or a folder that cannot be created or written.
    """
    if out is not None:
        folder = Path(out)
        _check_folder(folder, overwrite=overwrite, continues=continues, flag="--out")
    else:
        base = Path(DEFAULT_ROOT) / command / (re.sub(r"[^\w.+-]", "_", name).strip("._") or command)
        folder = base
        number = 1
        while not overwrite and not _usable(folder, continues):
            number += 1
            folder = base.with_name(f"{base.name}-{number}")
        _check_folder(folder, overwrite=True, continues=continues, flag="the default output folder")
    _check_writable(folder)
    return folder


def output_file(path: PathLike, *, overwrite: bool = False) -> Path:
    """``path`` checked as a file that a command is about to write (``--out FILE``): refused
    (OutputError, one line) when it is a folder, exists and ``overwrite`` is False, or its
    folder cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"--out {path} is a folder, not a file; give a file name (one inside that folder will do)")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; give another file name with --out, or --overwrite to replace it")
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"--out {path}: {blocker} is a file, not a folder; give another file name")
    _check_writable(path.parent)
    return path


def checkpoint_name(path: PathLike) -> str:
    """A short name for the results of a checkpoint: a run folder's name (also for the model
    files inside a run folder: ``runs/r20/model.safetensors`` -> ``r20``), else the file's stem."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name
    if path.name in RUN_MODEL_FILES and path.resolve().parent.name:
        return path.resolve().parent.name
    return path.name.split(".")[0] or path.name


def names_of(paths: Sequence[PathLike], most: int = 3) -> str:
    """The :func:`checkpoint_name` of each path joined by ``+`` (at most ``most``, then ``+N-more``)."""
    names = [checkpoint_name(p) for p in paths]
    return "+".join(names[:most]) + (f"+{len(names) - most}-more" if len(names) > most else "")


def _usable(folder: Path, continues: Collection[str]) -> bool:
    """Whether a default folder may be written: absent, empty, or holding only ``continues``."""
    if not folder.exists():
        return True
    return folder.is_dir() and all(entry.name in continues for entry in folder.iterdir())


def _check_folder(folder: Path, *, overwrite: bool, continues: Collection[str], flag: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {folder} is a file, not a folder; give a folder (it is created if needed)")
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"{flag} {folder}: {blocker} is a file, not a folder; give another folder")
    if overwrite or not folder.is_dir():
        return
    try:
        entries = sorted(entry.name for entry in folder.iterdir())
    except OSError as exc:
        raise OutputError(f"cannot read the output folder {folder}: {(exc.strerror or str(exc)).lower()}; give another --out") from None
    others = [name for name in entries if name not in continues]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise OutputError(f"{flag} {folder} already holds files ({shown}); give a new or empty folder, "
                          "or --overwrite to write into it")


def _check_writable(folder: Path) -> None:
    """That ``folder``, or the nearest folder above it that exists, may be written."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write into {existing} (permission denied); give another --out")


# ------------------------------------------------------------------------------------------
# Evaluation images (eval, lesion, paths, responses)


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool = True, precision: bool = True) -> None:
    """The options that choose the evaluation images and how they are run (``--precision`` only
    where ``precision``)."""
    from reslab.precision import PRECISIONS

    parser.add_argument("--data", required=required, metavar="PATH",
                        help="data set folder (class folders under train/ and test/) or an official CIFAR archive folder")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="which split to evaluate on (val: the val/ folder of a class-folder data set)")
    parser.add_argument("--images", type=positive_int, metavar="N",
                        help="use a class-balanced subset of N images; none = the whole split")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                            help="auto: bfloat16 autocast where the CPU or GPU has bf16 instructions, else float32")
        parser.add_argument("--fp32", dest="precision", action="store_const", const="fp32", default=argparse.SUPPRESS,
                            help="the same as --precision fp32")
    parser.add_argument("--seed", type=random_seed, default=0, help="seed of the image subset and of random draws")


def device_of(args: argparse.Namespace) -> str:
    """The device --device names (CUDA for auto when there is one); an error if it is absent."""
    from reslab.inference.predict import resolve_device

    return str(resolve_device(args.device))


def run_in_bf16(args: argparse.Namespace) -> bool:
    """Whether ``--precision`` (``auto`` decided by the hardware) asks for bf16 autocast; prints
    the decision."""
    import torch

    from reslab.precision import resolve_precision

    precision, note = resolve_precision(args.precision, torch.device(device_of(args)))
    print(note)
    return precision == "bf16"


def load_images(args: argparse.Namespace):
    """The split (or its class-balanced subset) that the data options name."""
    from reslab.data import balanced_subset, load_dataset

    dataset = load_dataset(args.data, split=args.split)
    return balanced_subset(dataset, args.images, args.seed) if args.images else dataset


def load_checkpoint_batches(path: str, dataset, args: argparse.Namespace):
    """(model, card, class names, normalised batches) of a checkpoint on ``dataset``."""
    import torch

    from reslab.analysis.evaluate import check_classes, eval_batches
    from reslab.checkpoint import load_model

    device = device_of(args)
    model, card = load_model(path, map_location=device, with_card=True)
    classes = check_classes(card, dataset.classes, source=str(path))
    model = model.to(memory_format=torch.channels_last)
    batches = eval_batches(dataset, card.mean, card.std, batch_size=args.batch_size, device=device)
    return model, card, classes, batches


def evaluation_path(args: argparse.Namespace, card):
    """How ``eval`` reads the split the data options name (a :class:`~reslab.data.pipeline.PipelineChoice`),
    chosen as ``reslab train`` chooses (:func:`~reslab.data.pipeline.choose_pipeline`): in memory
    (today's exact path) for the official CIFAR files and class folders whose images all have the
    model's input size; streamed for images of several sizes, or of one other size."""
    import torch

    from reslab.data.load import prepare_folder
    from reslab.data.pipeline import choose_pipeline, memory_budget
    from reslab.data.readers import find_source

    source = find_source(prepare_folder(args.data), args.split)
    official = source.format != "class-folders"
    choice = choose_pipeline("auto", source.files, len(source.files), image_size=int(card.input_size),
                             model_input_size=int(card.input_size), budget=memory_budget(torch.device(device_of(args)).type),
                             official_format=official, size_name="the model's input size")
    return choice, source


def streaming_batches(args: argparse.Namespace, card, source):
    """(batches with a progress bar, class names, BadImages) of ``source`` streamed through the
    evaluation transform of a streaming run (:class:`~reslab.data.streaming.StreamingLoader`, eval
    mode: resize and centre crop at the card's input size, the card's mean and std); unreadable
    files are left out, named and counted as in training, up to ``--bad-image-limit``."""
    import numpy as np
    import torch

    from reslab.analysis.evaluate import check_classes
    from reslab.data.dataset import balanced_indices
    from reslab.data.streaming import BadImages, PathTable, StreamingLoader, auto_workers

    classes = check_classes(card, source.classes, source=str(args.checkpoint))
    indices = np.arange(len(source.files))
    if args.images:
        indices = balanced_indices(torch.tensor(source.labels), args.images, classes, seed=args.seed,
                                   source=str(source.location)).numpy()
    bad = BadImages(len(indices), args.bad_image_limit)
    loader = StreamingLoader(PathTable(str(source.location), [source.files[i] for i in indices]),
                             np.asarray(source.labels)[indices], classes, args.batch_size, train=False,
                             image_size=int(card.input_size), mean=card.mean, std=card.std, device=device_of(args),
                             workers=auto_workers() if args.workers is None else args.workers, bad_images=bad,
                             source=str(source.location))
    return _counted(loader, len(indices), f"evaluating {source.location}"), classes, bad


def _counted(batches, total: int, description: str):
    """``batches`` as they come, with a progress bar over ``total`` images."""
    from reslab.data.progress import progress_bar

    with progress_bar(total, description, unit="image") as bar:
        for images, labels in batches:
            yield images, labels
            bar.update(len(labels))


# ------------------------------------------------------------------------------------------
# Training (train, degradation, sdepth)

# Training flags of the commands that train several runs, by TrainConfig field; each given one
# overrides the recipe's value. Names and values are `reslab train`'s.
TRAINING_FLAGS = (
    ("epochs", "length of each run in epochs"),
    ("iterations", "length of each run in iterations (He et al.: 64000)"),
    ("train_subset", "train on a class-balanced subset of this many images; 0 = all"),
    ("batch_size", "mini-batch size (lr scales linearly from the recipe's batch size)"),
    ("lr", "peak learning rate at the recipe's batch size"),
    ("seed", "seed of weights, data order and augmentation"),
    ("threads", "CPU threads; 0 = torch's default"),
    ("eval_interval", "evaluate every this many epochs and after the last; 0 = after the last only"),
    ("eval_subset", "evaluate on a class-balanced fixed subset of this many test images; 0 = all"),
    ("log_interval", "iterations between lines of steps.jsonl (the thin curves)"),
)


def add_training_arguments(parser: argparse.ArgumentParser, default_recipe: str) -> None:
    """--recipe, the common length/budget flags, and --set KEY=VALUE for any other training value."""
    from reslab.train.config import RECIPES

    group = parser.add_argument_group("training", "each flag given overrides the recipe's value")
    group.add_argument("--recipe", choices=list(RECIPES), default=default_recipe, help="named recipe (`reslab train --list-recipes`)")
    for name, text in TRAINING_FLAGS:
        group.add_argument(flag_name(name), type=field_argument_type(name), default=argparse.SUPPRESS, help=text)
    group.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="any other `reslab train` value, e.g. precision=fp32 or model_args={'shortcut':'B'} (repeatable)")


def training_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the training flags give."""
    given = {name: getattr(args, name) for name, _ in TRAINING_FLAGS if hasattr(args, name)}
    return {**given, **{key.replace("-", "_"): value for key, value in args.set}}


def flag_name(field: str) -> str:
    """The command-line flag of TrainConfig field ``field`` (``train_subset`` -> ``--train-subset``)."""
    return "--" + field.replace("_", "-")


def field_argument_type(name: str):
    """The argparse ``type=`` of TrainConfig field ``name``: the same for every command that sets it."""
    from reslab.train.config import field_types

    return parser_for_field(name, field_types()[name])


def parser_for_field(name: str, kind: Any):
    """An argparse ``type=`` for a TrainConfig field: its range's type if it has one, else by annotation."""
    from reslab.train.config import FIELD_RANGES

    args = typing.get_args(kind)
    if typing.get_origin(kind) is typing.Union and type(None) in args:  # Optional[X]: 'none' is None
        inner = parser_for_field(name, next(a for a in args if a is not type(None)))

        def optional(text: str) -> Any:
            return None if text.lower() == "none" else inner(text)

        optional.__name__ = getattr(inner, "__name__", "optional")  # argparse names the type in its messages
        return optional
    if typing.get_origin(kind) is tuple:
        return increasing_fractions
    return FIELD_RANGES.get(name) or {int: int, float: float, str: str}[kind]
