HELP = """The degradation problem (He et al. 2015, Fig. 1 and 6): plain vs residual nets of two depths.

Trains each of --models with one recipe and budget into DIR/<model> (a finished run there is
reused, a stopped one resumed, so the command can be run again after an interruption), then
plots training error (thin, smoothed) and test error (bold) against iterations, plain nets and
residual nets in two panels as Fig. 6, and writes degradation.json: each run's final training
and test error and the verdict, whether the deepest plain net ends with a HIGHER training error
than the shallowest (degradation) and the deepest residual net with a LOWER one.

The paper recipe is 64k iterations of batch 128 per model (days on a CPU); shorten it with
--epochs / --iterations and --train-subset, e.g.
  reslab degradation --data DATA --out results/degradation --epochs 30 --train-subset 10000
"""

import argparse

from reslab.argtypes import positive_int

# Training flags shared with `reslab sdepth`, by TrainConfig field; each given one overrides the
# recipe's value. Flag names and values are `reslab train`'s, so the commands accept the same values.
TRAINING_FLAGS = (
    ("epochs", "length of each run in epochs"),
    ("iterations", "length of each run in iterations (He et al.: 64000)"),
    ("train_subset", "train on a class-balanced subset of this many images; 0 = all"),
    ("batch_size", "mini-batch size (lr scales linearly from the recipe's batch size)"),
    ("lr", "peak learning rate at the recipe's batch size"),
    ("seed", "seed of weights, data order and augmentation"),
    ("threads", "CPU threads; 0 = torch's default"),
    ("eval_interval", "evaluate every this many epochs and after the last; 0 = after the last only"),
    ("log_interval", "iterations between lines of steps.jsonl (the thin curves)"),
)


def add_training_arguments(parser: argparse.ArgumentParser, default_recipe: str) -> None:
    """--recipe, the common length/budget flags, and --set KEY=VALUE for any other training value."""
    from reslab.argtypes import key_value
    from reslab.commands.train import field_argument_type, flag_name
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH", help="data set folder with train/ and test/")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the runs, degradation.json and .png")
    parser.add_argument("--models", default="plain20,plain56,resnet20,resnet56",
                        help="comma-separated registered models: plain and residual nets, two depths or more of each")
    parser.add_argument("--smooth", type=positive_int, default=5, help="moving-average window of the training curves (points)")
    add_training_arguments(parser, default_recipe="paper")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.degradation import degradation_experiment
    from reslab.analysis.report import to_text
    from reslab.registry import model_info

    models = [name.strip() for name in args.models.split(",") if name.strip()]
    for name in models:
        model_info(name)  # an unknown name fails now, not after hours of training
    table = degradation_experiment(args.data, args.out, models, args.recipe, smooth=args.smooth, **training_overrides(args))
    print(to_text(table))
    print(table["verdict"]["text"])
    print(f"wrote {args.out}/degradation.json and {args.out}/degradation.png")
    return 0
