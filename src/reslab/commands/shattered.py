HELP = """Shattered gradients at initialisation (Balduzzi et al. 2017), for plain and residual nets of growing depth.

For each MODEL, the gradient of a fixed random projection of its logits along a line of inputs
x0 + t u (Gaussian images, t on --points values in [-radius, radius]), as the directional
derivative along u, and its autocorrelation against the lag, averaged over --lines lines (the
same lines and projection for every model). A MODEL that is a registered name (resnet56,
plain56...) is built at initialisation from --seed; a model file or run folder is taken with
its weights. BN uses the statistics of the line's points (--bn batch, as at the start of
training and as the paper's theorem), or its running statistics (--bn running). Claim: plain
nets' gradients become white noise with depth (lag-1 autocorrelation near 0); residual nets'
stay correlated.

Writes shattered.json (+ shattered_run.json: command, hashes, seed) and shattered.png into
--out. Cost: --lines forward and backward passes of --points images per model.
"""

import argparse

from reslab.argtypes import nonnegative_int, positive_float, positive_int, random_seed

DEFAULT_MODELS = ("plain20", "plain56", "plain110", "resnet20", "resnet56", "resnet110")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from reslab.analysis.shattered import BN_MODES
    from reslab.commands.options import add_output_arguments

    parser.add_argument("models", nargs="*", metavar="MODEL", default=list(DEFAULT_MODELS),
                        help=f"model names (at initialisation), model files or run folders (default: {' '.join(DEFAULT_MODELS)})")
    parser.add_argument("--points", type=positive_int, default=256, help="inputs along each line")
    parser.add_argument("--radius", type=positive_float, default=0.1, help="t runs from -RADIUS to RADIUS")
    parser.add_argument("--lines", type=positive_int, default=2, help="random lines to average the autocorrelation over")
    parser.add_argument("--max-lag", type=nonnegative_int, default=20, help="largest lag of the autocorrelation")
    parser.add_argument("--bn", choices=BN_MODES, default="batch", help="BN statistics: of the line's points, or running")
    parser.add_argument("--seed", type=random_seed, default=0, help="seed of the initial weights, lines and projection")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    add_output_arguments(parser, "shattered")


def load_at_init_or_trained(source: str, seed: int, device: str):
    """(model, registry name, input size, number of classes, at initialisation?) for a registered
    name (built from ``seed``) or a checkpoint (its weights)."""
    from pathlib import Path

    import torch

    from reslab.checkpoint import load_model
    from reslab.registry import create_model, model_info

    if not Path(source).exists():
        try:
            info = model_info(source)
        except ValueError:
            info = None
        if info is not None:
            torch.manual_seed(seed)
            model = create_model(info.name).to(device).eval()
            with torch.no_grad():
                classes = model(torch.zeros(1, 3, info.input_size, info.input_size, device=device)).shape[1]
            return model, info.name, info.input_size, classes, True
    model, card = load_model(source, map_location=device, with_card=True)
    return model, card.model, card.input_size, card.num_classes, False


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.shattered import plot_shattered, shattered_study
    from reslab.analysis.sources import model_record, run_record, write_run_record
    from reslab.commands.options import device_of, names_of, output_folder
    from reslab.data.progress import progress_bar

    if args.max_lag >= args.points:
        raise ValueError(f"--max-lag {args.max_lag} must be below --points {args.points}")
    out = output_folder(args.out, "shattered", names_of(args.models), overwrite=args.overwrite)
    device = device_of(args)
    models, records, shapes = {}, [], set()
    for source in args.models:
        model, name, size, classes, at_init = load_at_init_or_trained(source, args.seed, device)
        label = name if name not in models else f"{name} ({source})"
        models[label] = model
        records.append(model_record(source, model, name, at_init=at_init))
        shapes.add((size, classes))
    if len(shapes) > 1:
        raise ValueError(f"the models take different input sizes or class counts {sorted(shapes)}; compare models of one data set")
    size, classes = shapes.pop()
    with progress_bar(len(models), "gradients along lines", unit="model") as bar:
        result = shattered_study(models, (3, size, size), classes, points=args.points, radius=args.radius,
                                 lines=args.lines, max_lag=args.max_lag, seed=args.seed, bn=args.bn, device=device,
                                 tick=lambda: bar.update(1))
    result["sources"] = list(args.models)
    write_json(out / "shattered.json", result)
    write_run_record(out, run_record("shattered", seed=args.seed, models=records, precision="fp32"))
    plot_shattered(result, out / "shattered.png")
    print(to_text({"models": [{k: e[k] for k in ("label", "blocks", "lag1_autocorrelation")} for e in result["models"]],
                   "claims": result["claims"]}))
    print(f"wrote {out / 'shattered.json'} and {out / 'shattered.png'}")
    return 0
