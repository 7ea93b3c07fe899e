HELP = """Classify images with a saved model: the top-k classes and their probabilities.

CHECKPOINT is a reslab model file (.safetensors) or a run folder written by `reslab train`;
its model card gives the architecture, class names, input size and normalisation. Each IMAGE
may be a file (any format and mode Pillow reads: RGBA, greyscale, palette, CMYK, 16-bit...)
or a folder, walked recursively for image files. Images are converted to RGB, their shorter
side resized (to the input size for 32x32 CIFAR models; to 256 for 224 ImageNet models) and
centre-cropped, as the model's evaluation transform.

A file that cannot be read is reported on one line (`reslab predict: error: cannot read ...`,
and as {"path", "error"} with --json) and skipped; the other images are still predicted, and
the exit status is then 1.
"""

import argparse

from reslab.argtypes import positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="model file (.safetensors) or run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    parser.add_argument("--top-k", type=positive_int, default=5, help="classes to show per image")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--resize-size", type=positive_int, default=None,
                        help="shorter side before the centre crop (default: from the model's input size)")


def format_prediction(prediction) -> str:
    lines = [prediction.path]
    width = max(len(score.name) for score in prediction.top)
    lines += [f"  {rank}. {score.name:<{width}}  {score.probability:.4f}" for rank, score in enumerate(prediction.top, 1)]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from reslab.inference.predict import Predictor, resolve_device
    from reslab.inference.preprocess import find_images

    paths = find_images(args.images)
    predictor = Predictor.from_checkpoint(args.checkpoint, resolve_device(args.device), args.resize_size)
    results = []
    failed = 0
    for prediction in predictor.predict_files(paths, args.top_k, args.batch_size):
        if prediction.error is not None:
            failed += 1
            print(f"reslab predict: error: {prediction.error}", file=sys.stderr)
        if args.json:
            results.append(prediction.to_dict())
        elif prediction.error is None:
            print(format_prediction(prediction))
    if args.json:
        print(json.dumps(results, indent=1))
    return 1 if failed else 0
