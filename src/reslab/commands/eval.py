HELP = """Evaluate a checkpoint on a data set: accuracy, per-class accuracy and the confusion matrix.

CHECKPOINT is a model file or a run folder written by `reslab train`; images are normalised with
the mean and std recorded in it. BN layers are folded into the convolutions before them (the
same logits to rounding, faster), as in the evaluations of `reslab train`. Prints the tables
and writes eval.json and confusion.png (a heatmap of the confusion matrix) into --out.

The data options here are shared by the analysis commands (lesion, paths, responses).
"""

import argparse

from reslab.argtypes import nonnegative_int, positive_int, random_seed
from reslab.precision import PRECISIONS


def add_data_arguments(parser: argparse.ArgumentParser, *, required: bool = True, precision: bool = True) -> None:
    """The options that choose the evaluation images and how they are run (``--precision`` only
    where ``precision``)."""
    parser.add_argument("--data", required=required, metavar="PATH",
                        help="data set folder (class folders under train/ and test/) or an official CIFAR archive folder")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="which split to evaluate on")
    parser.add_argument("--images", type=positive_int, metavar="N",
                        help="use a class-balanced subset of N images; none = the whole split")
    parser.add_argument("--batch-size", type=positive_int, default=500, help="images per forward pass")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where to run")
    if precision:
        parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                            help="auto: bfloat16 autocast where the CPU or GPU has bf16 instructions, else float32")
        parser.add_argument("--fp32", dest="precision", action="store_const", const="fp32", default=argparse.SUPPRESS,
                            help="the same as --precision fp32")
    parser.add_argument("--seed", type=random_seed, default=0, help="seed of the image subset and of random draws")


def device_of(args: argparse.Namespace) -> str:
    """The device --device names (CUDA for auto when there is one); an error if it is absent."""
    from reslab.inference.predict import resolve_device

    return str(resolve_device(args.device))


def run_in_bf16(args: argparse.Namespace) -> bool:
    """Whether ``--precision`` (``auto`` decided by the hardware) asks for bf16 autocast; prints
    the decision."""
    import torch

    from reslab.precision import resolve_precision

    precision, note = resolve_precision(args.precision, torch.device(device_of(args)))
    print(note)
    return precision == "bf16"


def load_images(args: argparse.Namespace):
    """The split (or its class-balanced subset) that the data options name."""
    from reslab.data import balanced_subset, load_dataset

    dataset = load_dataset(args.data, split=args.split)
    return balanced_subset(dataset, args.images, args.seed) if args.images else dataset


def load_checkpoint_batches(path: str, dataset, args: argparse.Namespace):
    """(model, card, class names, normalised batches) of a checkpoint on ``dataset``."""
    import torch

    from reslab.analysis.evaluate import check_classes, eval_batches
    from reslab.checkpoint import load_model

    device = device_of(args)
    model, card = load_model(path, map_location=device)
    classes = check_classes(card, dataset.classes, source=str(path))
    model = model.to(memory_format=torch.channels_last)
    batches = eval_batches(dataset, card.mean, card.std, batch_size=args.batch_size, device=device)
    return model, card, classes, batches


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="model file or run folder")
    add_data_arguments(parser)
    parser.add_argument("--tta-flip", action="store_true", help="average the logits of each image and its mirror image")
    parser.add_argument("--tta-translate", type=nonnegative_int, default=0, metavar="PIXELS",
                        help="also average views shifted this many pixels up-left and down-right (half the weight)")
    parser.add_argument("--out", default="results/eval", metavar="DIR", help="folder for eval.json and confusion.png")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reslab.analysis.evaluate import evaluate, plot_confusion
    from reslab.analysis.plots import write_json
    from reslab.inference.fold import folded_for_evaluation
    from reslab.train.extras import check_tta_translate

    dataset = load_images(args)
    check_tta_translate(args.tta_translate, dataset.image_size)
    model, card, classes, batches = load_checkpoint_batches(args.checkpoint, dataset, args)
    bf16 = run_in_bf16(args)
    result = evaluate(folded_for_evaluation(model), batches, classes, bf16=bf16, tta_flip=args.tta_flip,
                      tta_translate=args.tta_translate)
    view_names = " and ".join(name for name, on in (("flips", args.tta_flip),
                                                    (f"{args.tta_translate}-pixel shifts", args.tta_translate)) if on)
    views = f" with test-time {view_names}" if view_names else ""
    print(f"{card.model} on {args.data} ({args.split}){views}: " + result.format())
    out = Path(args.out)
    write_json(out / "eval.json", {"experiment": "eval", "title": f"Evaluation of {card.model} ({args.split} split"
                                   f"{', test-time ' + view_names if view_names else ''})",
                                   "checkpoint": str(args.checkpoint), "model": card.model, "data": str(args.data),
                                   "split": args.split, "precision": "bf16" if bf16 else "fp32", "tta_flip": args.tta_flip,
                                   "tta_translate": args.tta_translate, **result.to_dict()})
    plot_confusion(result, out / "confusion.png", title=f"{card.model}: accuracy {100 * result.accuracy:.2f}% "
                                                         f"on {result.num_images} {args.split} images")
    print(f"wrote {out / 'eval.json'} and {out / 'confusion.png'}")
    return 0
