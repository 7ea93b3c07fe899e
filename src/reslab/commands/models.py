HELP = """List the model zoo: name, family, paper, input size, parameters, MACs and the paper's count.

Parameters and MACs (multiply-accumulates of one image's forward pass, convolutions and linear
layers) are computed from the models themselves, built on PyTorch's meta device, so the whole
table takes seconds. PATTERN is shell-style: `reslab models 'resnet*'`.
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="shell-style name pattern")
    parser.add_argument("--family", help="only this family (see the table's family column)")
    parser.add_argument("--format", choices=("table", "markdown", "json"), default="table", help="output format")


def run(args: argparse.Namespace) -> int:
    import json

    from reslab.zoo_table import zoo_rows, format_rows

    rows = zoo_rows(args.pattern, args.family)
    if not rows:
        raise ValueError(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    print(json.dumps(rows, indent=1) if args.format == "json" else format_rows(rows, markdown=args.format == "markdown"))
    return 0
