HELP = """Curvature of the loss: top Hessian eigenvalues and the Hessian's trace (as PyHessian, Yao et al. 2020).

For each CHECKPOINT (a model file, run folder, or model name with trained weights), on one fixed
batch of --images class-balanced training images: the --top-k largest eigenvalues of the
Hessian of the mean cross-entropy by power iteration with deflation, and its trace by
Hutchinson's method with --trace-samples Rademacher vectors (with the standard error), from
Hessian-vector products by torch.autograd (hessian-eigenthings' algorithms). Float32, eval
mode (BN running statistics). Plain and residual nets of the same depth: the residual net's
minimum is flatter (smaller eigenvalue and trace).

Writes curvature.json (+ curvature_run.json: command, hashes, image indices, seed) and
curvature.png into --out. Cost: up to top_k x --iterations + --trace-samples Hessian-vector
products per model, each a double backward pass over the batch (about six gradients' cost on
CPUs): the time grows with --images.
"""

import argparse

from reslab.argtypes import positive_float, positive_int
from reslab.commands.options import add_data_arguments, add_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="model files, run folders or model names with trained weights")
    add_data_arguments(parser, precision=False)  # second derivatives are taken in float32
    parser.set_defaults(split="train", images=100)
    parser.add_argument("--top-k", type=positive_int, default=1, help="how many of the largest eigenvalues")
    parser.add_argument("--iterations", type=positive_int, default=100, help="most power iterations per eigenvalue")
    parser.add_argument("--tolerance", type=positive_float, default=1e-3,
                        help="power iteration stops when the eigenvalue's relative change is below this")
    parser.add_argument("--trace-samples", type=positive_int, default=30, help="Rademacher vectors for the trace")
    add_output_arguments(parser, "curvature")


def run(args: argparse.Namespace) -> int:
    import torch

    from reslab.analysis.curvature import curvature_study, plot_curvature
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.sources import load_models_on_images, model_record, run_record, write_run_record
    from reslab.commands.options import names_of, output_folder
    from reslab.data.progress import progress_bar

    out = output_folder(args.out, "curvature", names_of(args.checkpoints), overwrite=args.overwrite)
    indices, loaded = load_models_on_images(args, args.checkpoints)
    records = [model_record(source, model, card.model) for source, (model, card, _) in zip(args.checkpoints, loaded.values())]
    models = {label: (model, (torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])))
              for label, (model, _, batches) in loaded.items()}
    most = len(models) * (args.top_k * args.iterations + args.trace_samples)
    with progress_bar(most, "Hessian-vector products (at most)", unit="product") as bar:
        result = curvature_study(models, top_k=args.top_k, power_iterations=args.iterations, tolerance=args.tolerance,
                                 trace_samples=args.trace_samples, seed=args.seed, tick=lambda: bar.update(1))
    result["checkpoints"] = list(args.checkpoints)
    write_json(out / "curvature.json", result)
    write_run_record(out, run_record("curvature", seed=args.seed, models=records, data=args.data, split=args.split,
                                     image_indices=indices, precision="fp32"))
    plot_curvature(result, out / "curvature.png")
    print(to_text({"models": [{k: e[k] for k in ("label", "top_eigenvalues", "trace", "trace_stderr", "loss")}
                              for e in result["models"]], "claims": result["claims"]}))
    print(f"wrote {out / 'curvature.json'} and {out / 'curvature.png'}")
    return 0
