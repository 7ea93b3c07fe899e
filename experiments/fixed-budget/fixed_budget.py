"""Several models trained with one recipe at one fixed budget: test error and time, as a table.

    python experiments/fixed-budget/fixed_budget.py          # the table of experiments/fixed-budget (about 40 min at 1 thread)
    python experiments/fixed-budget/fixed_budget.py --models resnet20,plain20 --epochs 2

Each model is trained into OUT/<model> with ``reslab train``'s trainer (a finished run there is
reused, a stopped one resumed, one configured otherwise refused), so the command can be rerun
after an interruption and prints the table again at no cost. The defaults are the
experiment's budget: the paper recipe for 6 epochs of a class-balanced 10,000-image subset (468 iterations
of batch 128), one thread, test error on the full test set. ``reslab degradation`` with the same
flags and OUT reuses the plain20/plain56/resnet20/resnet56 runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from reslab.analysis.degradation import run_summary, train_or_reuse
from reslab.analysis.plots import read_jsonl
from reslab.train import TrainConfig

REPO = Path(__file__).resolve().parents[2]
MODELS = "resnet20,resnet56,plain20,plain56,preact_resnet110,wrn16_4"


def run_row(run: Path) -> dict:
    """Final errors (as ``reslab degradation`` reads them) and times of a finished run folder."""
    epochs = read_jsonl(run / "metrics.jsonl")
    return {**run_summary(run), "train_seconds": sum(e["epoch_seconds"] for e in epochs),
            "wall_seconds": json.loads((run / "result.json").read_text())["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/datasets/cifar10", help="as given to the runs (run from the repo root)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "fixed-budget",
                        help="folder of the runs (default: runs/fixed-budget; the committed evidence is experiments/fixed-budget)")
    parser.add_argument("--models", default=MODELS, help="comma-separated registered models")
    parser.add_argument("--recipe", default="paper")
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--train-subset", type=int, default=10_000)
    parser.add_argument("--eval-interval", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    rows = []
    for model in args.models.split(","):
        config = TrainConfig.from_recipe(args.recipe, model=model, data=args.data, out=str(args.out / model),
                                         epochs=args.epochs, train_subset=args.train_subset,
                                         eval_interval=args.eval_interval, threads=args.threads)
        train_or_reuse(config)
        rows.append(run_row(args.out / model))
    print("| model | iterations | training error | test error | training time | wall time |\n|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['iterations']} | {r['final_train_error_pct']:.2f}% | {r['final_test_error_pct']:.2f}% | "
              f"{r['train_seconds']:.0f} s | {r['wall_seconds']:.0f} s |")
    (args.out / "budget.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
