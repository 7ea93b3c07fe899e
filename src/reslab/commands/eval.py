HELP = """Evaluate a checkpoint on a data set: accuracy, per-class accuracy and the confusion matrix.

CHECKPOINT is a model file or a run folder written by `reslab train`; images are normalised with
the mean and std recorded in it. BN layers are folded into the convolutions before them (the
same logits to rounding, faster), as in the evaluations of `reslab train`. Prints the tables
and writes eval.json and confusion.png (a heatmap of the confusion matrix) into --out.

The images are read as `reslab train` reads them: the official CIFAR files and class folders whose
images all have the model's input size are decoded into memory; class folders of photos of other
or varied sizes and modes are streamed (one line says which path and why) through the evaluation
transform of a streaming run: shorter side resized (to the input size up to 64 px, else input
size / 0.875), centre crop at the checkpoint's input size. Unreadable files are then left out,
named and counted, up to --bad-image-limit.

"""

import argparse

from reslab.argtypes import nonnegative_int
from reslab.commands.options import add_data_arguments, add_output_arguments, field_argument_type


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="model file or run folder")
    add_data_arguments(parser)
    parser.add_argument("--views", choices=("single", "run"), default="single",
                        help="single: one view per image (plus any --tta-* given); run: the test-time views the "
                             "run was evaluated with in training, as recorded in the checkpoint")
    parser.add_argument("--tta-flip", action="store_true", help="average the logits of each image and its mirror image")
    parser.add_argument("--tta-translate", type=nonnegative_int, default=0, metavar="PIXELS",
                        help="also average views shifted this many pixels up-left and down-right (half the weight)")
    parser.add_argument("--workers", type=field_argument_type("workers"), metavar="N",
                        help="streamed folders: processes decoding images (default: the free cores, 1 to 8; 0: this one)")
    parser.add_argument("--bad-image-limit", type=field_argument_type("bad_image_limit"), default=0.01, metavar="FRACTION",
                        help="streamed folders: stop when more than this share of the images cannot be read (default 0.01)")
    add_output_arguments(parser, "eval")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.evaluate import evaluate, plot_confusion
    from reslab.analysis.plots import write_json
    from reslab.checkpoint import load_card
    from reslab.commands.options import (checkpoint_name, evaluation_path, load_checkpoint_batches, load_images,
                                         output_folder, run_in_bf16)
    from reslab.data.pipeline import stream_after
    from reslab.errors import DataError
    from reslab.inference.fold import folded_for_evaluation
    from reslab.inference.views import check_tta_translate, views_label

    out = output_folder(args.out, "eval", checkpoint_name(args.checkpoint), overwrite=args.overwrite)
    if args.views == "run" and (args.tta_flip or args.tta_translate):
        raise ValueError("--views run takes the run's own views; leave out --tta-flip/--tta-translate, or use --views single")
    choice, source = evaluation_path(args, load_card(args.checkpoint))
    if choice.kind == "memory":
        try:
            dataset = load_images(args)
        except DataError as exc:  # a size the sampled headers missed, or an unreadable file: stream, as training does
            if source.format != "class-folders":
                raise
            choice = stream_after(exc)
    if choice.kind == "memory":
        image_size = dataset.image_size
        check_tta_translate(args.tta_translate, image_size)
        model, card, classes, batches = load_checkpoint_batches(args.checkpoint, dataset, args)
        bad = None
    else:
        model, card, classes, batches, bad = _streamed(args, source, choice)
        image_size = (int(card.input_size),) * 2
        check_tta_translate(args.tta_translate, image_size)
    run_flip, run_translate = bool(card.config.get("tta_flip", False)), int(card.config.get("tta_translate", 0) or 0)
    flip, translate = (run_flip, run_translate) if args.views == "run" else (args.tta_flip, args.tta_translate)
    if args.views == "run":
        check_tta_translate(translate, image_size)
    bf16 = run_in_bf16(args)
    result = evaluate(folded_for_evaluation(model), batches, classes, bf16=bf16, tta_flip=flip, tta_translate=translate)
    streamed = {}
    if bad is not None:
        streamed = {"data_path": "stream", "image_size": int(card.input_size), "unreadable_images": bad.state_dict()}
        skipped = {"unreadable": len(bad.found), **source.skipped}
        if any(skipped.values()):
            print("skipped: " + ", ".join(f"{n:,} {reason} file{'' if n == 1 else 's'}"
                                          for reason, n in skipped.items() if n))
    views = views_label(flip, translate)
    if (run_flip or run_translate) and (flip, translate) != (run_flip, run_translate):
        print(f"note: training evaluated this run with test-time {views_label(run_flip, run_translate)}; "
              "`--views run` evaluates with them")
    print(f"{card.model} on {args.data} ({args.split}, {views}): " + result.format())
    write_json(out / "eval.json", {"experiment": "eval", "title": f"Evaluation of {card.model} ({args.split} split, {views})",
                                   "checkpoint": str(args.checkpoint), "model": card.model, "data": str(args.data),
                                   "split": args.split, "precision": "bf16" if bf16 else "fp32", "views": views,
                                   "tta_flip": flip, "tta_translate": translate, **streamed, **result.to_dict()})
    plot_confusion(result, out / "confusion.png", title=f"{card.model}: accuracy {100 * result.accuracy:.2f}% "
                                                         f"on {result.num_images:,} {args.split} image{'' if result.num_images == 1 else 's'}, {views}")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return 0


def _streamed(args: argparse.Namespace, source, choice):
    """(model, card, classes, batches, BadImages) of a class folder streamed at the checkpoint's input size."""
    import torch

    from reslab.checkpoint import load_model
    from reslab.commands.options import device_of, streaming_batches
    from reslab.inference.preprocess import default_resize_size

    print(choice.describe())
    model, card = load_model(args.checkpoint, map_location=device_of(args), with_card=True)
    batches, classes, bad = streaming_batches(args, card, source)
    print(f"evaluation transform: shorter side resized to {default_resize_size(int(card.input_size))}, centre crop "
          f"{card.input_size}x{card.input_size}, the checkpoint's mean {tuple(card.mean)} and std {tuple(card.std)}")
    return model.to(memory_format=torch.channels_last), card, classes, batches, bad
