"""What torchvision would bring to the streaming path: its decoder and transforms, CPU time per image.

reslab's own environment cannot run this: torch 2.13.0's CPU wheel cannot import torchvision.
In a separate environment with the versions that can (a 5.5 GB CUDA build, see docs/own-images.md):

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    nice -n 10 /tmp/tv/bin/python benchmarks/stream_torchvision.py --data /tmp/folder-2k

It takes the same training images as ``benchmarks/stream_throughput.py loader`` (class folders in
sorted order, the first ``(batches + 1) * batch_size`` of a permutation seeded by 0; the first batch
is warm-up) and runs, in this process on one thread, the training transform at 224 through

* ``torchvision.io.decode_jpeg + transforms.v2``: libjpeg-turbo decoding to a uint8 tensor, then
  ``RandomResizedCrop(224, antialias=True)``, ``RandomHorizontalFlip``, ``ToDtype(float32, scale)``,
  ``Normalize`` on tensors;
* ``torchvision.transforms on PIL images``: the reference recipe's ``RandomResizedCrop(224)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` on the Pillow image;
* ``reslab read_crop``: :func:`reslab.data.transforms.read_crop` (imported from this checkout's
  ``src/``), then the same float conversion and normalisation, per image,

and prints the CPU milliseconds per image of each, measured alike in one process.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def training_files(root: Path) -> list[str]:
    """``root/train/<class>/<image>`` in reslab's order (sorted classes, sorted files; image suffixes only)."""
    from PIL import Image

    suffixes = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    train = root / "train"
    return [str(train / c / f) for c in sorted(os.listdir(train)) if (train / c).is_dir() and not c.startswith(".")
            for f in sorted(os.listdir(train / c)) if not f.startswith(".") and Path(f).suffix.lower() in suffixes]


def cpu_ms_per_image(files: list[str], transform, warmup: int) -> float:
    for path in files[:warmup]:
        transform(path)
    start = time.process_time()
    for path in files[warmup:]:
        transform(path)
    return 1000 * (time.process_time() - start) / (len(files) - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    import torchvision
    from PIL import Image
    from torchvision import transforms
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import v2

    torch.set_num_threads(1)
    torch.manual_seed(0)
    files = training_files(args.data)
    order = np.random.default_rng(0).permutation(len(files))[:(args.batches + 1) * args.batch_size]
    files = [files[i] for i in order]

    tensor_pipeline = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                                  v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    pil_pipeline = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def with_decode_jpeg(path: str) -> torch.Tensor:
        return tensor_pipeline(decode_jpeg(read_file(path), mode=ImageReadMode.RGB))

    def with_pil(path: str) -> torch.Tensor:
        with Image.open(path) as image:
            return pil_pipeline(image.convert("RGB"))

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from reslab.data.transforms import read_crop

    rng = random.Random(0)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def with_reslab(path: str) -> torch.Tensor:
        pixels = torch.from_numpy(read_crop(path, 224, rng=rng, flip=True)).permute(2, 0, 1)
        return (pixels.float().div_(255) - mean) / std

    for name, transform in (("torchvision.io.decode_jpeg + transforms.v2", with_decode_jpeg),
                            ("torchvision.transforms on PIL images", with_pil), ("reslab read_crop", with_reslab)):
        print(f"{name:55s} {cpu_ms_per_image(files, transform, args.batch_size):8.2f} CPU ms/image", flush=True)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {len(files) - args.batch_size} images "
          f"of {args.data}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
