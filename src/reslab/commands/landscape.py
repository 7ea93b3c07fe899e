HELP = """Loss landscape along filter-normalised random directions (Li et al. 2018).

For each CHECKPOINT (a model file, run folder, or model name with trained weights, e.g.
resnet56 and plain56 for the paper's Fig. 5), the loss and accuracy on a fixed class-balanced
subset of training images at theta + a d (--dims 1) or theta + a d + b e (--dims 2) for a, b on
--points evenly spaced values in [-span, span]: d, e Gaussian, filter-normalised, zero on BN
and biases; the same directions' seed for every model. Eval mode with the BN running
statistics, BN folded once, under --precision (auto: bf16 where the CPU has it). The centre
point is timed first and an estimate of the whole grid printed. --interpolate B adds the linear
interpolation (1 - t) theta + t theta_B, t from -0.5 to 1.5, between the first CHECKPOINT and B.
--beside DIR puts the models of an earlier run in DIR (same grid, seed, precision and images)
beside the new ones in the table, claims and figures, without recomputing them: e.g. plain56
beside a finished resnet56 run.

Writes landscape.json (+ landscape_run.json: command, hashes, image indices, seed),
landscape_1d.png and, for --dims 2, landscape_contour.png and landscape_surface.png into --out.
Cost: points^dims forward passes over --images images per model; a 21 x 21 grid on 500 images
of ResNet-56 is about 220,000 image evaluations.
"""

import argparse

from reslab.argtypes import positive_float, positive_int
from reslab.commands.options import add_data_arguments, add_output_arguments


def _odd_points(text: str) -> int:
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd, so that the grid holds the weights themselves, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="model files, run folders or model names with trained weights")
    add_data_arguments(parser)
    parser.set_defaults(split="train", images=500)
    parser.add_argument("--dims", type=int, choices=(1, 2), default=2, help="1-D curve or 2-D surface")
    parser.add_argument("--points", type=_odd_points, default=21, help="grid points per direction (odd)")
    parser.add_argument("--span", type=positive_float, default=1.0, help="coefficients run from -SPAN to SPAN")
    parser.add_argument("--beside", metavar="DIR",
                        help="an earlier `reslab landscape` output folder whose models join these (same grid and images)")
    parser.add_argument("--interpolate", metavar="CHECKPOINT",
                        help="also interpolate linearly from the first CHECKPOINT to this one (same architecture)")
    add_output_arguments(parser, "landscape")


def read_earlier(folder: str) -> tuple[dict, dict]:
    """landscape.json and landscape_run.json of an earlier run, or a one-line error."""
    import json
    from pathlib import Path

    table, record = Path(folder) / "landscape.json", Path(folder) / "landscape_run.json"
    if not (table.is_file() and record.is_file()):
        raise ValueError(f"--beside {folder}: no landscape.json and landscape_run.json there; give the --out of an "
                         "earlier `reslab landscape` run")
    return json.loads(table.read_text()), json.loads(record.read_text())


def check_earlier(earlier: tuple[dict, dict], folder: str, settings: dict, indices: list) -> None:
    """Before any work: the earlier run must share the grid, seed, precision and images."""
    table, record = earlier
    for key, value in settings.items():
        if table.get(key) != value:
            raise ValueError(f"--beside {folder}: its {key} is {table.get(key)!r}, this run's {value!r}; "
                             "rerun with the same grid, seed and precision")
    if record.get("image_indices") != [int(i) for i in indices]:
        raise ValueError(f"--beside {folder}: it was evaluated on other images; use the same --data, --split, "
                         "--images and --seed")


def join_earlier(result: dict, records: list, earlier: tuple[dict, dict], folder: str) -> tuple[dict, list]:
    """The earlier run's models first, then the new ones, with the claims recomputed over all."""
    from reslab.analysis.landscape import landscape_claims

    table, record = earlier
    labels = {e["label"] for e in result["models"]}
    models = [e for e in table["models"] if e["label"] not in labels] + result["models"]
    joined = {**result, "models": models, "claims": landscape_claims(models),
              "checkpoints": [*table.get("checkpoints", []), *result["checkpoints"]], "beside": str(folder)}
    return joined, [*record["models"], *records]


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.landscape import interpolation, landscape_study, plot_1d, plot_contours, plot_surfaces
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.sources import load_models_on_images, model_record, run_record, write_run_record
    from reslab.commands.options import names_of, output_folder, run_in_bf16
    from reslab.data.progress import progress_bar

    earlier = read_earlier(args.beside) if args.beside else None
    out = output_folder(args.out, "landscape", names_of(args.checkpoints), overwrite=args.overwrite)
    indices, loaded = load_models_on_images(args, [*args.checkpoints, *([args.interpolate] if args.interpolate else [])])
    bf16 = run_in_bf16(args)
    if earlier is not None:
        check_earlier(earlier, args.beside, {"dims": args.dims, "points": args.points, "span": args.span,
                                             "seed": args.seed, "precision": "bf16" if bf16 else "fp32"}, indices)
    records = [model_record(source, model, card.model) for source, (model, card, _) in
               zip([*args.checkpoints, *([args.interpolate] if args.interpolate else [])], loaded.values())]
    labelled = list(loaded.items())
    partner = labelled.pop() if args.interpolate else None
    models = {label: (model, batches) for label, (model, _, batches) in labelled}
    total = args.points ** args.dims

    with progress_bar(total * len(models), "landscape", unit="point") as bar:
        def progress(label: str, done: int, points: int, seconds_per_point: float) -> None:
            if done == 1:  # the centre, timed: the estimate for the rest
                print(f"{label}: one grid point takes about {seconds_per_point:.2f} s on {len(indices)} images; "
                      f"{points} points: about {points * seconds_per_point / 60:.1f} min", flush=True)
            bar.update(1)

        result = landscape_study(models, dims=args.dims, points=args.points, span=args.span, seed=args.seed,
                                 bf16=bf16, progress=progress)
    if partner is not None:
        first_label, (first_model, _, batches) = labelled[0]
        partner_label, (partner_model, _, _) = partner
        ts = [-0.5 + 2.0 * i / (args.points - 1) for i in range(args.points)] if args.points > 1 else [0.0]
        with progress_bar(len(ts), f"interpolation {first_label} -> {partner_label}", unit="point") as bar:
            rows = interpolation(first_model, partner_model, batches, ts, bf16=bf16, progress=lambda *_: bar.update(1))
        result["interpolations"] = [{"label": f"{first_label} -> {partner_label}", "rows": rows}]
    result["checkpoints"] = list(args.checkpoints)
    if earlier is not None:
        result, records = join_earlier(result, records, earlier, args.beside)
    write_json(out / "landscape.json", result)
    write_run_record(out, run_record("landscape", seed=args.seed, models=records, data=args.data, split=args.split,
                                     image_indices=indices, precision="bf16" if bf16 else "fp32"))
    figures = [out / "landscape_1d.png"]
    plot_1d(result, figures[0])
    if args.dims == 2:
        figures += [out / "landscape_contour.png", out / "landscape_surface.png"]
        plot_contours(result, figures[1])
        plot_surfaces(result, figures[2])
    print(to_text({"claims": result["claims"]}))
    print(f"wrote {out / 'landscape.json'}, {', '.join(str(f) for f in figures)}")
    return 0

