"""The trainer's final evaluation with and without BN folded into the convolutions.

``reslab train`` evaluates a copy of the model with every foldable BN folded into the
convolution before it (``reslab.train.trainer.folded_for_evaluation``). This times that
evaluation (the recipe's test-time views, the whole test set, ``reslab.train.trainer.evaluate``)
on a run's weights, folded and as trained, taking turns for ``--rounds`` rounds, and checks that
both give the same error.

    python experiments/bn-folding/eval_fold.py runs/fast-recipe/icelake_seed1 --data ../shared/datasets/cifar10
"""

from __future__ import annotations

import argparse
import time

import torch

from reslab.analysis.evaluate import autocast, eval_batches
from reslab.checkpoint import load_model
from reslab.data import load_dataset
from reslab.errors import ReslabError
from reslab.precision import PRECISIONS, resolve_precision
from reslab.train import trainer
from reslab.train.distributed import DistributedEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", metavar="RUN", help="run folder (or checkpoint) of `reslab train`")
    parser.add_argument("--data", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    args = parser.parse_args()
    bf16 = resolve_precision(args.precision, torch.device("cpu"))[0] == "bf16"
    model, card = load_model(args.run, with_card=True)
    model = model.to(memory_format=torch.channels_last)
    batches = eval_batches(load_dataset(args.data, "test"), card.mean, card.std, batch_size=500)
    folding = trainer.folded_for_evaluation
    setups = {"BN folded (what reslab train runs)": folding, "as trained": lambda m: m.eval()}
    times: dict[str, list[float]] = {name: [] for name in setups}
    errors: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, prepare in setups.items():
            trainer.folded_for_evaluation = prepare
            try:
                start = time.perf_counter()
                errors[name] = trainer.evaluate(model, batches, lambda: autocast(torch.device("cpu"), bf16),
                                                DistributedEnv(), flip=True, translate=1)[1]
                times[name].append(time.perf_counter() - start)
            finally:
                trainer.folded_for_evaluation = folding
    print(f"final evaluation of {args.run} (flips + 1-pixel shifts, {len(batches)} batches), "
          f"{'bf16' if bf16 else 'fp32'}, {args.rounds} rounds taking turns")
    for name, seconds in times.items():
        print(f"  {name:36s} test error {100 * errors[name]:.2f}%   "
              f"{' '.join(f'{s:5.1f}' for s in seconds)} s   best {min(seconds):5.1f} s")
    ratios = sorted(b / a for a, b in zip(*times.values()))
    print(f"  speed-up per round: {' '.join(f'{r:.2f}x' for r in ratios)}")


if __name__ == "__main__":
    try:
        main()
    except ReslabError as exc:  # a missing run or data folder: its one-line message, not a traceback
        raise SystemExit(f"eval_fold.py: error: {exc}") from None
