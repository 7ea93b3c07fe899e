HELP = """Export a saved model to ONNX, TorchScript, or a torchvision/timm state dict.

ONNX has a dynamic batch dimension (input `images` (N, 3, S, S), output `logits` (N, classes));
ONNX and TorchScript files are checked against PyTorch on batches of 1 and 3 images and the
largest difference is printed (status 1 if it exceeds the tolerance). --fold-bn folds every BN
that follows a convolution into it first (same outputs, faster). --format state-dict writes
the weights with torchvision's or timm's key names (ImageNet-layout ResNet, ResNeXt and Wide
ResNet models), loadable with their `load_state_dict`.
"""

import argparse

from reslab.argtypes import int_range
from reslab.commands.options import add_output_arguments

ONNX_OPSETS = (7, 23)  # what torch.onnx knows (torch.onnx._constants.ONNX_MIN_OPSET / ONNX_MAX_OPSET)
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "state-dict": ".pth"}
TOLERANCE = 1e-4  # largest difference / max(1, largest |logit|)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="model file (.safetensors) or run folder")
    parser.add_argument("--format", choices=tuple(FORMATS), required=True, help="what to write")
    parser.add_argument("--fold-bn", action="store_true", help="fold BN into the preceding convolutions (onnx, torchscript)")
    parser.add_argument("--flavour", choices=("torchvision", "timm"), default="torchvision", help="key names of --format state-dict")
    parser.add_argument("--trace", action="store_true", help="TorchScript by tracing instead of scripting")
    parser.add_argument("--opset", type=int_range(*ONNX_OPSETS, "opset"), default=17, help="ONNX opset version")
    parser.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    add_output_arguments(parser, "export", file="model", default="beside the checkpoint, its name with the format's suffix")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reslab.checkpoint import load_model, resolve_checkpoint_path
    from reslab.commands.options import output_file
    from reslab.inference import export, interop
    from reslab.inference.fold import fold_bn

    if args.format == "onnx":
        export.require_onnx(verify=not args.no_verify)  # before any work, naming the pip command
    source = resolve_checkpoint_path(args.checkpoint)
    out = Path(args.out) if args.out else source.parent / (source.stem + FORMATS[args.format])
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the checkpoint itself; choose another file name")
    out = output_file(out, overwrite=args.overwrite)
    model, card = load_model(source, with_card=True)
    if args.format == "state-dict":
        if args.fold_bn:
            raise ValueError("--fold-bn changes the layout; a state dict for torchvision/timm must keep its BN layers")
        interop.export_state_dict(model, out, args.flavour)
        print(f"wrote {out} ({args.flavour} keys, {len(model.state_dict())} tensors)")
        return 0
    if args.fold_bn:
        model = fold_bn(model)
    if args.format == "onnx":
        export.export_onnx(model, out, card.input_size, args.opset)
        verify = export.verify_onnx
    else:
        export.export_torchscript(model, out, card.input_size, "trace" if args.trace else "script")
        verify = export.verify_torchscript
    print(f"wrote {out} ({args.format}{', BN folded' if args.fold_bn else ''}, input {card.input_size}x{card.input_size})")
    if args.no_verify:
        return 0
    agreement = verify(out, model, card.input_size)
    ok = agreement.relative <= TOLERANCE
    print(f"max |{args.format} - pytorch| = {agreement.max_difference:.3g} (logits up to {agreement.max_output:.3g}) "
          f"on batches of 1 and 3 images: {'ok' if ok else 'TOO LARGE'}")
    return 0 if ok else 1
