HELP = """Gather every experiment's figures and tables under DIR into one Markdown or HTML page.

Each folder under DIR that holds PNG figures or experiment tables (the JSON files the analysis
commands write) becomes a section: figures linked relatively, tables rendered from the JSON.
Writes DIR/report.md or DIR/report.html.
"""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="results folder (e.g. the --out of the experiments, or their parent)")
    parser.add_argument("--format", choices=("md", "html"), default="md", help="page format")
    parser.add_argument("--title", default="reslab experiments", help="page title")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.report import build_report

    print(f"wrote {build_report(args.folder, args.format, args.title)}")
    return 0
