"""How fast reslab.data loads CIFAR-10 and assembles augmented batches.

    python benchmarks/data_pipeline.py                      # the real CIFAR-10 in ../shared
    python benchmarks/data_pipeline.py --synthetic          # random images of CIFAR-10's size

1. Load times: the first load of the train split into an empty cache (decode every PNG on all
   cores, write the cache) and the second (cache hit), and that both give the same tensors.
2. Loader throughput on ``--threads`` (default 1) CPU threads: images per second of one epoch
   of batches (gather + augmentation + float conversion + normalisation), for eval mode and the
   train-mode recipes. Compare with training speed (about 1,100 img/s for ResNet-20 on this CPU).
   The load average is printed too: on a shared machine wall-clock numbers fall with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from reslab.data import BatchLoader, ImageDataset, channel_stats, load_dataset

REPO = Path(__file__).resolve().parents[1]
RECIPES = {  # name -> BatchLoader keyword arguments
    "eval (no augmentation)": dict(train=False),
    "train: crop 4 zeros + flip (He et al.)": dict(train=True),
    "train: crop 4 reflect + flip (WRN)": dict(train=True, padding_mode="reflect"),
    "train: crop + flip + cutout 16": dict(train=True, cutout=16),
}


def measure_loads(data: Path) -> ImageDataset:
    with tempfile.TemporaryDirectory(prefix="reslab-cache-") as cache:
        start = time.perf_counter()
        first = load_dataset(data, "train", cache_dir=Path(cache), progress=False)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = load_dataset(data, "train", cache_dir=Path(cache), progress=False)
        second_s = time.perf_counter() - start
    same = torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    print(f"| load of {data} train ({len(first):,} images) | seconds |\n| --- | --- |")
    print(f"| first (decode on all cores + write cache) | {first_s:.2f} |")
    print(f"| second (cache hit) | {second_s:.2f} |")
    print(f"\nsecond load equal to the first: {same}\n")
    if not same:
        sys.exit("the cached data set differs from the decoded one")
    return second


def measure_loader(dataset: ImageDataset, batch_size: int, epochs: int) -> None:
    """Wall-clock img/s, and img per CPU-second of this process (the cost on one core even when
    other processes share the machine)."""
    mean, std = channel_stats(dataset)
    print(f"| loader, batch {batch_size}, {torch.get_num_threads()} thread(s) | img/s (wall) | img/CPU-s | ms/batch |\n"
          "| --- | --- | --- | --- |")
    for name, options in RECIPES.items():
        loader = BatchLoader(dataset, batch_size, mean=mean, std=std, **options)
        next(iter(loader))  # warm-up
        images, start, cpu_start = 0, time.perf_counter(), time.process_time()
        for _ in range(epochs):
            for x, _ in loader:
                images += len(x)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        print(f"| {name} | {images / seconds:,.0f} | {images / cpu_seconds:,.0f} | "
              f"{1000 * seconds / (images / batch_size):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "cifar10")
    parser.add_argument("--synthetic", action="store_true", help="random 50,000 x 32x32 images, no load timing")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for the loader measurement")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"load average before: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores\n")
    if args.synthetic:
        generator = torch.Generator().manual_seed(0)
        dataset = ImageDataset(torch.randint(0, 256, (50_000, 32, 32, 3), dtype=torch.uint8, generator=generator),
                               torch.arange(50_000) % 10, [str(c) for c in range(10)], "synthetic")
    else:
        dataset = measure_loads(args.data)
    torch.set_num_threads(args.threads)
    measure_loader(dataset, args.batch_size, args.epochs)


if __name__ == "__main__":
    main()
