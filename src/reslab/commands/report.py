HELP = """Gather every experiment's figures and tables under DIR into one Markdown or HTML page.

Each folder under DIR that holds PNG figures or experiment tables (the JSON files the analysis
commands write) becomes a section: figures linked relatively, tables rendered from the JSON.
Writes DIR/report.md or DIR/report.html, or --out; an existing report is replaced only with
--overwrite.
"""

import argparse

from reslab.commands.options import add_output_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="results folder (e.g. the --out of the experiments, or their parent)")
    parser.add_argument("--format", choices=("md", "html"), default="md", help="page format")
    parser.add_argument("--title", default="reslab experiments", help="page title")
    add_output_arguments(parser, "report", file="report.md", default="DIR/report.md or DIR/report.html")


def run(args: argparse.Namespace) -> int:
    from reslab.analysis.report import build_report, report_path
    from reslab.commands.options import output_file

    out = output_file(args.out or report_path(args.folder, args.format), overwrite=args.overwrite)
    print(f"wrote {build_report(args.folder, args.format, args.title, out)}")
    return 0
