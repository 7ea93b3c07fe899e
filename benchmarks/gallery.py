"""The README's gallery in one command: the figures of the "why residual networks work"
experiments and one table of their claims against the papers.

    python benchmarks/gallery.py                      # gather from experiments/ (the committed evidence)
    python benchmarks/gallery.py --rerun --data ../shared/datasets/cifar10 --work runs/gallery
                                                      # rerun every analysis into --work first, then gather

Gathering copies each experiment's figure into --out (default experiments/gallery/), and writes
there README.md (the gallery page: figures and the claims table, linked relatively) and
readme_snippet.md (the same with paths from the repository root, to paste into the README).
The claims are read from each experiment's JSON ("claims": claim, paper, reslab, holds), so the
table says exactly what the commands measured. --rerun runs the commands listed in GALLERY
(each writes its JSON, figures and run record into --work/<folder>; hours on a CPU, most of it
the lesion study and the stochastic-depth training) and then gathers from --work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Entry:
    """One gallery figure: where its experiment's output lives (relative to the experiments
    folder, or to --work with --rerun), which figure and JSON, and the command that makes them
    (DATA and OUT are filled in)."""

    key: str
    title: str
    folder: str
    figure: str
    table: str
    command: tuple[str, ...]
    claims_with: str = ""  # keep only the claims whose text holds this (two figures of one study)


GALLERY = (
    Entry("degradation", "Degradation: plain vs residual nets over their whole training (He et al. 2015, Fig. 6)",
          "degradation/zoo", "degradation.png", "degradation.json",
          ("degradation", "--runs", "experiments/cifar-zoo/plain20_seed0", "experiments/cifar-zoo/plain32_seed0",
           "experiments/cifar-zoo/plain56_seed0",
           "experiments/cifar-zoo/resnet20_seed0", "experiments/cifar-zoo/resnet32_seed0",
           "experiments/cifar-zoo/resnet44_seed0", "experiments/cifar-zoo/resnet56_seed0", "--smooth", "1")),
    Entry("lesion", "Deleting one block of ResNet-56 and of plain-56 (Veit et al. 2016, Fig. 3)",
          "lesion/resnet56-plain56", "lesion_blocks.png", "lesion.json",
          ("lesion", "resnet56", "--plain", "plain56", "--images", "1000", "--max-k", "1", "--draws", "1"),
          claims_with="deleting"),
    Entry("lesion_k", "Deleting and reordering k blocks of ResNet-56 (Veit et al. 2016, Fig. 5)",
          "lesion/resnet56", "lesion_k.png", "lesion.json",
          ("lesion", "resnet56", "--images", "1000", "--draws", "20"), claims_with="rises smoothly"),
    Entry("paths", "Which path lengths carry ResNet-56's gradient (Veit et al. 2016, Fig. 6)",
          "paths/resnet56", "paths.png", "paths.json",
          ("paths", "resnet56", "--images", "64", "--samples", "10")),
    Entry("responses", "Residual responses, in network order and sorted (He et al. 2015, Fig. 7)",
          "responses/zoo", "responses.png", "responses.json",
          ("responses", "plain20", "plain56", "resnet20", "resnet56", "--images", "1000")),
    Entry("landscape", "Loss landscape of ResNet-56 and plain-56 (Li et al. 2018, Fig. 5)",
          "landscape/resnet56-plain56", "landscape_contour.png", "landscape.json",
          ("landscape", "resnet56", "plain56")),
    Entry("shattered", "Input gradients at initialisation (Balduzzi et al. 2017)",
          "shattered/at-init", "shattered.png", "shattered.json",
          ("shattered", "--lines", "4")),
    Entry("similarity", "Block-by-block linear CKA of ResNet-56 and plain-56 (Kornblith et al. 2019)",
          "similarity/resnet56-plain56", "similarity.png", "similarity.json",
          ("similarity", "resnet56", "plain56", "--images", "500")),
    Entry("curvature", "Top Hessian eigenvalue and trace of ResNet-56 and plain-56 (PyHessian, Yao et al. 2020)",
          "curvature/resnet56-plain56", "curvature.png", "curvature.json",
          ("curvature", "resnet56", "plain56", "--images", "200")),
    Entry("sdepth", "Stochastic depth: the gradient reaching the first block (Huang et al. 2016, Fig. 8)",
          "stochastic-depth/steps", "sdepth.png", "sdepth.json",
          ("sdepth", "--model", "resnet56", "--recipe", "stochastic-depth", "--epochs", "16", "--train-subset", "10000",
           "--eval-interval", "1", "--eval-subset", "2000", "--set", "warmup=0.05")),
)

NEEDS_DATA = {"lesion", "paths", "responses", "landscape", "similarity", "curvature", "sdepth"}


def rerun(work: Path, data: str) -> None:
    """Run every command of GALLERY into ``work/<folder>`` (a command whose folder exists is skipped)."""
    for entry in GALLERY:
        if not entry.command:
            continue
        out = work / entry.folder
        if (out / entry.table).exists():
            print(f"{entry.key}: {out} exists, kept")
            continue
        argv = [sys.executable, "-m", "reslab", *entry.command, "--out", str(out)]
        if entry.command[0] in NEEDS_DATA:
            argv += ["--data", data]
        print("$", " ".join(argv[2:]), flush=True)
        subprocess.run(argv, check=True, cwd=REPO)


def _holds(value) -> str:
    return {True: "yes", False: "**no**", None: "-"}[value]


def _cell(text) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def gather(source: Path, out: Path) -> tuple[str, str]:
    """Copy each figure from ``source/<folder>`` to ``out/<key>.png`` and return the gallery
    page and the README snippet (Markdown); a missing experiment is listed as missing."""
    out.mkdir(parents=True, exist_ok=True)
    figures, claims, missing = [], [], []
    for entry in GALLERY:
        figure = source / entry.folder / entry.figure
        if not figure.is_file():
            missing.append(f"{entry.key} ({entry.folder}/{entry.figure} not found)")
            continue
        shutil.copyfile(figure, out / f"{entry.key}.png")
        figures.append(entry)
        if entry.table:
            table = json.loads((source / entry.folder / entry.table).read_text())
            claims += [(entry, c) for c in table.get("claims", []) if entry.claims_with in c["claim"]]

    def page(prefix: str, link_prefix: str) -> str:
        lines = ["| experiment | claim | paper | reslab | holds here? |", "|---|---|---|---|---|"]
        lines += [f"| [{e.key}]({link_prefix}{e.folder.split('/')[0]}/) | {_cell(c['claim'])} | {_cell(c['paper'])} | "
                  f"{_cell(c['reslab'])} | {_holds(c['holds'])} |" for e, c in claims]
        shown = []
        for pair in (figures[i:i + 2] for i in range(0, len(figures), 2)):  # two figures a row
            shown += ["| " + " | ".join(_cell(e.title) for e in pair) + " |", "|" + "---|" * len(pair),
                      "| " + " | ".join(f"![{e.key}]({prefix}{e.key}.png)" for e in pair) + " |", ""]
        return "\n".join([*shown, *lines, ""]) + (f"\nNot gathered: {'; '.join(missing)}.\n" if missing else "")

    relative = out.resolve().relative_to(REPO) if out.resolve().is_relative_to(REPO) else out.resolve()
    experiments = Path("experiments")
    gallery_page = ("# Why residual networks work: the gallery\n\n"
                    "Made by `python benchmarks/gallery.py` from the experiments' own JSON and figures; "
                    "each folder's README gives the command, the machine and what to read into it.\n\n"
                    + page("", "../"))
    snippet = page(f"{relative.as_posix()}/", f"{experiments.as_posix()}/")
    (out / "README.md").write_text(gallery_page)
    (out / "readme_snippet.md").write_text(snippet)
    return gallery_page, snippet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rerun", action="store_true", help="rerun every analysis into --work before gathering")
    parser.add_argument("--data", help="CIFAR-10 folder (with --rerun)")
    parser.add_argument("--work", default="runs/gallery", help="where --rerun writes the experiments")
    parser.add_argument("--source", default=str(REPO / "experiments"), help="experiments folder to gather from")
    parser.add_argument("--out", default=str(REPO / "experiments" / "gallery"), help="where the gallery is written")
    args = parser.parse_args(argv)
    source = Path(args.source)
    if args.rerun:
        if not args.data:
            parser.error("--rerun needs --data (the CIFAR-10 folder)")
        rerun(Path(args.work), args.data)
        source = Path(args.work)
    _, snippet = gather(source, Path(args.out))
    print(snippet)
    print(f"wrote {Path(args.out) / 'README.md'} and {Path(args.out) / 'readme_snippet.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
