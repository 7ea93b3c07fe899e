HELP = """Path lengths and the gradient they carry (Veit et al. 2016, Fig. 6).

(a) The number of paths of each length k through the network's n residual blocks, C(n, k).
(b) The gradient magnitude of one path of length k, sampled as in the paper: k random blocks pass
the gradient through their branch only, the others through their shortcut only; the gradient is
that of each image's cross-entropy loss, measured (L2 norm) at the input of the first residual
block and averaged over a batch of --images test images and --samples draws per length.
(c) The total gradient per length, count x magnitude, and the shortest range of lengths carrying
--fraction of it, with the share of all paths in that range (ResNet-110 in the paper: 5-17 of 54).

Without --data the batch is random noise with random labels (said so in the table). Writes
paths.json and paths.png into --out. Cost: (n + 1) x --samples backward passes over the batch.
"""

import argparse

from reslab.argtypes import positive_int
from reslab.commands.options import add_data_arguments, add_output_arguments


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="residual network: model file or run folder")
    add_data_arguments(parser, required=False, precision=False)  # gradients are taken in float32
    parser.set_defaults(images=64)
    parser.add_argument("--samples", type=positive_int, default=10, help="random paths sampled for each length")
    parser.add_argument("--fraction", type=_fraction, default=0.9, help="share of the total gradient the reported window holds")
    add_output_arguments(parser, "paths")


def run(args: argparse.Namespace) -> int:
    import torch

    from reslab.analysis.paths import path_study, plot_paths
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.paths import require_residual_blocks
    from reslab.analysis.sources import load_models_on_images, model_record, run_record, write_run_record
    from reslab.checkpoint import load_model
    from reslab.commands.options import checkpoint_name, device_of, output_folder
    from reslab.data.progress import progress_bar

    out = output_folder(args.out, "paths", checkpoint_name(args.checkpoint), overwrite=args.overwrite)
    indices = None
    if args.data:
        indices, loaded = load_models_on_images(args, [args.checkpoint])
        model, card, batches = next(iter(loaded.values()))
        images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        source = f"{len(labels)} {args.split} images of {args.data}"
    else:
        model, card = load_model(args.checkpoint, map_location=device_of(args), with_card=True)
        generator = torch.Generator().manual_seed(args.seed)
        images = torch.randn(args.images, 3, card.input_size, card.input_size, generator=generator).to(device_of(args))
        labels = torch.randint(card.num_classes, (args.images,), generator=generator).to(images.device)
        source = f"{args.images} images of Gaussian noise with random labels (no --data given)"
    blocks = require_residual_blocks(model)
    with progress_bar(blocks + 1, f"gradients of {args.samples} paths per length", unit="length") as bar:
        result = path_study(model, images, labels, samples=args.samples, seed=args.seed, fraction=args.fraction,
                            tick=lambda: bar.update(1))
    result.update(checkpoint=str(args.checkpoint), model=card.model, images=source)
    write_json(out / "paths.json", result)
    write_run_record(out, run_record("paths", seed=args.seed, models=[model_record(args.checkpoint, model, card.model)],
                                     data=args.data or "Gaussian noise", split=args.split if args.data else None,
                                     image_indices=indices, precision="fp32"))
    plot_paths(result, out / "paths.png")
    print(to_text(result))
    window = result["total_window"]
    print(f"paths of {window['shortest']} to {window['longest']} blocks carry {100 * window['gradient_share']:.1f}% of the "
          f"gradient and are {100 * window['path_share']:.3g}% of the {result['paths']:,} paths")
    print(f"wrote {out / 'paths.json'} and {out / 'paths.png'}")
    return 0
