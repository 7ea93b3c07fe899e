HELP = """Train a model of the zoo on CIFAR-10 (or any class-folder data set) with a named recipe.

Recipes (`--list-recipes` prints their values): paper (He et al. 2015: 64k iterations, batch 128,
lr 0.1 /10 at 32k and 48k), preact (He et al. 2016), wrn (Zagoruyko & Komodakis 2016), resnext
(Xie et al. 2017), stochastic-depth (Huang et al. 2016), fast (ours: 25 epochs, the first
13 on 24x24 crops, batch 128, warm-up then linear decay, for the paper's ResNet-20 accuracy in
the least CPU time; the default) and zoo (fast for 50 epochs, evaluated every epoch: the
shipped weights), finetune (from --init weights: lr 0.01, 10 epochs of cosine, label smoothing;
docs/finetune.md) and imagenet (He et al. 2015 / torchvision: batch 256, lr 0.1 /10 at epochs 30,
60, 80 of 90, scaled linearly for other global batches, warm-up above 1024; docs/distributed.md).
Every recipe value has a flag that overrides it (grouped below: data, model,
optimisation, evaluation, runtime); milestones and warm-up are fractions of the run. Epochs are
evaluated single view; the last also with the recipe's test-time views (docs/training.md:
the loop, extensions, evaluation and resume).
The run folder gets config.json, metrics.jsonl (per epoch), steps.jsonl (per --log-interval
iterations), checkpoint.pt, model.safetensors (latest) and best.safetensors.

  reslab train resnet20 --data ../shared/datasets/cifar10 --out runs/r20
  reslab train resnet110 --recipe paper --val 5000 --data DATA --out runs/r110
  reslab train resnet56 --seeds 0,1,2 --data DATA --out runs/r56      # DIR/summary.json: mean +- std
  reslab train resnet18 --recipe finetune --init resnet18.pth --data PHOTOS --out runs/ft   # torchvision/timm/reslab weights
  reslab train resnet20 --recipe finetune --init resnet20 --freeze-backbone --data DATA --out runs/probe
  torchrun --nproc-per-node 2 -m reslab train resnet20 --data DATA --out runs/ddp
  torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 \\
      -m reslab train resnet50 --recipe imagenet --batch-size 1024 --data IMAGENET --out runs/r50

Ctrl-C or SIGTERM finishes the current step, saves a checkpoint and exits (status 130 / 143);
`reslab train --resume DIR` continues the run exactly where it stopped, in DIR (wherever it was
moved or copied; --data may say where its data set is now).
"""

import argparse
import sys
from dataclasses import fields, replace
from typing import Any, Optional

from reslab.argtypes import int_list, key_value
from reslab.commands.options import flag_name, parser_for_field

# Flags that may change on --resume: how the run is shown and how fast it runs, not what it
# computes; and where its data set is now (the trainer checks that it has the run's classes).
RESUME_FLAGS = ("threads", "progress", "tensorboard", "log_interval", "data", "cache_dir")
# Config fields with their own arguments (or none).
SPECIAL_FIELDS = ("model", "recipe", "model_args")
REQUIRED_FIELDS = ("data", "out")  # no recipe has a value for them; only --resume does without


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reslab.train.config import CONFIG_GROUPS, RECIPES, TrainConfig, field_types

    parser.add_argument("model", nargs="?", metavar="MODEL", help="registered model name (`reslab models`)")
    parser.add_argument("--recipe", choices=list(RECIPES), help="named recipe to start from (default: fast)")
    parser.add_argument("--model-arg", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                        help="a create_model override, e.g. shortcut=B or zero_init_residual=True (repeatable)")
    parser.add_argument("--seeds", type=int_list, metavar="0,1,2",
                        help="train once per seed into DIR/seed<k>/ and write DIR/summary.json")
    parser.add_argument("--resume", metavar="DIR", help="continue the stopped run in DIR (only "
                        + ", ".join(flag_name(f) for f in RESUME_FLAGS) + " may be given with it)")
    parser.add_argument("--list-recipes", action="store_true", help="print the recipes' values and exit")
    parser.set_defaults(usage_error=parser.error)  # run() reports misused flags as argparse does: exit status 2
    fast = TrainConfig.from_recipe("fast")
    types = field_types()
    groups = {name: parser.add_argument_group(f"{name} values", "each overrides the recipe's value (shown for fast)")
              for name in CONFIG_GROUPS}
    group_of = {field: name for name, members in CONFIG_GROUPS.items() for field in members}
    for f in fields(TrainConfig):
        if f.name in SPECIAL_FIELDS:
            continue
        group = groups[group_of[f.name]]
        flag = flag_name(f.name)
        text = f"{f.metadata['help']} " + ("(required, unless --resume)" if f.name in REQUIRED_FIELDS
                                           else f"[fast: {getattr(fast, f.name)}]")
        kind = types[f.name]
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text)
        else:
            group.add_argument(flag, type=parser_for_field(f.name, kind), choices=f.metadata.get("choices"),
                               default=argparse.SUPPRESS, help=text, metavar=_metavar(f.name, kind, f.metadata))
    _add_retired_flags(parser)


def _add_retired_flags(parser: argparse.ArgumentParser) -> None:
    """Flags of earlier releases whose fields were retired: each is a usage error that names
    what replaced it (hidden from --help)."""
    from reslab.train.config import RETIRED_FIELDS, retired_field_message

    class Retired(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string}: " + retired_field_message(self.dest, values))

    for name, (default, _) in RETIRED_FIELDS.items():
        flags = [flag_name(name)] + ([f"--no-{name.replace('_', '-')}"] if isinstance(default, bool) else [])
        parser.add_argument(*flags, dest=name, action=Retired, nargs=0 if isinstance(default, bool) else None,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reslab.train import TrainConfig, TrainingInterrupted, train, train_seeds
    from reslab.train.config import describe_recipes
    from reslab.train.seeds import SEEDS_FILE, read_seeds
    from reslab.train.state import read_config

    if args.list_recipes:
        print(describe_recipes())
        return 0
    names = {f.name for f in fields(TrainConfig)} - set(SPECIAL_FIELDS)
    given = {k: v for k, v in vars(args).items() if k in names}
    try:
        if args.resume:
            extra = sorted(set(given) - set(RESUME_FLAGS))
            if args.model or args.model_arg or args.seeds or args.recipe or extra:
                flags = (["MODEL"] if args.model else []) + [flag_name(k) for k in extra]
                args.usage_error(f"--resume continues the run as it was configured in {args.resume}/config.json; "
                                 f"leave out {', '.join(flags) or '--model-arg/--seeds/--recipe'} (allowed with --resume: "
                                 + ", ".join(flag_name(f) for f in RESUME_FLAGS) + ")")
            out = Path(args.resume)  # the run continues here, wherever it was started (read_config sets out)
            if (out / SEEDS_FILE).exists():
                config, seeds = read_seeds(out)
                return _report(train_seeds(replace(config, **given), seeds, resume=True))
            return _report(train(replace(read_config(out), **given), resume=True))
        if not args.model:
            args.usage_error("give the MODEL to train (e.g. resnet20; `reslab models` lists them), or --resume DIR")
        for required in REQUIRED_FIELDS:
            if required not in given:
                args.usage_error(f"--{required} is required")
        config = TrainConfig.from_recipe(args.recipe or "fast", model=args.model, model_args=dict(args.model_arg), **given)
        if args.seeds:
            return _report(train_seeds(config, args.seeds))
        return _report(train(config))
    except TrainingInterrupted as stopped:
        print(f"reslab train: {stopped}", file=sys.stderr)
        return stopped.exit_status


def _report(result: dict[str, Any]) -> int:
    from reslab.train.distributed import detect

    if not detect().is_main:
        return 0
    if "test_errors" in result:  # several seeds
        print(f"final test error over seeds {result['seeds']}: {100 * result['test_error_mean']:.2f}% "
              f"+- {100 * result['test_error_std']:.2f}% (mean +- std)")
    elif result:
        best = result.get("best", {})
        note = (f"; best val error {100 * best['val_error']:.2f}% at epoch {best['epoch'] + 1} "
                f"(test error there {100 * best['test_error']:.2f}%)" if "val_error" in best else "")
        views = (f"; with the test-time {result['views']}: {100 * result['test_accuracy_views']:.2f}%"
                 if "test_accuracy_views" in result else "")
        print(f"final test accuracy {100 * result['test_accuracy']:.2f}% single view (error {100 * result['test_error']:.2f}%)"
              f"{views}, after {result['iteration']} iterations{note}")
    return 0


def _metavar(name: str, kind: Any, metadata: Any) -> Optional[str]:
    if "choices" in metadata:
        return None
    if name in ("data", "out", "cache_dir"):
        return "PATH"
    if name == "init":
        return "SOURCE"
    text = str(kind)
    return "A,B" if "tuple" in text else "N" if "int" in text else "X" if "float" in text else "TEXT"
