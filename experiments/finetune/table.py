"""The table of experiments/finetune/README.md from its run folders: python experiments/finetune/table.py DIR."""

import json
import sys
from pathlib import Path


def row(run: Path) -> str:
    config = json.loads((run / "config.json").read_text())
    config = config.get("config", config)
    result = json.loads((run / "result.json").read_text())
    start = "random weights" if not config.get("init") else f"{Path(config['init']).name} ({'frozen, linear probe' if config.get('freeze_backbone') else 'fine-tuned'})"
    peak = config["lr"] * config["batch_size"] / config["base_batch_size"]
    return (f"| {run.name} | {config.get('image_size')} px | {start} | {peak:g} | {result['iteration']} | "
            f"{100 * result['test_accuracy']:.1f}% | {result['wall_seconds']:.0f} s |")


# The README's order: the checkpoints, then each resolution's runs from random weights, fine-tuned, probed.
ORDER = ["pretrain", "pretrain10", "scratch32", "scratch32_lr1x", "finetune32", "finetune32_p10", "finetune32_p10_lr5x",
         "probe32", "probe32_p10", "scratch", "finetune", "finetune64_p10", "finetune64_p10_lr5x", "probe"]


def main(folder: str) -> None:
    print("| run | size | start | peak lr | iterations | val accuracy (500 images) | wall time (shared cores) |")
    print("|---|---:|---|---:|---:|---:|---:|")
    runs = {p.name: p for p in Path(folder).iterdir() if (p / "result.json").is_file()}
    for name in sorted(runs, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        print(row(runs[name]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "experiments/finetune/runs")
