"""A folder of photos-like images of varied sizes, built from CIFAR-10, for the streaming benchmarks.

    python benchmarks/make_image_folder.py --images 2000 --out /tmp/folder-2k --seed 0

CIFAR-10's PNGs (../shared/datasets/cifar10) upscaled (bicubic) to random sizes and saved as
JPEG: ``OUT/train/<class>/`` gets ``--images`` training images and ``OUT/val/<class>/`` gets
``--val-images`` (default a fifth as many) from CIFAR-10's test split, the same number from each
class (the first files in sorted order of each class folder; with more images than CIFAR holds
per class, files are reused at another size). Each image's shorter side is drawn uniformly from
``--min-side``..``--max-side`` and its aspect ratio log-uniformly from 3/4..4/3 (landscape or
portrait), so the folder has the mixed sizes of real photos, not their content: a 32x32 image
blown up holds no more information, so accuracy on it says nothing about real photos. Sizes and
the order of work are a function of ``--seed``; the output is the same on every run.

Write it outside the repository (under /tmp): 2,000 training images take ~55 MB with their validation images, 20,000 ~550 MB.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10"
ASPECT_RANGE = (3 / 4, 4 / 3)


def plan(split_dir: Path, count: int, rng: random.Random, min_side: int, max_side: int) -> list[tuple[str, str, int, int]]:
    """(source PNG, output path relative to the split, width, height) of ``count`` images, balanced over classes."""
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    jobs = []
    for c, name in enumerate(classes):
        files = sorted(os.listdir(split_dir / name))
        for i in range(count // len(classes) + (c < count % len(classes))):
            short = rng.randint(min_side, max_side)
            aspect = math.exp(rng.uniform(*map(math.log, ASPECT_RANGE)))
            width, height = (round(short * aspect), short) if aspect >= 1 else (short, round(short / aspect))
            source = files[i % len(files)]
            jobs.append((str(split_dir / name / source), f"{name}/{Path(source).stem}-{i}.jpg", width, height))
    return jobs


def make_image(job: tuple[str, str, int, int], out: str, quality: int) -> None:
    from PIL import Image

    source, relative, width, height = job
    target = Path(out) / relative
    with Image.open(source) as image:
        image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(target, quality=quality)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, required=True, help="training images (OUT/train)")
    parser.add_argument("--val-images", type=int, default=None, help="validation images (OUT/val); default images / 5")
    parser.add_argument("--out", type=Path, required=True, help="output folder (outside the repository, e.g. /tmp/folder-2k)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, default=128, help="smallest shorter side in pixels")
    parser.add_argument("--max-side", type=int, default=640, help="largest shorter side in pixels")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cifar", type=Path, default=CIFAR10, help="CIFAR-10 as class folders (train/, test/)")
    args = parser.parse_args(argv)
    if args.out.resolve().is_relative_to(REPO):
        parser.error(f"--out {args.out} is inside the repository; write generated images under /tmp")
    from reslab.data.progress import progress_bar

    rng = random.Random(args.seed)
    val_images = args.images // 5 if args.val_images is None else args.val_images
    work = [("train", "train", args.images), ("val", "test", val_images)]
    for out_split, cifar_split, count in work:
        jobs = plan(args.cifar / cifar_split, count, rng, args.min_side, args.max_side)
        split_out = args.out / out_split
        for folder in {Path(j[1]).parent for j in jobs}:
            (split_out / folder).mkdir(parents=True, exist_ok=True)
        with progress_bar(len(jobs), f"writing {split_out}", unit="image") as bar, \
                ProcessPoolExecutor(args.workers) as pool:
            for _ in pool.map(make_image, jobs, [str(split_out)] * len(jobs), [args.quality] * len(jobs), chunksize=64):
                bar.update(1)
    print(f"{args.out}: {args.images:,} training and {val_images:,} validation JPEGs, shorter side "
          f"{args.min_side}-{args.max_side} px, seed {args.seed}", file=sys.stderr)


if __name__ == "__main__":
    main()
