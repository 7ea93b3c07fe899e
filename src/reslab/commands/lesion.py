HELP = """Lesion study (Veit et al. 2016, Fig. 3 and 5): delete and reorder blocks at test time.

(a) Each residual block deleted alone (its branch removed, so it passes its input through its
shortcut; a downsampling block keeps its projection or zero-padding shortcut): test error per
block, downsampling blocks marked. (b) k random blocks deleted, k = 1..--max-k, --draws draws
each: error vs k. (c) k random pairs of blocks with identical input and output shapes swapped:
error vs k. (d) With --plain, each block of a plain network trained the same way deleted alone
(a plain block that keeps the shape becomes the identity; one that changes it cannot be deleted).

Writes lesion.json, lesion_blocks.png (a, d) and lesion_k.png (b, c) into --out. The models are
restored after every lesion. Each lesion is one pass over the test images, so --images 2000
makes the study about five times faster than the whole CIFAR-10 test set.
"""

import argparse

from reslab.argtypes import positive_int
from reslab.commands.options import add_data_arguments, add_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="residual network: model file or run folder")
    add_data_arguments(parser)
    parser.add_argument("--plain", metavar="CHECKPOINT", help="a plain network trained the same way, for comparison")
    parser.add_argument("--max-k", type=positive_int, default=10, help="delete / reorder up to this many blocks")
    parser.add_argument("--draws", type=positive_int, default=5, help="random draws for each k")
    parser.add_argument("--include-downsampling", action="store_true",
                        help="let (b) delete downsampling blocks too (by default only blocks that keep the shape)")
    add_output_arguments(parser, "lesion")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.lesion import lesion_study, plot_k_studies, plot_single_deletions
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.commands.options import checkpoint_name, load_checkpoint_batches, load_images, output_folder, run_in_bf16

    out = output_folder(args.out, "lesion", checkpoint_name(args.checkpoint), overwrite=args.overwrite)
    dataset = load_images(args)
    model, card, _, batches = load_checkpoint_batches(args.checkpoint, dataset, args)
    plain = None
    if args.plain:
        plain_model, _, _, plain_batches = load_checkpoint_batches(args.plain, dataset, args)
        plain = (plain_model, plain_batches)
    result = lesion_study(model, batches, plain=plain, max_k=args.max_k, draws=args.draws, seed=args.seed,
                          include_downsampling=args.include_downsampling, bf16=run_in_bf16(args))
    result.update(checkpoint=str(args.checkpoint), model=card.model, plain_checkpoint=args.plain, split=args.split)
    write_json(out / "lesion.json", result)
    plot_single_deletions(result, out / "lesion_blocks.png")
    plot_k_studies(result, out / "lesion_k.png")
    print(to_text(result))
    print(f"wrote {out / 'lesion.json'}, {out / 'lesion_blocks.png'} and {out / 'lesion_k.png'}")
    return 0
