HELP = """Stochastic depth (Huang et al. 2016, Fig. 8): gradients, expected depth and training time.

Trains MODEL twice with one recipe and budget: with constant depth into DIR/constant and with
stochastic depth (survival falling linearly to --p-last, one drop decision per mini-batch) into
DIR/stochastic; finished runs are reused and stopped ones resumed. Every epoch logs the mean
absolute gradient of the first residual block's first convolution and the mean number of blocks
computed per training step. Writes sdepth.png (gradient and test error per epoch, learning-rate
drops dotted) and sdepth.json: expected depth, (3L - 1)/4 and sum of p_l, against the measured
mean active depth, and the training seconds per epoch with and without (time saved in %).

The stochastic-depth recipe is 500 epochs; shorten it (--eval-subset evaluates on fewer test images), e.g.
  reslab sdepth --data DATA --model resnet56 --epochs 20 --train-subset 10000 --eval-subset 2000
"""

import argparse

from reslab.argtypes import survival_probability
from reslab.commands.options import add_output_arguments, add_training_arguments

RESULT_FILES = ("sdepth.json", "sdepth.png", "sdepth_run.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="PATH", help="data set folder with train/ and test/")
    parser.add_argument("--model", default="resnet56", help="registered residual model")
    parser.add_argument("--p-last", type=survival_probability, default=0.5, help="survival probability p_L of the last block")
    add_training_arguments(parser, default_recipe="stochastic-depth")
    add_output_arguments(parser, "sdepth", default="runs/sdepth/MODEL, or a fresh MODEL-2... if it holds other "
                         "files; a folder holding this command's two runs continues them")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.report import to_text
    from reslab.analysis.sdepth import RUNS, sdepth_experiment
    from reslab.analysis.sources import run_record, write_run_record
    from reslab.pretrained import sha256_of
    from reslab.commands.options import output_folder, training_overrides

    from reslab.models.layers import residual_blocks
    from reslab.registry import create_model

    if not residual_blocks(create_model(args.model)):  # fail now, not after the first run has started
        raise ValueError(f"{args.model} has no residual blocks: stochastic depth drops residual branches, so it applies "
                         "to residual networks (resnet56, resnet110, preact_resnet110, ...)")
    out = output_folder(args.out, "sdepth", args.model, overwrite=args.overwrite, continues=(*RUNS, *RESULT_FILES))
    overrides = training_overrides(args)
    result = sdepth_experiment(args.data, out, args.model, args.recipe, args.p_last, **overrides)
    write_run_record(out, run_record("sdepth", seed=overrides.get("seed", 0), models=[
        {"run": str(out / name), "model": args.model, "metrics_sha256": sha256_of(out / name / "metrics.jsonl")}
        for name in RUNS], data=args.data))
    print(to_text({k: v for k, v in result.items() if k != "epochs"}))
    depth, time = result["depth"], result["time"]
    print(f"expected depth {depth['sum_survival']:.2f} of {depth['blocks']} blocks ((3L-1)/4 = {depth['paper_formula']:.2f}), "
          f"measured {depth['measured_active_blocks']:.2f}; time per epoch {time['constant_epoch_seconds']:.1f} s -> "
          f"{time['stochastic_epoch_seconds']:.1f} s ({time['time_saved_pct']:.1f}% saved)")
    print(f"wrote {out / 'sdepth.json'} and {out / 'sdepth.png'}")
    return 0
