HELP = """Evaluate a checkpoint on a data set: accuracy, per-class accuracy and the confusion matrix.

CHECKPOINT is a model file or a run folder written by `reslab train`; images are normalised with
the mean and std recorded in it. BN layers are folded into the convolutions before them (the
same logits to rounding, faster), as in the evaluations of `reslab train`. Prints the tables
and writes eval.json and confusion.png (a heatmap of the confusion matrix) into --out.

"""

import argparse

from reslab.argtypes import nonnegative_int
from reslab.commands.options import add_data_arguments, add_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="model file or run folder")
    add_data_arguments(parser)
    parser.add_argument("--views", choices=("single", "run"), default="single",
                        help="single: one view per image (plus any --tta-* given); run: the test-time views the "
                             "run was evaluated with in training, as recorded in the checkpoint")
    parser.add_argument("--tta-flip", action="store_true", help="average the logits of each image and its mirror image")
    parser.add_argument("--tta-translate", type=nonnegative_int, default=0, metavar="PIXELS",
                        help="also average views shifted this many pixels up-left and down-right (half the weight)")
    add_output_arguments(parser, "eval")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.evaluate import evaluate, plot_confusion
    from reslab.analysis.plots import write_json
    from reslab.commands.options import checkpoint_name, load_checkpoint_batches, load_images, output_folder, run_in_bf16
    from reslab.inference.fold import folded_for_evaluation
    from reslab.inference.views import check_tta_translate, views_label

    out = output_folder(args.out, "eval", checkpoint_name(args.checkpoint), overwrite=args.overwrite)
    if args.views == "run" and (args.tta_flip or args.tta_translate):
        raise ValueError("--views run takes the run's own views; leave out --tta-flip/--tta-translate, or use --views single")
    dataset = load_images(args)
    check_tta_translate(args.tta_translate, dataset.image_size)
    model, card, classes, batches = load_checkpoint_batches(args.checkpoint, dataset, args)
    run_flip, run_translate = bool(card.config.get("tta_flip", False)), int(card.config.get("tta_translate", 0) or 0)
    flip, translate = (run_flip, run_translate) if args.views == "run" else (args.tta_flip, args.tta_translate)
    if args.views == "run":
        check_tta_translate(translate, dataset.image_size)
    bf16 = run_in_bf16(args)
    result = evaluate(folded_for_evaluation(model), batches, classes, bf16=bf16, tta_flip=flip, tta_translate=translate)
    views = views_label(flip, translate)
    if (run_flip or run_translate) and (flip, translate) != (run_flip, run_translate):
        print(f"note: training evaluated this run with test-time {views_label(run_flip, run_translate)}; "
              "`--views run` evaluates with them")
    print(f"{card.model} on {args.data} ({args.split}, {views}): " + result.format())
    write_json(out / "eval.json", {"experiment": "eval", "title": f"Evaluation of {card.model} ({args.split} split, {views})",
                                   "checkpoint": str(args.checkpoint), "model": card.model, "data": str(args.data),
                                   "split": args.split, "precision": "bf16" if bf16 else "fp32", "views": views,
                                   "tta_flip": flip, "tta_translate": translate, **result.to_dict()})
    plot_confusion(result, out / "confusion.png", title=f"{card.model}: accuracy {100 * result.accuracy:.2f}% "
                                                         f"on {result.num_images:,} {args.split} image{'' if result.num_images == 1 else 's'}, {views}")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return 0
