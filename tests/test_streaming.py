"""The streaming data path (issue 33): folders of photos of any size and mode, the path choice,
the transforms, bad files, the held-out fraction, shards and mid-epoch resume, end to end."""

from __future__ import annotations

import io
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.data.pipeline import choose_pipeline
from reslab.data.readers import find_splits
from reslab.data.streaming import BadImages, PathTable, StreamingLoader
from reslab.data.transforms import BadImage, centre_box, random_resized_box, read_crop
from reslab.errors import DataError
from reslab.train.config import TrainConfig
from reslab.train.data import load_training_data
from reslab.train.distributed import DistributedEnv

CLASSES = ("apple", "boat", "cloud")
MODES = ("RGB", "L", "RGBA", "CMYK", "P")
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def colour_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """An image whose left half is one colour and right half another (so flips and rotations show)."""
    rng = np.random.default_rng(seed)
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = rng.integers(0, 256, 3)
    pixels[:, width // 2:] = rng.integers(0, 256, 3)
    image = Image.fromarray(pixels)
    return image.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)


def save(image: Image.Image, path: Path) -> None:
    if path.suffix == ".jpg" and image.mode in ("RGBA", "P"):
        path = path.with_suffix(".png")
    if path.suffix in (".webp", ".png") and image.mode == "CMYK":
        path = path.with_suffix(".jpg")
    image.save(path)


def make_folder(root: Path, per_class: int, *, seed: int = 0) -> Path:
    """``root/<class>/`` with ``per_class`` images each, of varied sizes, modes and formats."""
    rng = random.Random(seed)
    for c, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            mode = MODES[(i + c) % len(MODES)]
            suffix = (".jpg", ".png", ".webp")[i % 3]
            save(colour_image(mode, rng.randint(20, 90), rng.randint(20, 90), seed * 1000 + c * 100 + i),
                 folder / f"{name}{i:02d}{suffix}")
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """train/ (3 classes x 12 images, plus a corrupt JPEG, an EXIF-rotated one, a hidden file and
    notes.txt) and val/ (3 x 4)."""
    root = tmp_path_factory.mktemp("photos")
    make_folder(root / "train", 12, seed=1)
    make_folder(root / "val", 4, seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    colour_image("RGB", 60, 30, 7).save(root / "train" / "apple" / "rotated.jpg", exif=exif)
    buffer = io.BytesIO()
    colour_image("RGB", 64, 64, 8).save(buffer, format="JPEG")
    (root / "train" / "boat" / "corrupt.jpg").write_bytes(buffer.getvalue()[:300])
    (root / "train" / "cloud" / ".hidden.jpg").write_bytes(buffer.getvalue())
    (root / "train" / "cloud" / "notes.txt").write_text("not an image")
    return root


def streaming_config(data: Path, **overrides) -> TrainConfig:
    values = dict(model="resnet20", data=str(data), epochs=1, batch_size=8, base_batch_size=8, image_size=16,
                  workers=0, eval_batch_size=16, progress="quiet", bad_image_limit=0.05, tta_flip=False,
                  tta_translate=0, small_crop=0, small_crop_part=0.0)
    return TrainConfig.from_recipe("fast", **{**values, **overrides})


def loader_for(root: Path, batch_size: int = 4, **kwargs) -> StreamingLoader:
    source = find_splits(root).train
    options = dict(train=True, image_size=16, mean=MEAN, std=STD, workers=0,
                   bad_images=BadImages(len(source.files), 0.05, announce=False))
    return StreamingLoader(PathTable(str(source.location), source.files), source.labels, source.classes, batch_size,
                           **{**options, **kwargs})


# ----------------------------------------------------------------------------- folders and the path choice

def test_non_images_and_hidden_files_are_skipped_and_counted(photos):
    splits = find_splits(photos)
    assert splits.train.skipped == {"hidden": 1, "not an image": 1}
    assert len(splits.train.files) == 3 * 12 + 2 and splits.test.location == photos / "val" and splits.val is None
    assert not any(name.endswith((".txt", ".hidden.jpg")) for name in splits.train.files)


def test_empty_class_folder_and_class_mismatch_are_one_line_errors(tmp_path):
    root = make_folder(tmp_path / "data" / "train", 2)
    make_folder(tmp_path / "data" / "val", 1)
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="empty holds no image files"):
        find_splits(tmp_path / "data")
    (root / "empty" / "notes.txt").unlink()
    (root / "empty").rmdir()
    (tmp_path / "data" / "val" / "dragon").mkdir()
    colour_image("RGB", 20, 20, 0).save(tmp_path / "data" / "val" / "dragon" / "d.png")
    with pytest.raises(DataError, match=r"val has classes that .*train lacks: dragon;") as error:
        load_training_data(streaming_config(tmp_path / "data"), DistributedEnv(), torch.device("cpu"))
    assert "\n" not in str(error.value)


def test_path_choice(photos, tiny_cifar):
    budget = 2**30
    cifar = find_splits(tiny_cifar).train.files
    assert choose_pipeline("auto", cifar, 300, image_size=None, model_input_size=32, budget=budget).kind == "memory"
    assert choose_pipeline("auto", cifar, 300, image_size=None, model_input_size=224, budget=budget).kind == "memory"
    small = choose_pipeline("auto", cifar, 300, image_size=None, model_input_size=32, budget=1000)
    assert small.kind == "stream" and "over the budget" in small.reason
    resized = choose_pipeline("auto", cifar, 300, image_size=64, model_input_size=32, budget=budget)
    assert resized.kind == "stream" and "--image-size 64" in resized.reason
    mixed = choose_pipeline("auto", find_splits(photos).train.files, 50, image_size=None, model_input_size=32,
                            budget=budget)
    assert mixed.kind == "stream" and "differ in size" in mixed.reason
    assert choose_pipeline("stream", cifar, 300, image_size=None, model_input_size=32, budget=budget).kind == "stream"
    with pytest.raises(DataError, match="official CIFAR files are read in memory"):
        choose_pipeline("stream", cifar, 300, image_size=None, model_input_size=32, budget=budget, official_format=True)


def test_cifar_keeps_the_in_memory_path(tiny_cifar):
    config = streaming_config(tiny_cifar, image_size=None, batch_size=32, base_batch_size=32)
    data = load_training_data(config, DistributedEnv(), torch.device("cpu"))
    assert data.pipeline == "memory" and type(data.train).__name__ == "BatchLoader"
    assert "data path: in-memory tensor" in data.summary and data.input_size == 32


def test_a_set_that_looks_uniform_but_is_not_streams_with_the_reason(tmp_path):
    for split, count in (("train", 70), ("val", 4)):
        for c, name in enumerate(CLASSES[:2]):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                colour_image("RGB", 12, 12, i).save(tmp_path / split / name / f"{i:03d}.png")
    colour_image("RGB", 20, 14, 0).save(tmp_path / "train" / "apple" / "001.png")  # between the sampled headers
    data = load_training_data(streaming_config(tmp_path, image_size=None, workers=0), DistributedEnv(),
                              torch.device("cpu"))
    assert data.pipeline == "stream" and data.input_size == 32  # resnet20's input size
    assert "decoding for the in-memory path found" in data.summary and "001.png is 20x14" in data.summary


# ----------------------------------------------------------------------------- transforms

def test_transforms_give_the_size_and_range_asked(photos):
    files = find_splits(photos).train.files
    readable = [f for f in files if not f.endswith("corrupt.jpg")]
    for path in readable:
        for crop in (read_crop(path, 24, rng=random.Random(0), flip=True), read_crop(path, 24)):
            assert crop.shape == (24, 24, 3) and crop.dtype == np.uint8
    images, labels = next(iter(loader_for(photos)))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert images.is_contiguous(memory_format=torch.channels_last)
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    assert low - 1e-5 <= images.min() and images.max() <= high + 1e-5 and images.std() > 0.1


def test_random_resized_box_stays_inside_with_the_allowed_area_and_aspect():
    rng = random.Random(0)
    for _ in range(200):
        width, height = rng.randint(10, 500), rng.randint(10, 500)
        left, top, right, bottom = random_resized_box(width, height, rng)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_exif_orientation_is_applied(photos):
    path = str(photos / "train" / "apple" / "rotated.jpg")  # stored 60x30 left/right halves; shown 30x60 top/bottom
    crop = read_crop(path, 32).astype(int)  # evaluation: the centre 30x30 of the upright 30x60 image
    with Image.open(path) as image:
        stored = np.asarray(image.convert("RGB")).astype(int)
    left_colour, right_colour = stored[15, 5], stored[15, 55]
    # rotated clockwise, the stored left half is on top: the centre crop shows the top colour in its top rows
    assert np.abs(crop[2, 16] - left_colour).max() < 40 and np.abs(crop[29, 16] - right_colour).max() < 40


def test_jpeg_draft_decodes_large_photos_at_a_reduced_scale_with_the_same_crop(tmp_path, monkeypatch):
    from PIL import JpegImagePlugin

    drafts = []
    original = JpegImagePlugin.JpegImageFile.draft
    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                        lambda self, mode, size: drafts.append(size) or original(self, mode, size))
    pixels = np.linspace(0, 255, 1600 * 1200 * 3).reshape(1200, 1600, 3).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "big.jpg", quality=95)
    crop = read_crop(str(tmp_path / "big.jpg"), 96).astype(float)  # resize 110, crop 96: decoded at 1/8
    with Image.open(tmp_path / "big.jpg") as image:  # the same box from the full decode
        full = image.convert("RGB").resize((96, 96), Image.Resampling.BILINEAR, box=centre_box(1600, 1200, 96, 110))
    assert drafts and np.abs(crop - np.asarray(full, dtype=float)).mean() < 3


# ----------------------------------------------------------------------------- bad input

def test_unreadable_and_bomb_images_are_refused_with_a_reason(photos, monkeypatch):
    with pytest.raises(BadImage, match="truncated|broken|cannot identify|Error"):
        read_crop(str(photos / "train" / "boat" / "corrupt.jpg"), 16)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BadImage, match="decompression bomb"):
        read_crop(str(photos / "train" / "boat" / "boat00.jpg"), 16)


def test_a_corrupt_image_is_skipped_named_and_counted(photos, capsys):
    bad = BadImages(38, limit=0.05)
    loader = loader_for(photos, batch_size=38, drop_last=False, bad_images=bad)
    images, labels = next(iter(loader))
    assert len(labels) == 38  # the corrupt one replaced by another image: the batch keeps its size
    assert list(bad.found) == [str(photos / "train" / "boat" / "corrupt.jpg")]
    assert "skipped unreadable image" in capsys.readouterr().err and "corrupt.jpg" in capsys.readouterr().err + \
        str(bad.found)
    evaluation = loader_for(photos, batch_size=38, train=False, bad_images=BadImages(38, limit=0.05))
    images, labels = next(iter(evaluation))
    assert len(labels) == 37  # evaluation leaves it out


def test_too_many_bad_images_stop_the_run(photos):
    loader = loader_for(photos, batch_size=38, drop_last=False, bad_images=BadImages(38, limit=0.01, announce=False))
    with pytest.raises(DataError, match=r"1 of 38 images cannot be read, more than the --bad-image-limit of 0.01 \(0\).*corrupt"):
        next(iter(loader))


# ----------------------------------------------------------------------------- splits, shards, resume

def test_val_fraction_holds_out_a_class_balanced_share(tmp_path):
    make_folder(tmp_path / "one", 10)
    data = load_training_data(streaming_config(tmp_path / "one", val=0.2), DistributedEnv(), torch.device("cpu"))
    assert data.val is None and data.pipeline == "stream"
    held = np.bincount(data.test.labels, minlength=3)
    assert held.tolist() == [2, 2, 2] and np.bincount(data.train.labels).tolist() == [8, 8, 8]
    with pytest.raises(DataError, match="no test/ or val/ folder.*--val 0.1"):
        load_training_data(streaming_config(tmp_path / "one"), DistributedEnv(), torch.device("cpu"))


def test_val_is_a_count_or_a_fraction_on_the_command_line():
    import argparse

    from reslab.argtypes import count_or_fraction
    from reslab.train.data import held_out_count

    assert count_or_fraction("5000") == 5000 and isinstance(count_or_fraction("5000"), int)
    assert count_or_fraction("0.1") == 0.1
    for text in ("1.5", "-1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            count_or_fraction(text)
    assert held_out_count(5000, 50000) == 5000 and held_out_count(0.1, 50000) == 5000 and held_out_count(0.01, 10) == 1


def test_each_rank_reads_its_own_shard(photos):
    seen = []
    for rank in (0, 1):
        loader = loader_for(photos, batch_size=8, rank=rank, world_size=2)
        loader.set_epoch(3)
        seen.append(torch.cat([loader.epoch_indices(3)]).tolist())
        assert len(list(loader)) == len(loader) == 4
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) == len(seen[1]) == 19
    assert seen[0] != loader_for(photos, rank=0, world_size=2).epoch_indices(4).tolist()  # reshuffled per epoch


def test_mid_epoch_resume_sees_the_same_remaining_batches(photos):
    whole = loader_for(photos, batch_size=8, workers=2)
    whole.set_epoch(1)
    expected = [(images.clone(), labels.clone()) for images, labels in whole]
    stopped = loader_for(photos, batch_size=8)
    stopped.set_epoch(1)
    for _ in zip(range(2), stopped):
        pass
    state = stopped.state_dict()
    assert (state["epoch"], state["batches_done"]) == (1, 2)
    resumed = loader_for(photos, batch_size=8)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(expected) - 2
    for (images, labels), (want_images, want_labels) in zip(rest, expected[2:]):
        assert torch.equal(labels, want_labels) and torch.equal(images, want_images)


def test_the_bad_files_found_before_a_stop_still_count_after_resume(photos):
    corrupt = str(photos / "train" / "boat" / "corrupt.jpg")
    first = loader_for(photos, batch_size=38, drop_last=False)
    next(iter(first))
    state = first.state_dict()
    assert state["bad_images"] == {corrupt: first.bad_images.found[corrupt]}
    resumed = loader_for(photos, batch_size=38, drop_last=False,
                         bad_images=BadImages(38, limit=0.05, announce=False))
    resumed.load_state_dict(state)
    assert list(resumed.bad_images.found) == [corrupt]
    # an older checkpoint without the record still loads
    loader_for(photos, batch_size=38, drop_last=False).load_state_dict({"epoch": 0, "batches_done": 0})


# ----------------------------------------------------------------------------- end to end

def test_reslab_train_on_a_photo_folder_streams(photos, tmp_path, capsys):
    from reslab.cli import main

    out = tmp_path / "run"
    status = main(["train", "resnet20", "--data", str(photos), "--out", str(out), "--epochs", "1",
                   "--batch-size", "8", "--image-size", "16", "--workers", "1", "--bad-image-limit", "0.05",
                   "--eval-batch-size", "16", "--progress", "plain", "--threads", "1", "--small-crop", "0",
                   "--small-crop-part", "0", "--no-compile", "--no-tta-flip", "--tta-translate", "0"])
    printed = capsys.readouterr()
    assert status in (0, None), printed.err
    assert "data path: streaming" in printed.out and "differ in size" in printed.out
    assert "1 hidden file, 1 not an image file" in printed.out
    assert "corrupt.jpg" in printed.err
    assert (out / "model.safetensors").exists() and (out / "result.json").exists()


def test_a_streaming_run_stopped_mid_epoch_resumes_to_the_weights_of_an_uninterrupted_one(photos, tmp_path):
    from reslab.train import train
    from reslab.train.state import read_config
    from reslab.train.trainer import TrainingInterrupted

    class StopAt:
        def after_backward(self, model, iteration):
            if iteration == 5:  # the second of epoch 2's four batches
                os.kill(os.getpid(), signal.SIGTERM)

    def run(out: Path, **extra) -> dict:
        config = streaming_config(photos, out=str(out), epochs=2, threads=1, compile=False, eval_interval=0)
        train(config, **extra)
        return torch.load(out / "checkpoint.pt", weights_only=True)

    reference = run(tmp_path / "reference")
    with pytest.raises(TrainingInterrupted):
        run(tmp_path / "stopped", extensions=[StopAt()])
    saved = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["progress"]
    assert (saved["loader"]["epoch"], saved["loader"]["batches_done"]) == (1, 2)
    assert list(saved["loader"]["bad_images"]) == [str(photos / "train" / "boat" / "corrupt.jpg")]  # found in epoch 1
    train(read_config(tmp_path / "stopped"), resume=True)
    resumed = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(resumed["model"][k], reference["model"][k]) for k in reference["model"])


def test_workers_leave_sigint_and_sigterm_to_the_training_process(photos):
    """A signal to the whole process group (Ctrl-C, a scheduler's SIGTERM) must not kill a worker
    while the training process finishes its step and saves its checkpoint."""
    loader = loader_for(photos, batch_size=4, workers=1)
    batches = iter(loader)
    next(batches)
    worker = loader._data_loader()._iterator._workers[0]
    for stop in (signal.SIGINT, signal.SIGTERM):
        os.kill(worker.pid, stop)
    for _ in range(3):
        next(batches)
    assert worker.is_alive()
