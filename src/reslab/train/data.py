"""The data of a training run: the loaders of its splits, its classes and normalisation.

:func:`load_training_data` reads the data set named by the config (rank 0 first, filling the
decoded cache), takes the class-balanced training subset (``train_subset``), the validation
split (``val``) and the evaluation subset (``eval_subset``), all with a fixed seed so that every
seed of a run sees the same images, and checks the values that meet the images here (crop
sizes, test-time shifts, batch size, at least two classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from reslab.errors import DataError
from reslab.inference.views import check_tta_translate
from reslab.train import distributed
from reslab.train.config import TrainConfig
from reslab.train.distributed import DistributedEnv
from reslab.train.progress import plural


@dataclass
class TrainingData:
    """The loaders and what a model card needs to know about the images."""

    train: Any  # BatchLoader, training mode
    test: Any  # BatchLoader
    val: Optional[Any]  # BatchLoader, when the config holds images out (``val``)
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int
    train_images: Tensor  # uint8 [N, H, W, C], for extensions that look at the data (WhitenStem)
    summary: str  # one line for the run's start messages

    def evaluation_splits(self) -> dict[str, Any]:
        """The splits evaluated each time: validation (if any) first, then test."""
        return {name: loader for name, loader in (("val", self.val), ("test", self.test)) if loader is not None}


def load_training_data(config: TrainConfig, env: DistributedEnv, device: torch.device) -> TrainingData:
    """The run's loaders (see the module)."""
    from reslab.data import BatchLoader, balanced_subset, channel_stats, load_dataset, split_validation

    if not config.data:
        raise DataError("no data set given: pass --data PATH (a folder with train/ and test/)")
    show = env.is_main and config.progress != "quiet"
    if not env.is_main:  # rank 0 decodes (or downloads) and fills the cache; the others then read it
        distributed.barrier(env)
    train_set = load_dataset(config.data, "train", cache_dir=config.cache_dir, download=config.download, progress=show)
    test_set = load_dataset(config.data, "test", cache_dir=config.cache_dir, progress=show)
    if env.is_main:
        distributed.barrier(env)
    if train_set.num_classes < 2:
        raise DataError(f"{config.data} has {plural(train_set.num_classes, 'class')} ({', '.join(train_set.classes)}): "
                        "a classifier needs at least 2, one folder each under train/ and test/")
    if config.train_subset:
        train_set = balanced_subset(train_set, config.train_subset, seed=0)
    sets = {"train": train_set, "test": test_set}
    if config.val:
        sets["train"], sets["val"] = split_validation(train_set, config.val, seed=0)
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
    sizes = ", ".join(f"{len(s):,} {name}" for name, s in sets.items())
    summary = (f"data: {sizes} images from {config.data}, {plural(train_set.num_classes, 'class')}; "
               f"mean {tuple(round(m, 4) for m in mean)} std {tuple(round(s, 4) for s in std)}")
    return TrainingData(train, evaluation["test"], evaluation.get("val"), train_set.classes, mean, std,
                        train_set.image_size[0], sets["train"].images, summary)


def _check_sizes(config: TrainConfig, image_size: tuple[int, int], train_images: int) -> None:
    check_tta_translate(config.tta_translate, image_size)
    if config.small_crop > min(image_size):
        raise DataError(f"--small-crop {config.small_crop} is larger than the {image_size[0]}x"
                        f"{image_size[1]} images; give at most {min(image_size)}")
    if config.batch_size > train_images:
        raise DataError(f"batch size {config.batch_size} is larger than the {train_images} training images")
