"""Images per second of the streaming data path at 224x224, and of training ResNet-18/50 with it.

    python benchmarks/make_image_folder.py --images 2000 --out /tmp/folder-2k
    nice -n 10 python benchmarks/stream_throughput.py loader --data /tmp/folder-2k
    nice -n 10 python benchmarks/stream_throughput.py train --data /tmp/folder-2k --model resnet18

``loader``: the same training images (``--batches`` batches of ``--batch-size``, after one batch
of warm-up) through, in this order, each with ``--workers`` worker processes:

* ``reslab``: :class:`reslab.data.streaming.StreamingLoader` (decode straight to the crop, JPEG
  draft decoding, uint8 batches, one float conversion and normalisation per batch);
* ``reslab, no draft``: the same with JPEG draft decoding switched off (what the draft pays);
* ``plain DataLoader``: a ``torch.utils.data.DataLoader`` over a Dataset that, per image, opens
  it with Pillow, converts it to RGB, cuts the same random-resized crop, resizes it, flips it,
  turns it into a float tensor and normalises it (torchvision's ``ToTensor`` and ``Normalize``
  written out), then the default collate: the usual per-image pipeline, without torchvision.

``train``: SGD steps of MODEL (channels_last, bf16 autocast where the CPU has it, as ``reslab
train``) on batches from the streaming loader at 224, ``--iterations`` of them after one of
warm-up; then the same steps on one batch held in memory (the model's own speed, no data), so
the loader's share shows. With ``--workers 0`` the CPU time of this process is the whole cost
(decoding included in the first line).

Wall-clock figures depend on the load of the machine: the load average is printed with them.
``loader --workers 0`` decodes in the main process, so its CPU milliseconds per image are the
whole cost of each pipeline, which the load of a shared machine hardly changes.
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

from reslab.data.readers import find_splits
from reslab.inference.interop import IMAGENET_MEAN, IMAGENET_STD

SIZE = 224


class PlainDataset(torch.utils.data.Dataset):
    """The per-image baseline: Pillow decode, RGB, crop, resize, flip, float tensor, normalise."""

    def __init__(self, files: list[str], labels: list[int], seed: int = 0) -> None:
        self.files, self.labels, self.seed = files, labels, seed
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image

        from reslab.data.transforms import random_resized_box

        rng = random.Random(self.seed * 1_000_003 + index)
        with Image.open(self.files[index]) as image:
            rgb = image.convert("RGB")
        crop = rgb.crop(tuple(round(v) for v in random_resized_box(*rgb.size, rng))).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        return (tensor - self.mean) / self.std, self.labels[index]


def time_batches(batches, count: int) -> tuple[float, float]:
    """(images per second, CPU milliseconds per image of this process) over ``count`` batches
    after the first (warm-up: worker start). With ``--workers 0`` the CPU time is all the work,
    and does not depend on what else runs on the machine, as wall time does."""
    iterator = iter(batches)
    next(iterator)
    seen, start, cpu = 0, time.perf_counter(), time.process_time()
    for _, (images, _) in zip(range(count), iterator):
        seen += len(images)
    return seen / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / seen


def loader_benchmark(args: argparse.Namespace) -> dict:
    from reslab.data import transforms
    from reslab.data.streaming import BadImages, PathTable, StreamingLoader

    source = find_splits(args.data).train
    needed = (args.batches + 1) * args.batch_size
    if needed > len(source.files):
        raise SystemExit(f"{args.data} has {len(source.files)} training images; {needed} are needed")
    order = np.random.default_rng(0).permutation(len(source.files))[:needed]
    files, labels = [source.files[i] for i in order], [source.labels[i] for i in order]
    torch.set_num_threads(1)

    def reslab_loader() -> StreamingLoader:
        return StreamingLoader(PathTable(str(source.location), files), labels, source.classes, args.batch_size,
                               train=True, image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, workers=args.workers,
                               bad_images=BadImages(len(files)), seed=0)

    results = {}
    results["reslab"] = time_batches(reslab_loader(), args.batches)
    transforms.USE_DRAFT = False  # the workers fork after this: they see it too
    results["reslab, no draft"] = time_batches(reslab_loader(), args.batches)
    transforms.USE_DRAFT = True
    plain = torch.utils.data.DataLoader(PlainDataset(files, labels), batch_size=args.batch_size, shuffle=False,
                                        num_workers=args.workers)
    results["plain DataLoader"] = time_batches(plain, args.batches)
    return results


def train_benchmark(args: argparse.Namespace) -> dict:
    from reslab.data.streaming import BadImages, PathTable, StreamingLoader
    from reslab.precision import resolve_precision
    from reslab.registry import create_model

    torch.set_num_threads(args.threads or torch.get_num_threads())
    source = find_splits(args.data).train
    loader = StreamingLoader(PathTable(str(source.location), source.files), source.labels, source.classes,
                             args.batch_size, train=True, image_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             workers=args.workers, bad_images=BadImages(len(source.files)))
    model = create_model(args.model, num_classes=len(source.classes)).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    bf16 = resolve_precision("auto", torch.device("cpu"))[0] == "bf16"

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def timed(batches) -> tuple[float, float]:
        """(images/s, CPU ms/image of this process) of the steps after the first."""
        iterator = iter(batches)
        step(*next(iterator))
        seen, wall, cpu = 0, time.perf_counter(), time.process_time()
        for _, (images, labels) in zip(range(args.iterations), iterator):
            step(images, labels)
            seen += len(labels)
        return seen / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / seen

    streamed = timed(loader)
    batch = next(iter(loader))
    in_memory = timed(iter([batch] * (args.iterations + 1)))
    return {f"{args.model} training, streaming": streamed,
            f"{args.model} training, one batch held in memory": in_memory}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    loader = sub.add_parser("loader", help="loader images/s: reslab streaming against a plain per-image DataLoader")
    loader.add_argument("--batches", type=int, default=15)
    loader.add_argument("--batch-size", type=int, default=64)
    trainer = sub.add_parser("train", help="training images/s of a model at 224 on the streaming path")
    trainer.add_argument("--model", default="resnet18")
    trainer.add_argument("--iterations", type=int, default=8)
    trainer.add_argument("--batch-size", type=int, default=32)
    trainer.add_argument("--threads", type=int, default=0, help="torch threads of the training process; 0 = default")
    for command in (loader, trainer):
        command.add_argument("--data", type=Path, required=True, help="a class-folder tree (make_image_folder.py)")
        command.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    results = loader_benchmark(args) if args.command == "loader" else train_benchmark(args)
    load = os.getloadavg()
    for name, rate in results.items():
        if isinstance(rate, tuple):
            print(f"{name:50s} {rate[0]:8.1f} images/s {rate[1]:9.2f} CPU ms/image in the main process")
        else:
            print(f"{name:55s} {rate:8.1f} images/s")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
