HELP = """The degradation problem (He et al. 2015, Fig. 1 and 6): plain vs residual nets of two depths.

Trains each of --models with one recipe and budget into DIR/<model> (a finished run there is
reused, a stopped one resumed, so the command can be run again after an interruption), then
plots training error (thin, smoothed) and test error (bold) against iterations, plain nets and
residual nets in two panels as Fig. 6, and writes degradation.json: each run's final training
and test error and the verdict, whether the deepest plain net ends with a HIGHER training error
than the shallowest (degradation) and the deepest residual net with a LOWER one.

With --runs, no training: the figure and table come from finished run folders (each with its
config.json and metrics.jsonl, e.g. the zoo's runs, which evaluate the test set every epoch):
  reslab degradation --runs experiments/cifar-zoo/plain20_seed0 experiments/cifar-zoo/resnet20_seed0 ...

The paper recipe is 64k iterations of batch 128 per model (days on a CPU); shorten it with
--epochs / --iterations and --train-subset (and evaluate on fewer test images with --eval-subset), e.g.
  reslab degradation --data DATA --epochs 30 --train-subset 10000 --eval-subset 2000
"""

import argparse

from reslab.argtypes import positive_int
from reslab.commands.options import add_output_arguments, add_training_arguments

RESULT_FILES = ("degradation.json", "degradation.png", "degradation_run.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="data set folder with train/ and test/ (needed unless --runs)")
    parser.add_argument("--runs", nargs="+", metavar="RUN_DIR",
                        help="plot and judge these finished run folders instead of training (--models is then ignored)")
    parser.add_argument("--models", default="plain20,plain56,resnet20,resnet56",
                        help="comma-separated registered models: plain and residual nets, two depths or more of each")
    parser.add_argument("--smooth", type=positive_int, default=5, help="moving-average window of the training curves (points)")
    add_training_arguments(parser, default_recipe="paper")
    add_output_arguments(parser, "degradation", default="runs/degradation/RECIPE, or a fresh RECIPE-2... if it "
                         "holds other files; a folder holding this command's runs continues them")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.degradation import degradation_experiment
    from reslab.analysis.report import to_text
    from reslab.commands.options import output_folder, training_overrides
    from reslab.registry import model_info

    if args.runs:
        from reslab.analysis.degradation import degradation_of_runs
        from reslab.commands.options import names_of

        out = output_folder(args.out, "degradation", names_of(args.runs), overwrite=args.overwrite)
        table = degradation_of_runs(args.runs, out, smooth=args.smooth)
        _write_record(out, args, [{"run": str(r), **_metrics_hash(r)} for r in args.runs])
        print(to_text({"claims": table["claims"]}))
        print(table["verdict"]["text"])
        print(f"wrote {out / 'degradation.json'} and {out / 'degradation.png'}")
        return 0
    if not args.data:
        raise ValueError("give --data (to train the models) or --runs (finished run folders to plot)")
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    for name in models:
        model_info(name)  # an unknown name fails now, not after hours of training
    out = output_folder(args.out, "degradation", args.recipe, overwrite=args.overwrite, continues=(*models, *RESULT_FILES))
    table = degradation_experiment(args.data, out, models, args.recipe, smooth=args.smooth, **training_overrides(args))
    _write_record(out, args, [{"run": str(out / m), **_metrics_hash(out / m)} for m in models])
    print(to_text(table))
    print(table["verdict"]["text"])
    print(f"wrote {out / 'degradation.json'} and {out / 'degradation.png'}")
    return 0


def _metrics_hash(run_dir) -> dict:
    from pathlib import Path

    from reslab.pretrained import sha256_of

    return {"metrics_sha256": sha256_of(Path(run_dir) / "metrics.jsonl")}


def _write_record(out, args: argparse.Namespace, runs: list) -> None:
    from reslab.analysis.sources import run_record, write_run_record

    write_run_record(out, run_record("degradation", seed=getattr(args, "seed", 0) or 0, models=runs, data=args.data))
