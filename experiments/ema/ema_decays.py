"""Which EMA decay pays: one training run carrying several exponential moving averages of its
weights, each evaluated on the test set beside the live weights.

An average of the weights changes nothing in training, so one run can carry several, and
comparing them on the same run leaves out the seed-to-seed spread (about 0.2 points for the
fast recipe) that separate runs with and without ``--ema-decay`` would add.

    python experiments/ema/ema_decays.py --data ../shared/datasets/cifar10 --out runs/ema/icelake_seed0
    python experiments/ema/ema_decays.py --data ../shared/datasets/cifar10 --out /tmp/ema --epochs 2 --train-subset 2000

The averages are ``reslab.train.extras.ModelEma`` (weights and BN statistics, as ``--ema-decay``),
kept by a trainer callback: it takes the weights after every step (when the next step's
gradients are ready, and after the last step at the end of the epoch), so each average covers
the weights that ``--ema-decay`` would (its BN statistics run one batch ahead of them, as the
callback sees the model after the next forward pass). They are written as
OUT/ema_<decay>.safetensors with the run's model card, so ``reslab eval`` reads them too.

Each set of weights is evaluated with the BN statistics it has (for an average, the average of
the live statistics, as ``--ema-decay`` evaluates it), and, in a single view, with statistics
re-estimated for its own weights (averaged weights need statistics of their own: Izmailov et
al. 2018, SWA, sec. 3.2; pycls's "precise BN"): the plain mean, in training mode, over one
epoch of ``--bn-images`` training images in batches augmented as the recipe's. Last, the live
weights' statistics re-estimated from the same images unaugmented, and from the test images.

Rerun on a finished OUT, the script evaluates again without training; a stopped run cannot be
resumed (the averages live in memory), so start it again.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from reslab.analysis.evaluate import autocast, eval_batches, evaluate
from reslab.argtypes import increasing_fractions, positive_int, random_seed
from reslab.checkpoint import load_model, read_checkpoint, save_model
from reslab.data import BatchLoader, ImageDataset, balanced_subset, load_dataset
from reslab.errors import ReslabError
from reslab.inference.fold import folded_for_evaluation
from reslab.precision import resolve_precision
from reslab.registry import list_models
from reslab.train import TrainConfig, train
from reslab.train.config import RECIPES
from reslab.train.extensions import ModelEma


DECAYS = (0.99, 0.995, 0.998, 0.999, 0.9995)  # averaging over about 100 to 2,000 of the fast recipe's 9,750 steps


class Averages:
    """Trainer callback: one :class:`ModelEma` per decay, updated once per set of weights."""

    def __init__(self, decays: tuple[float, ...]) -> None:
        self.decays, self.averages = decays, []
        self.model: nn.Module | None = None
        self.steps_seen = -1  # how many steps the weights last averaged had taken

    def _update(self, steps: int) -> None:
        if self.model is None or steps <= self.steps_seen:
            return
        if not self.averages:
            self.averages = [ModelEma(self.model, decay) for decay in self.decays]
        for average in self.averages:
            average.update(self.model)
        self.steps_seen = steps

    def after_backward(self, model: nn.Module, iteration: int) -> None:
        self.model = model
        self._update(iteration)  # the weights have taken `iteration` steps; this one is not applied yet

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self._update(metrics["iteration"])


@torch.no_grad()
def reestimated_bn(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], bf16: bool) -> nn.Module:
    """A copy of ``model`` whose BN running statistics are the plain mean over ``batches``."""
    model = copy.deepcopy(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: every batch weighs the same
    model.train()
    for images, _ in batches:
        with autocast(images.device, bf16):
            model(images)
    return model.eval()


def ema_file(out: Path, decay: float) -> Path:
    return out / f"ema_{decay:g}.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--data", required=True, help="data set folder, as for `reslab train`")
    parser.add_argument("--out", type=Path, required=True, help="the run folder (a finished one is evaluated again)")
    parser.add_argument("--model", default="resnet20", help="a registered model (`reslab models`)")
    parser.add_argument("--recipe", default="fast", choices=list(RECIPES))
    parser.add_argument("--decays", type=increasing_fractions, default=DECAYS,
                        help=f"EMA decays per step, increasing (default {','.join(map(str, DECAYS))})")
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--epochs", type=positive_int, help="instead of the recipe's (for a quick look)")
    parser.add_argument("--train-subset", type=positive_int, help="a class-balanced subset of N training images")
    parser.add_argument("--images", type=positive_int, help="evaluate on a class-balanced subset of N test images")
    parser.add_argument("--bn-images", type=positive_int, default=10_000,
                        help="training images (class-balanced) that re-estimate the BN statistics (default %(default)s)")
    args = parser.parse_args()
    if args.model not in list_models():
        parser.error(f"unknown model {args.model!r}; `reslab models` lists them")

    overrides = dict(model=args.model, data=args.data, out=str(args.out), seed=args.seed, progress="plain")
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.train_subset:
        overrides["train_subset"] = args.train_subset
    config = TrainConfig.from_recipe(args.recipe, **overrides)
    missing = [f"{d:g}" for d in args.decays if not ema_file(args.out, d).exists()]
    if missing and (args.out / "checkpoint.pt").exists():
        sys.exit(f"ema_decays.py: error: {args.out} holds a run without the averages of decay {', '.join(missing)}; "
                 "they are kept only while it trains, so give another --out (or delete this one)")
    if missing:
        averages = Averages(args.decays)
        train(config, [averages])
        _, card = read_checkpoint(args.out / "model.safetensors")
        for decay, average in zip(args.decays, averages.averages):
            save_model(ema_file(args.out, decay), average.module, card)

    bf16 = resolve_precision(config.precision, torch.device("cpu"))[0] == "bf16"
    _, card = read_checkpoint(args.out / "model.safetensors")  # the averages carry the same card
    test = load_dataset(args.data, "test")
    if args.images:
        test = balanced_subset(test, args.images, 0)
    train_images = load_dataset(args.data, "train")
    bn_images = balanced_subset(train_images, min(args.bn_images, len(train_images)), args.seed)
    test_batches = eval_batches(test, card.mean, card.std, batch_size=500)
    augmented = list(BatchLoader(bn_images, config.batch_size, train=True, mean=card.mean, std=card.std,
                                 crop_padding=config.crop_padding, padding_mode=config.padding_mode,
                                 flip=config.flip, seed=args.seed))

    def accuracy(weights: nn.Module, **tta) -> float:
        folded = folded_for_evaluation(weights)
        return 100 * evaluate(folded, test_batches, card.class_names or test.classes, bf16=bf16, **tta).accuracy

    views = dict(tta_flip=config.tta_flip, tta_translate=config.tta_translate)
    print(f"{args.out}: {config.model}, recipe {config.recipe}, seed {config.seed}; test accuracy (%) on "
          f"{len(test):,} images, {'bf16' if bf16 else 'fp32'}, BN folded; BN statistics re-estimated on "
          f"{len(bn_images):,} training images", flush=True)
    print(f"  {'weights':22s} {'single view':>11s} {'recipe views':>13s}   {'single view, BN re-estimated':>28s}")
    def load(path: Path) -> nn.Module:
        return load_model(path).to(memory_format=torch.channels_last)

    live = load(args.out / "model.safetensors")
    for name, model in [("live (the run's)", live),
                        *((f"EMA decay {d:g}", load(ema_file(args.out, d))) for d in args.decays)]:
        print(f"  {name:22s} {accuracy(model):11.2f} {accuracy(model, **views):13.2f}   "
              f"{accuracy(reestimated_bn(model, augmented, bf16)):28.2f}", flush=True)
    # Which images the statistics come from matters: the network was trained on augmented batches.
    # The subsets are in class order, so they are shuffled (batches of one class would average
    # within-class variances).
    shuffled = torch.Generator().manual_seed(args.seed)

    def shuffled_batches(images: ImageDataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(images), generator=shuffled)
        return eval_batches(images.subset(order), card.mean, card.std, batch_size=config.batch_size)

    sources = {"training images with the recipe's augmentation": augmented,
               "training images as they are": shuffled_batches(bn_images),
               "test images (a reference only: it looks at the test set)": shuffled_batches(test)}
    print(f"live weights, single view, BN statistics re-estimated from {len(bn_images):,} images:")
    for source, batches in sources.items():
        print(f"  {source:58s} {accuracy(reestimated_bn(live, batches, bf16)):6.2f}", flush=True)


if __name__ == "__main__":
    try:
        main()
    except ReslabError as exc:  # a missing data folder, a run folder in the way: one line, not a traceback
        sys.exit(f"ema_decays.py: error: {exc}")
