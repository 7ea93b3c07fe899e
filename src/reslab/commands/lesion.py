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
    from reslab.analysis.lesion import find_units, lesion_evaluations, lesion_study, plot_k_studies, plot_single_deletions
    from reslab.analysis.plots import write_json
    from reslab.analysis.report import to_text
    from reslab.analysis.sources import load_models_on_images, model_record, run_record, write_run_record
    from reslab.commands.options import checkpoint_name, output_folder, run_in_bf16
    from reslab.data.progress import progress_bar
    from reslab.models.layers import residual_blocks

    out = output_folder(args.out, "lesion", checkpoint_name(args.checkpoint), overwrite=args.overwrite)
    sources = [args.checkpoint] + ([args.plain] if args.plain else [])
    indices, loaded = load_models_on_images(args, sources)
    (model, card, batches), *others = loaded.values()
    if not residual_blocks(model):
        raise ValueError(f"{args.checkpoint} ({card.model}) has no residual blocks: the lesion study deletes the blocks "
                         "of a residual network (resnet56, ...); pass a plain net as --plain to compare")
    plain = (others[0][0], others[0][2]) if others else None
    records = [model_record(source, m, c.model) for source, (m, c, _) in zip(sources, loaded.values())]
    example = batches[0][0][:2]
    total = lesion_evaluations(find_units(model, example), args.max_k, args.draws,
                               include_downsampling=args.include_downsampling,
                               plain_units=find_units(plain[0], example) if plain else None)
    bf16 = run_in_bf16(args)
    with progress_bar(total, "lesioned networks evaluated", unit="evaluation") as bar:
        result = lesion_study(model, batches, plain=plain, max_k=args.max_k, draws=args.draws, seed=args.seed,
                              include_downsampling=args.include_downsampling, bf16=bf16, tick=lambda: bar.update(1))
    result.update(checkpoint=str(args.checkpoint), model=card.model, plain_checkpoint=args.plain, split=args.split)
    write_json(out / "lesion.json", result)
    write_run_record(out, run_record("lesion", seed=args.seed, models=records, data=args.data, split=args.split,
                                     image_indices=indices, precision="bf16" if bf16 else "fp32"))
    plot_single_deletions(result, out / "lesion_blocks.png")
    plot_k_studies(result, out / "lesion_k.png")
    print(to_text(result))
    print(f"wrote {out / 'lesion.json'}, {out / 'lesion_blocks.png'} and {out / 'lesion_k.png'}")
    return 0
