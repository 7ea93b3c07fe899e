"""Two lesion studies side by side: is one network more robust to deleted blocks than the other?

Veit et al. 2016 (sec. 6) lesion a ResNet-110 trained with stochastic depth and find it degrades
more gracefully than the same net trained at constant depth: training already removed blocks at
random, so the paths that are left were trained to work without them. This script reads two
`lesion.json` files written by `reslab lesion` on the same images with the same seed (so each
draw deletes the same blocks in both networks) and compares their mean error for each k, with the
paired difference's standard error; with --out it also writes the figure's numbers and the claim
(claim, paper, reslab, holds) beside it as JSON.

    python experiments/lesion/compare.py experiments/lesion/resnet56/lesion.json \\
        experiments/lesion/resnet56-sdepth/lesion.json --out experiments/lesion/resnet56-sdepth/compare.png
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Optional

from reslab.analysis.plots import figure, save_figure


def paired_rows(first: dict, second: dict, key: str = "deleted") -> list[dict]:
    """For each k: both means, the mean paired difference (second - first) and its standard
    error; the draws pair up because both studies drew with the same seed from the same blocks."""
    rows = []
    for a, b in zip(first[key], second[key]):
        if a["k"] != b["k"] or len(a["errors_pct"]) != len(b["errors_pct"]):
            raise ValueError(f"the two studies differ at k={a['k']}: run both with the same --draws, --max-k and --seed")
        differences = [y - x for x, y in zip(a["errors_pct"], b["errors_pct"])]
        se = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else float("nan")
        rows.append({"k": a["k"], "first_pct": a["mean_error_pct"], "second_pct": b["mean_error_pct"],
                     "difference_pct": statistics.fmean(differences), "difference_se_pct": se})
    return rows


def robustness_claim(rows: list[dict], labels: tuple[str, str]) -> dict:
    """Veit et al. sec. 6 as a verdict: the second net's error is lower than the first's by more
    than two standard errors of the paired difference for every k of the larger half (k > max_k / 2),
    where many blocks are gone."""
    large = [r for r in rows if r["k"] > rows[-1]["k"] / 2]
    holds = all(r["difference_pct"] + 2 * r["difference_se_pct"] < 0 for r in large)
    shown = ", ".join(f"k={r['k']}: {r['first_pct']:.1f} vs {r['second_pct']:.1f}%" for r in (rows[0], rows[len(rows) // 2 - 1], rows[-1]))
    return {"claim": f"the error of the net trained with {labels[1]} rises more slowly with the number of blocks deleted",
            "paper": "Veit et al. 2016, sec. 6: ResNet-110 trained with stochastic depth is more robust to deleted blocks",
            "reslab": f"{labels[0]} vs {labels[1]}, mean error {shown} (paired draws); lower beyond 2 SE for k > "
                      f"{rows[-1]['k'] // 2}: {'yes' if holds else 'no'}",
            "holds": holds}


def check_same_setup(first: dict, second: dict) -> None:
    for field in ("num_images", "seed", "draws", "split", "deletion_candidates"):
        if first.get(field) != second.get(field):
            raise ValueError(f"the two studies differ in {field} ({first.get(field)!r} vs {second.get(field)!r}); "
                             "rerun one with the other's settings")


def plot(first: dict, second: dict, labels: tuple[str, str], path: Path) -> None:
    fig, axes = figure(ncols=2, size=(11.0, 4.6))
    for ax, key, xlabel in ((axes[0], "deleted", "number of blocks deleted"),
                            (axes[1], "reordered", "number of swaps of same-shape blocks")):
        for study, label, color in ((first, labels[0], "tab:blue"), (second, labels[1], "tab:orange")):
            rows = study[key]
            ks = [0] + [r["k"] for r in rows]
            means = [study["single"]["baseline_error_pct"]] + [r["mean_error_pct"] for r in rows]
            ses = [0.0] + [r["std_error_pct"] / math.sqrt(r["draws"]) for r in rows]
            ax.errorbar(ks, means, yerr=ses, marker="o", capsize=3, color=color, label=f"{label} (mean ± SE)")
        ax.axhline(first["single"]["chance_error_pct"], color="0.5", ls=":", lw=1.2, label="chance")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("deleting random blocks (same draws)")
    axes[1].set_title("reordering random blocks (same draws)")
    save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path, help="lesion.json of the reference network")
    parser.add_argument("second", type=Path, help="lesion.json of the network compared with it")
    parser.add_argument("--labels", nargs=2, default=None, help="names in the figure (default: the models)")
    parser.add_argument("--out", type=Path, help="figure to write (png)")
    args = parser.parse_args(argv)
    try:
        first, second = (json.loads(p.read_text()) for p in (args.first, args.second))
        check_same_setup(first, second)
    except (OSError, ValueError) as exc:
        print(f"compare.py: error: {exc}", file=sys.stderr)
        return 2
    labels = tuple(args.labels or (Path(first["checkpoint"]).name, Path(second["checkpoint"]).name))
    print(f"baseline error: {first['single']['baseline_error_pct']:.2f}% ({labels[0]}), "
          f"{second['single']['baseline_error_pct']:.2f}% ({labels[1]}) on {first['num_images']} images")
    rows = {key: paired_rows(first, second, key) for key in ("deleted", "reordered")}
    for key, key_rows in rows.items():
        print(f"\n{key}: mean error % over {first['draws']} paired draws")
        print(f"{'k':>3} {labels[0]:>18} {labels[1]:>18} {'difference':>12} {'+- 2 SE':>8}")
        for row in key_rows:
            print(f"{row['k']:>3} {row['first_pct']:>18.1f} {row['second_pct']:>18.1f} "
                  f"{row['difference_pct']:>+12.1f} {2 * row['difference_se_pct']:>8.1f}")
    claim = robustness_claim(rows["deleted"], labels)
    print(f"\nclaim: {claim['claim']}: {'holds' if claim['holds'] else 'does not hold'} ({claim['reslab']})")
    if args.out:
        plot(first, second, labels, args.out)
        record = {"first": str(args.first), "second": str(args.second), "labels": list(labels), **rows,
                  "claims": [claim]}
        args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"\nwrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
