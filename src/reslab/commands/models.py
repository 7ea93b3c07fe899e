HELP = """List the model zoo: name, family, paper, input size, parameters, MACs and the paper's count.

Parameters and MACs (multiply-accumulates of one image's forward pass, convolutions and linear
layers) are computed from the models themselves, built on PyTorch's meta device, so the whole
table takes seconds. PATTERN is shell-style: `reslab models 'resnet*'`.

--pretrained lists the models that ship trained CIFAR-10 weights, with their test accuracy
(single view and with flips), epochs and training time; `reslab models --pretrained resnet56`
prints that model's card (see docs/pretrained.md). A model with weights can be passed by name
wherever a command takes a checkpoint: `reslab eval resnet56 --data ...`.
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                        help="shell-style name pattern; with --pretrained, a model name prints its card")
    parser.add_argument("--family", help="only this family (see the table's family column)")
    parser.add_argument("--pretrained", action="store_true", help="only models with trained weights, with their accuracy")
    parser.add_argument("--format", choices=("table", "markdown", "json"), default="table", help="output format")


def run(args: argparse.Namespace) -> int:
    import json

    if args.pretrained:
        return _run_pretrained(args)
    from reslab.zoo_table import zoo_rows, format_rows

    rows = zoo_rows(args.pattern, args.family)
    if not rows:
        raise ValueError(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    print(json.dumps(rows, indent=1) if args.format == "json" else format_rows(rows, markdown=args.format == "markdown"))
    return 0


def _run_pretrained(args: argparse.Namespace) -> int:
    import json

    from reslab.pretrained import format_card, format_pretrained_rows, pretrained_cfg, pretrained_names
    from reslab.registry import list_models

    if not any(ch in args.pattern for ch in "*?["):  # a name: its card
        cfg = pretrained_cfg(args.pattern)
        print(json.dumps(cfg, indent=1) if args.format == "json" else format_card(cfg))
        return 0
    names = list_models(args.pattern, args.family, pretrained=True)
    if not names:
        have = ", ".join(pretrained_names()) or "none"
        raise ValueError(f"no model with trained weights matches {args.pattern!r}; models with weights: {have}")
    cfgs = [pretrained_cfg(n) for n in names]
    print(json.dumps(cfgs, indent=1) if args.format == "json" else format_pretrained_rows(cfgs, markdown=args.format == "markdown"))
    return 0
