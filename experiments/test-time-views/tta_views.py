"""Which test-time views pay: accuracy of trained runs under several sets of views.

The fast recipe evaluates each test image as the average of its logits over views
(``reslab.train.extras.tta_logits``: the image and its mirror image at weight 1/2, and both
shifted one pixel up-left and down-right at 1/2). This script asks whether other sets do
better on the same trained weights: no views, flips only, the recipe's, shifts in all four
diagonal directions, all eight neighbouring shifts, and 1- and 2-pixel diagonal shifts. It
computes each distinct view's logits once per run (shifted views are crops of the images
padded by reflection, as in ``tta_logits``) and combines them, so every set costs only its
share of the forward passes; the time column is what evaluating with that set costs.

    python experiments/test-time-views/tta_views.py runs/fast-recipe/icelake_seed1 --data ../shared/datasets/cifar10

Choosing views by their test accuracy selects on the test set, so read the table as a
measurement of these runs, not as a tuned setting; a setting is adopted only if it wins on
every run by more than the runs differ.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from reslab.analysis.evaluate import autocast, eval_batches, evaluation_mode
from reslab.checkpoint import load_model
from reslab.data import balanced_subset, load_dataset
from reslab.errors import ReslabError
from reslab.precision import PRECISIONS, resolve_precision
from reslab.inference.views import tta_logits

PAD = 2
# (shift down, shift right) in pixels; each set: centre views at weight 1/2, shifted ones share 1/2
VIEW_SETS = {
    "single view": None,
    "flips": [],
    "flips + 1 px up-left, down-right (the recipe)": [(-1, -1), (1, 1)],
    "flips + 1 px, four diagonals": [(-1, -1), (1, 1), (-1, 1), (1, -1)],
    "flips + 1 px, eight neighbours": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)],
    "flips + 1 and 2 px up-left, down-right": [(-1, -1), (1, 1), (-2, -2), (2, 2)],
    "flips + 2 px up-left, down-right": [(-2, -2), (2, 2)],
}


@torch.no_grad()
def view_logits(model, batches, shift: tuple[int, int], flip: bool, bf16: bool) -> tuple[torch.Tensor, float]:
    """Logits of every test image seen shifted by ``shift`` (and mirrored if ``flip``); seconds."""
    start, out = time.perf_counter(), []
    for images, _ in batches:
        height, width = images.shape[-2:]
        if shift != (0, 0):
            padded = F.pad(images, (PAD,) * 4, mode="reflect")
            top, left = PAD - shift[0], PAD - shift[1]
            images = padded[..., top:top + height, left:left + width].contiguous(memory_format=torch.channels_last)
        if flip:
            images = images.flip(3)
        with autocast(images.device, bf16):
            out.append(model(images).float())
    return torch.cat(out), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or checkpoints) of `reslab train`")
    parser.add_argument("--data", required=True, help="the data set the runs were trained on")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--images", type=int, default=0, help="a class-balanced subset of N test images (0 = all)")
    args = parser.parse_args()
    bf16 = resolve_precision(args.precision, torch.device("cpu"))[0] == "bf16"
    test = load_dataset(args.data, "test")
    if args.images:
        test = balanced_subset(test, args.images, 0)
    shifts = sorted({(0, 0), *(s for views in VIEW_SETS.values() if views for s in views)})
    table: dict[str, list[tuple[float, float]]] = {name: [] for name in VIEW_SETS}
    for run in args.runs:
        model, card = load_model(run, with_card=True)
        model = model.to(memory_format=torch.channels_last)
        batches = eval_batches(test, card.mean, card.std, batch_size=500)
        labels = torch.cat([labels for _, labels in batches])
        with evaluation_mode(model), torch.no_grad():
            view_logits(model, batches[:1], (0, 0), False, bf16)  # warm-up, so that the first view's time is fair
            logits, seconds = {}, {}
            for shift in shifts:
                for flip in (False, True):
                    logits[shift, flip], seconds[shift, flip] = view_logits(model, batches, shift, flip, bf16)
            recipe = torch.cat([tta_logits(model, images, flip=True, translate=1) for images, _ in batches])
        for name, views in VIEW_SETS.items():
            if views is None:
                combined, cost = logits[(0, 0), False], seconds[(0, 0), False]
            else:
                centre = (logits[(0, 0), False] + logits[(0, 0), True]) / 2
                cost = seconds[(0, 0), False] + seconds[(0, 0), True]
                combined = centre
                if views:
                    shifted = sum(logits[s, f] for s in views for f in (False, True)) / (2 * len(views))
                    combined = (centre + shifted) / 2
                    cost += sum(seconds[s, f] for s in views for f in (False, True))
            table[name].append((100 * (combined.argmax(1) == labels).double().mean().item(), cost))
            if views == VIEW_SETS["flips + 1 px up-left, down-right (the recipe)"]:
                agree = (combined.argmax(1) == recipe.argmax(1)).double().mean().item()
                if agree < 0.999:
                    raise SystemExit(f"the recipe's views here disagree with tta_logits on {100 * (1 - agree):.2f}%")
        print(f"{run}: done", flush=True)
    print(f"test accuracy (%) of {len(args.runs)} run(s) under sets of test-time views, "
          f"{'bf16' if bf16 else 'fp32'}, seconds for the {len(test):,} test images")
    width = max(map(len, VIEW_SETS))
    for name, rows in table.items():
        accuracies = "  ".join(f"{a:6.2f}" for a, _ in rows)
        mean = sum(a for a, _ in rows) / len(rows)
        print(f"  {name:{width}s}  {accuracies}   mean {mean:6.2f}   {sum(s for _, s in rows) / len(rows):5.1f} s")


if __name__ == "__main__":
    try:
        main()
    except ReslabError as exc:  # a missing run or data folder: its one-line message, not a traceback
        raise SystemExit(f"tta_views.py: error: {exc}") from None
