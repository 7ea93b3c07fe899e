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

``train``: ``reslab train MODEL`` on the folder, streaming at 224 (bf16 autocast where the CPU
has it), for ``--iterations`` iterations logged one by one; the images per second of the
iterations after the first two (steps.jsonl), and of the same steps on one in-memory random
batch (the model's own speed, no data), so the loader's share shows.

The figures depend on the load of the machine: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
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


def time_batches(batches, count: int) -> float:
    """Images per second over ``count`` batches after the first (warm-up: worker start)."""
    iterator = iter(batches)
    next(iterator)
    seen, start = 0, time.perf_counter()
    for _, (images, _) in zip(range(count), iterator):
        seen += len(images)
    return seen / (time.perf_counter() - start)


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
    from reslab.precision import resolve_precision
    from reslab.registry import create_model
    from reslab.train import train
    from reslab.train.config import TrainConfig

    with tempfile.TemporaryDirectory(prefix="reslab-stream-bench-") as out:
        config = TrainConfig.from_recipe("imagenet", model=args.model,
                                         data=str(args.data), out=out, iterations=args.iterations, epochs=None,
                                         batch_size=args.batch_size, base_batch_size=256, image_size=SIZE,
                                         pipeline="stream", workers=args.workers, log_interval=1, eval_interval=0,
                                         eval_subset=20, progress="quiet", threads=args.threads)
        train(config)
        steps = [json.loads(line) for line in (Path(out) / "steps.jsonl").read_text().splitlines()]
    streamed = statistics.median(s["img_per_s"] for s in steps[2:])
    # The model alone: the same steps on one random batch held in memory.
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = create_model(args.model, num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(args.batch_size, 3, SIZE, SIZE).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    bf16 = resolve_precision("auto", torch.device("cpu"))[0] == "bf16"
    times = []
    for _ in range(max(3, args.iterations // 2)):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return {f"{args.model} training, streaming": streamed,
            f"{args.model} training, one random batch in memory": args.batch_size / statistics.median(times[1:])}


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
        print(f"{name:55s} {rate:8.1f} images/s")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores; torch {torch.__version__}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
