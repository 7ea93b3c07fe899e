"""Which of the two data paths a training run takes, and why (one line printed at the start).

* ``memory``: the data set decoded once into one uint8 tensor (cached on disk), batches gathered
  and augmented whole (:class:`~reslab.data.loader.BatchLoader`). It needs every image to have
  one size, and is chosen when that size is no larger than training needs and the decoded set
  fits comfortably in memory: CIFAR and other small sets of small images, trained at their own size.
* ``stream``: files decoded per batch in worker processes (:class:`~reslab.data.streaming.StreamingLoader`),
  random-resized crops at ``--image-size``; memory does not grow with the number of images.

The choice reads the headers of a few files only (the first and 64 spread over the set, about a
millisecond each): a set whose sample agrees in size but that holds another size further on is
found while decoding, and then streamed too (:func:`reslab.train.data.load_training_data`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from reslab.errors import DataError
from reslab.inference.preprocess import SMALL_IMAGE_MAX, default_resize_size

PIPELINES = ("auto", "memory", "stream")
SAMPLED_HEADERS = 64
MEMORY_SHARE = 0.25  # "fits comfortably": at most this share of the memory available


@dataclass(frozen=True)
class PipelineChoice:
    kind: str  # "memory" or "stream"
    reason: str

    def describe(self) -> str:
        name = "in-memory tensor" if self.kind == "memory" else "streaming (files decoded in worker processes)"
        return f"data path: {name}, {self.reason}"


def stream_after(error: Exception) -> PipelineChoice:
    """The choice once decoding a class folder for the in-memory path failed (a size the sampled
    headers missed, or an unreadable file): stream, naming what decoding found without its advice
    to resize or delete the file (the streaming path handles both)."""
    found = str(error).split("; ")[0]
    return PipelineChoice("stream", f"as decoding for the in-memory path found: {found}")


def header_sizes(files: list[str], count: int = SAMPLED_HEADERS) -> set[tuple[int, int]]:
    """The (width, height) of the first file and of ``count`` files spread evenly over ``files``
    (unreadable ones are left out: the loaders deal with them)."""
    from PIL import Image

    step = max(1, len(files) // count)
    sizes = set()
    for path in [files[0], *files[step::step][:count]]:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except Exception:  # noqa: BLE001 - judged when decoded, not here
            continue
    return sizes


def memory_budget(device_type: str = "cpu") -> int:
    """Bytes the decoded data set may take: a quarter of the memory available (of the GPU's too on CUDA)."""
    available = _available_memory()
    if device_type == "cuda":
        import torch

        available = min(available, torch.cuda.mem_get_info()[0])
    return int(available * MEMORY_SHARE)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def choose_pipeline(requested: str, files: list[str], total_images: int, *, image_size: Optional[int],
                    model_input_size: int, budget: int, official_format: bool = False,
                    size_name: str = "--image-size") -> PipelineChoice:
    """``requested`` ('auto', 'memory' or 'stream') resolved for a data set whose training files are
    ``files`` (``total_images`` over all splits), for training at ``image_size`` (None: the images'
    own size on the memory path, ``model_input_size`` on the streaming path). ``size_name`` is what
    the reason calls ``image_size`` (the flag of ``reslab train``; eval says the model's input size)."""
    if requested == "stream" and official_format:
        raise DataError("--pipeline stream reads class folders of image files; the official CIFAR files are read "
                        "in memory: leave --pipeline out, or pass a class-folder copy of the data set")
    if requested != "auto":
        return PipelineChoice(requested, f"as --pipeline {requested} asks")
    if official_format:
        return PipelineChoice("memory", "the official CIFAR files (one size, 32x32)")
    sizes = header_sizes(files)
    if len(sizes) > 1:
        shown = " and ".join(f"{w}x{h}" for w, h in sorted(sizes)[:2])
        return PipelineChoice("stream", f"as the images differ in size ({shown}, ...)")
    if not sizes:
        return PipelineChoice("stream", "as the sampled files could not be opened as images")
    width, height = next(iter(sizes))
    if image_size is not None and (width, height) != (image_size, image_size):
        return PipelineChoice("stream", f"to resize the {width}x{height} images to {size_name} {image_size}")
    target = image_size or model_input_size
    largest = max(SMALL_IMAGE_MAX, default_resize_size(target))
    if min(width, height) > largest:
        return PipelineChoice("stream", f"as the {width}x{height} images are larger than training at {target} "
                                        f"needs (shorter side over {largest})")
    decoded = total_images * width * height * 3
    if decoded > budget:
        return PipelineChoice("stream", f"as {total_images:,} images of {width}x{height} decode to "
                                        f"{decoded / 2**30:.1f} GiB, over the budget of {budget / 2**30:.1f} GiB "
                                        f"(a quarter of the memory available)")
    return PipelineChoice("memory", f"as the images are {width}x{height} (a sample of their headers) and decode to "
                                    f"{_size(decoded)}, under the budget of {_size(budget)} (a quarter of the memory "
                                    "available)")


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"
