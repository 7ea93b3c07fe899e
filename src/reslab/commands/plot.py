HELP = """Plot the training and test error of one or several runs against iterations.

Thin lines are the training error (from each run's steps.jsonl, smoothed by --smooth points),
bold lines the test error (metrics.jsonl), one colour per run, as He et al. 2015, Fig. 6.
Runs are named by their folder name.
"""

import argparse

from reslab.argtypes import positive_int
from reslab.commands.options import add_output_arguments

FILE = "error_curves.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `reslab train`")
    parser.add_argument("--smooth", type=positive_int, default=5, help="moving-average window of the training error (points)")
    parser.add_argument("--title", default="", help="title of the plot")
    add_output_arguments(parser, "plot", file=FILE)


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.plots import figure, plot_error_curves, read_run, save_figure
    from reslab.commands.options import names_of, output_file, output_folder

    if args.out:
        out = output_file(args.out, overwrite=args.overwrite)
    else:
        out = output_folder(None, "plot", names_of(args.runs), overwrite=args.overwrite) / FILE
    runs = [read_run(path) for path in args.runs]
    fig, ax = figure()
    plot_error_curves(ax, runs, smooth=args.smooth)
    if args.title:
        ax.set_title(args.title)
    print(f"wrote {save_figure(fig, out)}")
    return 0
