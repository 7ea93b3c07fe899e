"""The data of a training run: the loaders of its splits, its classes and normalisation.

:func:`load_training_data` finds the splits of the data set named by the config (``train/`` with
``test/`` or ``val/``, or one folder of class folders split by ``--val``), checks that they have
the same classes, chooses the data path (:mod:`reslab.data.pipeline`: the in-memory tensor or
streaming from the files) and builds the loaders. Subsets and held-out images are drawn
class-balanced with a fixed seed, so that every seed of a run sees the same images; the values
that meet the images (crop sizes, test-time shifts, batch size, at least two classes) are
checked here, before training starts.

In memory, rank 0 decodes (or downloads) first and fills the decoded cache; the others then read
it. Streamed, the images are normalised with ImageNet's mean and std (those of the torchvision
and timm weights that fine-tuning starts from; computing a folder's own would decode it whole).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from reslab.errors import DataError
from reslab.inference.views import check_tta_translate
from reslab.train import distributed
from reslab.train.config import TrainConfig
from reslab.train.distributed import DistributedEnv
from reslab.train.progress import plural

WHITENING_SAMPLE = 2048  # images decoded for what looks at the data on the streaming path (a whitened stem)


@dataclass
class TrainingData:
    """The loaders and what a model card needs to know about the images."""

    train: Any  # BatchLoader or StreamingLoader, training mode
    test: Any  # the same kind, evaluation mode
    val: Optional[Any]  # when the data set or the config holds images out (``val``)
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    image_sample: Callable[[], Tensor]  # uint8 [N, H, W, C] training images, on demand
    summary: str  # lines for the run's start messages
    pipeline: str = "memory"  # or "stream"

    @property
    def train_images(self) -> Tensor:
        """uint8 [N, H, W, C]: every training image in memory, a sample of centre crops when streaming
        (for extensions that look at the data: WhitenStem)."""
        return self.image_sample()

    def evaluation_splits(self) -> dict[str, Any]:
        """The splits evaluated each time: validation (if any) first, then test."""
        return {name: loader for name, loader in (("val", self.val), ("test", self.test)) if loader is not None}


def load_training_data(config: TrainConfig, env: DistributedEnv, device: torch.device) -> TrainingData:
    """The run's loaders (see the module)."""
    from reslab.data.load import prepare_folder
    from reslab.data.pipeline import choose_pipeline, memory_budget, stream_after
    from reslab.data.readers import find_splits
    from reslab.registry import model_info

    if not config.data:
        raise DataError("no data set given: pass --data PATH (a folder with train/ and test/)")
    show = env.is_main and config.progress != "quiet"
    if env.local_rank != 0:  # the first rank of each machine fills its cache (or downloads); the others read it
        distributed.barrier(env)
    root = prepare_folder(config.data, download=config.download, progress=show)
    splits = find_splits(root)
    splits.check_classes()
    if splits.test is None and not config.val:
        raise DataError(f"{root} has no test/ or val/ folder to evaluate on; hold out a share of its images with "
                        f"--val 0.1 (or a number of images, --val 500), or add {root}/val/<class>/<images>")
    if splits.val is not None and config.val:
        raise DataError(f"{root} has a val/ folder beside test/; leave --val out (it would hold out training images too)")
    official = splits.train.format != "class-folders"
    sources = [s for s in (splits.train, splits.test, splits.val) if s is not None]
    choice = choose_pipeline(config.pipeline, splits.train.files, sum(len(s.files) for s in sources),
                             image_size=config.image_size, model_input_size=model_info(config.model).input_size,
                             budget=memory_budget(device.type), official_format=official)
    sets = None
    if choice.kind == "memory":
        try:
            sets = _decode_splits(config, splits, root, show)
        except DataError as exc:
            if config.pipeline == "memory" or official:
                raise
            choice = stream_after(exc)
    if env.local_rank == 0:
        distributed.barrier(env)
    if sets is not None:
        data = _memory_data(config, env, device, sets, root)
    else:
        data = _streaming_data(config, env, device, splits, root, model_info(config.model).input_size)
    skipped = {reason: n for s in sources for reason, n in s.skipped.items() if n}
    notes = [choice.describe()]
    if skipped:
        notes.append("skipped in the class folders: " + ", ".join(f"{n:,} {reason} file{'' if n == 1 else 's'}"
                                                                  for reason, n in skipped.items()))
    data.summary = "\n".join([data.summary, *notes])
    return data


def held_out_count(val: float, images: int) -> int:
    """``--val``: a number of images (1 or more), or a fraction of them (below 1)."""
    return int(val) if val >= 1 else max(1, round(val * images))


# ------------------------------------------------------------------------------------------
# In memory: one uint8 tensor per split (reslab.data.BatchLoader).


def _decode_splits(config: TrainConfig, splits, root: Path, show: bool) -> dict[str, Any]:
    from reslab.data.load import load_source

    return {name: load_source(source, root, cache_dir=config.cache_dir, progress=show)
            for name, source in (("train", splits.train), ("test", splits.test), ("val", splits.val)) if source is not None}


def _memory_data(config: TrainConfig, env: DistributedEnv, device: torch.device, sets: dict[str, Any],
                 root: Path) -> TrainingData:
    from reslab.data import BatchLoader, balanced_subset, channel_stats, split_validation

    train_set = sets["train"]
    _check_classes(train_set.classes, root)
    if config.train_subset:
        sets["train"] = balanced_subset(train_set, config.train_subset, seed=0)
    if config.val:
        held = "test" if "test" not in sets else "val"
        sets["train"], sets[held] = split_validation(sets["train"], held_out_count(config.val, len(sets["train"])), seed=0)
    for split in ("val", "test"):
        if config.eval_subset and split in sets and config.eval_subset < len(sets[split]):
            sets[split] = balanced_subset(sets[split], config.eval_subset, seed=0)
    _check_sizes(config, train_set.image_size, len(sets["train"]))
    mean, std = channel_stats(sets["train"])
    common = dict(mean=mean, std=std, device=device, rank=env.rank, world_size=env.world_size,
                  channels_last=config.channels_last)
    train = BatchLoader(sets["train"], config.batch_size, train=True, crop_padding=config.crop_padding,
                        padding_mode=config.padding_mode, flip=config.flip, alternating_flip=config.alternating_flip,
                        cutout=config.cutout, seed=config.seed, **common)
    evaluation = {split: BatchLoader(sets[split], config.eval_batch_size * env.world_size, train=False, **common)
                  for split in ("val", "test") if split in sets}
    summary = (f"data: {_sizes(sets)} images from {config.data}, {plural(train_set.num_classes, 'class')}; "
               f"mean {tuple(round(m, 4) for m in mean)} std {tuple(round(s, 4) for s in std)}")
    train_images = sets["train"].images
    return TrainingData(train, evaluation["test"], evaluation.get("val"), train_set.classes, mean, std,
                        train_set.image_size[0], lambda: train_images, summary, "memory")


# ------------------------------------------------------------------------------------------
# Streaming: the file lists (reslab.data.streaming.StreamingLoader).


def _streaming_data(config: TrainConfig, env: DistributedEnv, device: torch.device, splits, root: Path,
                    model_input_size: int) -> TrainingData:
    from reslab.data.dataset import balanced_indices
    from reslab.data.streaming import BadImages, PathTable, StreamingLoader, auto_workers
    from reslab.inference.interop import IMAGENET_MEAN, IMAGENET_STD
    from reslab.inference.preprocess import default_resize_size

    classes = splits.train.classes
    _check_classes(classes, root)
    parts: dict[str, tuple[Any, np.ndarray]] = {}  # split -> (source, indices into its files)
    train_indices = np.arange(len(splits.train.files))
    labels = torch.tensor(splits.train.labels)
    if config.train_subset:
        train_indices = balanced_indices(labels, config.train_subset, classes, seed=0, source=str(root)).numpy()
    if config.val:
        held = balanced_indices(labels[train_indices], held_out_count(config.val, len(train_indices)), classes, seed=0,
                                source=str(root)).numpy()
        keep = np.ones(len(train_indices), dtype=bool)
        keep[held] = False
        parts["test" if splits.test is None else "val"] = (splits.train, train_indices[held])
        train_indices = train_indices[keep]
    parts["train"] = (splits.train, train_indices)
    for name, source in (("val", splits.val), ("test", splits.test)):
        if source is not None:
            parts[name] = (source, np.arange(len(source.files)))
    for split in ("val", "test"):
        if config.eval_subset and split in parts and config.eval_subset < len(parts[split][1]):
            source, indices = parts[split]
            chosen = balanced_indices(torch.tensor(source.labels)[indices], config.eval_subset, classes, seed=0,
                                      source=str(source.location)).numpy()
            parts[split] = (source, indices[chosen])
    size = config.image_size or model_input_size
    _check_sizes(config, (size, size), len(parts["train"][1]))
    workers = config.workers if config.workers is not None else auto_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    bad = BadImages(sum(len(indices) for _, indices in parts.values()), config.bad_image_limit)
    common = dict(image_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD, device=device, rank=env.rank,
                  world_size=env.world_size, channels_last=config.channels_last, workers=workers, bad_images=bad)

    def loader(split: str, batch_size: int, train: bool) -> StreamingLoader:
        source, indices = parts[split]
        paths = PathTable(str(source.location), [source.files[i] for i in indices])
        return StreamingLoader(paths, np.asarray(source.labels)[indices], classes, batch_size, train=train,
                               flip=config.flip, seed=config.seed, source=str(source.location), **common)

    train = loader("train", config.batch_size, True)
    evaluation = {split: loader(split, config.eval_batch_size * env.world_size, False)
                  for split in ("val", "test") if split in parts}
    counts = {name: parts[name][1] for name in ("train", "val", "test") if name in parts}
    summary = (f"data: {_sizes(counts)} images from {config.data}, {plural(len(classes), 'class')}; "
               f"ImageNet's mean {IMAGENET_MEAN} and std {IMAGENET_STD}\n"
               f"streaming: {size}x{size} random-resized crops{' and flips' if config.flip else ''} for training, "
               f"resize to {default_resize_size(size)} and centre crop for evaluation; "
               f"{plural(workers, 'worker process')} per training process")
    return TrainingData(train, evaluation["test"], evaluation.get("val"), classes, IMAGENET_MEAN, IMAGENET_STD,
                        size, lambda: train.sample_images(WHITENING_SAMPLE), summary, "stream")


# ------------------------------------------------------------------------------------------


def _sizes(sets: dict[str, Any]) -> str:
    return ", ".join(f"{len(s):,} {name}" for name, s in sets.items())


def _check_classes(classes: list[str], root: Path) -> None:
    if len(classes) < 2:
        raise DataError(f"{root} has {plural(len(classes), 'class')} ({', '.join(classes)}): "
                        "a classifier needs at least 2, one folder each under train/ and test/")


def _check_sizes(config: TrainConfig, image_size: tuple[int, int], train_images: int) -> None:
    check_tta_translate(config.tta_translate, image_size)
    if config.small_crop > min(image_size):
        raise DataError(f"--small-crop {config.small_crop} is larger than the {image_size[0]}x"
                        f"{image_size[1]} images; give at most {min(image_size)}")
    if config.batch_size > train_images:
        raise DataError(f"batch size {config.batch_size} is larger than the {train_images} training images")
