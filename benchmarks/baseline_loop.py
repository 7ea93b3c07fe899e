"""The baseline: the usual PyTorch CIFAR training loop that reslab's trainer is measured against.

This is the loop of the tutorials and of the seed article, kept as it is: a ``Dataset`` that
augments one image at a time with Pillow (pad 4 pixels, random 32x32 crop, random horizontal
flip, then to a normalised float tensor), a ``DataLoader`` with 2 worker processes, batch 128,
fp32 in the default NCHW layout, ResNet-20, SGD with momentum. torchvision is not installed
here, so its ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()`` and
``Normalize`` are written out with Pillow and NumPy, doing the same per-image work.

Images are decoded into memory once (as torchvision's ``CIFAR10`` holds its arrays), here with
``reslab.data.load_dataset`` reading the same class folders; the loop is what is timed.

    python benchmarks/baseline_loop.py --data ../shared/datasets/cifar10 --iterations 50
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class AugmentedImages(Dataset):
    """Images ``uint8 [N, H, W, 3]`` served one at a time, augmented with Pillow as torchvision's
    ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` + ``ToTensor()`` + ``Normalize``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, train: bool = True, padding: int = 4) -> None:
        self.images, self.labels, self.train, self.padding = images, labels, train, padding
        self.mean = np.array(CIFAR10_MEAN, dtype=np.float32)
        self.std = np.array(CIFAR10_STD, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])
        if self.train:
            width, height = image.size
            padded = ImageOps.expand(image, border=self.padding, fill=0)
            left = random.randint(0, 2 * self.padding)
            top = random.randint(0, 2 * self.padding)
            image = padded.crop((left, top, left + width, top + height))
            if random.random() < 0.5:
                image = ImageOps.mirror(image)
        pixels = (np.asarray(image, dtype=np.float32) / 255.0 - self.mean) / self.std
        return torch.from_numpy(pixels.transpose(2, 0, 1).copy()), int(self.labels[index])


def seed_worker(worker_id: int) -> None:
    """Each DataLoader worker seeds Python's random from torch's per-worker seed."""
    random.seed(torch.initial_seed() % 2 ** 32)


def make_loader(images: np.ndarray, labels: np.ndarray, batch_size: int = 128, workers: int = 2) -> DataLoader:
    return DataLoader(AugmentedImages(images, labels), batch_size=batch_size, shuffle=True, num_workers=workers,
                      drop_last=True, persistent_workers=workers > 0, worker_init_fn=seed_worker)


def measure(images: np.ndarray, labels: np.ndarray, iterations: int, warmup: int, batch_size: int = 128,
            workers: int = 2) -> float:
    """Images per second of the baseline loop (data + step) over ``iterations`` steps after ``warmup``."""
    from reslab import create_model

    torch.manual_seed(0)
    model = create_model("resnet20")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model.train()
    batches = iter(make_loader(images, labels, batch_size, workers))
    started = None
    for step in range(warmup + iterations):
        if step == warmup:
            started = time.perf_counter()
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return iterations * batch_size / (time.perf_counter() - started)


def main() -> None:
    from reslab.data import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/datasets/cifar10")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the training process; 0 = torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    train = load_dataset(args.data, "train", progress=False)
    speed = measure(train.images.numpy(), train.labels.numpy(), args.iterations, args.warmup)
    print(f"baseline loop: {speed:.0f} images/s ({torch.get_num_threads()} threads, 2 loader workers, fp32 NCHW, batch 128)")


if __name__ == "__main__":
    main()
