"""reslab.data: readers, cache, download, subsets and the augmented batch loader."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import sys
import pickle
import struct
import tarfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab.data import (BatchLoader, ImageDataset, balanced_subset, channel_stats, default_cache_dir, download_cifar,
                         load_dataset, split_validation)
from reslab.data import download, readers
from reslab.data.augment import AugmentParams, crop_flip, cutout_, pad_images
from reslab.errors import DataError

USER_CACHE = default_cache_dir()  # before the fixture below points RESLAB_CACHE elsewhere


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Each test caches into its own folder, never the user's."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("RESLAB_CACHE", str(folder))
    return folder


CIFAR10_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
RAW = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # a normalisation that keeps pixel values


def indexed_dataset(n: int = 100, num_classes: int = 10, size: int = 8, seed: int = 0) -> ImageDataset:
    """Random images whose pixel (0, 0) spells their index (channel 0: low byte, 1: high byte)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(1, 256, (n, size, size, 3), dtype=torch.uint8, generator=generator)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    labels = torch.arange(n) % num_classes
    return ImageDataset(images, labels, [f"class{c}" for c in range(num_classes)], "indexed")


def ids(dataset: ImageDataset) -> list[int]:
    return (dataset.images[:, 0, 0, 0].long() + 256 * dataset.images[:, 0, 0, 1].long()).tolist()


def collect(loader: BatchLoader, epochs: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for _ in range(epochs) for x, y in loader]


# ------------------------------------------------------------------------------------------
# Class-folder reader


def test_class_folder_reader_reads_both_splits(tiny_cifar):
    train = load_dataset(tiny_cifar, "train", progress=False)
    test = load_dataset(tiny_cifar, "test", progress=False)
    assert train.images.shape == (200, 32, 32, 3) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous() and train.labels.dtype == torch.int64
    assert train.classes == CIFAR10_CLASSES and train.class_counts() == [20] * 10
    assert len(test) == 100 and test.class_counts() == [10] * 10
    first = sorted((tiny_cifar / "train" / "cat").iterdir())[0]
    index = train.classes.index("cat") * 20
    assert train.labels[index] == 3
    assert np.array_equal(train.images[index].numpy(), np.asarray(Image.open(first).convert("RGB")))


def test_class_folder_reader_accepts_a_split_folder(tiny_cifar):
    direct = load_dataset(tiny_cifar / "test", "test", progress=False)
    assert torch.equal(direct.images, load_dataset(tiny_cifar, "test", progress=False).images)
    with pytest.raises(DataError, match="is the 'test' split"):
        load_dataset(tiny_cifar / "test", "train", progress=False)


def test_decoding_progress_is_a_bar_on_a_terminal_and_two_plain_lines_elsewhere(tiny_cifar, capsys, monkeypatch):
    load_dataset(tiny_cifar, "test", cache=False)  # pytest's stderr is not a terminal
    lines = capsys.readouterr().err.splitlines()
    assert "\r" not in "".join(lines) and len(lines) == 2
    assert lines[0] == f"decoding {tiny_cifar / 'test'} (100 images)..."
    assert lines[1].startswith(f"decoding {tiny_cifar / 'test'}: 100 images in ")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    load_dataset(tiny_cifar, "test", cache=False)
    assert "\r" in capsys.readouterr().err  # tqdm redraws in place
    load_dataset(tiny_cifar, "test", cache=False, progress=False)
    assert capsys.readouterr().err == ""


def test_class_folder_reader_converts_other_modes_to_rgb(tmp_path):
    for name, mode in (("grey", "L"), ("alpha", "RGBA"), ("palette", "P")):
        (tmp_path / name).mkdir()
        Image.new(mode, (4, 3), 7).save(tmp_path / name / "a.png")
    data = load_dataset(tmp_path, progress=False)
    assert data.images.shape == (3, 3, 4, 3) and data.classes == ["alpha", "grey", "palette"]


def make_tree(root: Path, images_per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(images_per_class):
                Image.new("RGB", (8, 8), (i, 2 * i, 3)).save(root / split / c / f"{i}.png")
    return root


def test_bad_class_folders_raise_data_errors_naming_the_culprit(tmp_path):
    root = make_tree(tmp_path / "data")
    with pytest.raises(DataError, match="does not exist.*reslab train --download"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no 'val' split folder"):
        load_dataset(root, "val", progress=False)
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        load_dataset(tmp_path / "flat")
    (root / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty holds no image files"):
        load_dataset(root, "train", progress=False)
    (root / "train" / "empty").rmdir()

    good = root / "train" / "a" / "0.png"
    truncated = root / "train" / "b" / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match="truncated.png cannot be read as an image"):
        load_dataset(root, "train", progress=False)
    truncated.write_bytes(b"this is no image")
    with pytest.raises(DataError, match="truncated.png cannot be read as an image"):
        load_dataset(root, "train", progress=False)
    truncated.unlink()

    Image.new("RGB", (9, 8)).save(root / "train" / "b" / "wide.png")
    with pytest.raises(DataError, match=r"wide.png is 9x8 pixels but the data set's images are 8x8"):
        load_dataset(root, "train", progress=False)


# ------------------------------------------------------------------------------------------
# Subsets and statistics


def test_balanced_subset_counts():
    data = indexed_dataset(100)
    assert balanced_subset(data, 50).class_counts() == [5] * 10
    assert balanced_subset(data, 53).class_counts() == [6, 6, 6] + [5] * 7
    assert ids(balanced_subset(data, 30, seed=1)) == ids(balanced_subset(data, 30, seed=1))
    assert ids(balanced_subset(data, 30, seed=1)) != ids(balanced_subset(data, 30, seed=2))
    with pytest.raises(DataError, match="cannot take 101 of its 100 images"):
        balanced_subset(data, 101)
    fewer_zeros = data.subset(torch.arange(7, 100))  # class0 keeps 9 images
    with pytest.raises(DataError, match="class 'class0' has 9 images, fewer than the 10"):
        balanced_subset(fewer_zeros, 93)


def test_split_validation_is_disjoint_covering_and_balanced():
    data = indexed_dataset(200)
    train, val = split_validation(data, 50, seed=3)
    assert len(train) == 150 and len(val) == 50
    assert val.class_counts() == [5] * 10 and train.class_counts() == [15] * 10
    assert not set(ids(train)) & set(ids(val))
    assert sorted(ids(train) + ids(val)) == list(range(200))


def test_channel_stats_are_exact_population_statistics():
    data = indexed_dataset(37, size=5)
    pixels = data.images.reshape(-1, 3).double() / 255
    mean, std = channel_stats(data)
    assert np.allclose(mean, pixels.mean(0).numpy(), atol=1e-12)
    assert np.allclose(std, pixels.std(0, unbiased=False).numpy(), atol=1e-12)


# ------------------------------------------------------------------------------------------
# Augmentation


def test_flip_reverses_the_width_axis():
    images = indexed_dataset(4, size=6).images
    params = AugmentParams(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long),
                           torch.tensor([True, False, True, False]))
    out = crop_flip(images, torch.arange(4), params, 6, 6)
    for j in range(6):
        assert torch.equal(out[0, :, j], images[0, :, 5 - j])  # column j = original column W-1-j
        assert torch.equal(out[1, :, j], images[1, :, j])
    assert torch.equal(out[2], images[2].flip(1))  # dim 1 of [H, W, C] is the width


def test_crop_is_a_translation_with_zeros_entering_at_the_border():
    images = indexed_dataset(2, size=8).images
    padded = pad_images(images, 3)
    params = AugmentParams(torch.tensor([0, 6]), torch.tensor([5, 3]), torch.tensor([False, False]))
    out = crop_flip(padded, torch.arange(2), params, 8, 8)
    # image 0: top-left of the crop at (0, 5) in the padded image = (-3, +2) in the original
    assert torch.equal(out[0, 3:, :6], images[0, :5, 2:])
    assert (out[0, :3] == 0).all() and (out[0, :, 6:] == 0).all()
    # image 1: (6, 3) in the padded image = (+3, 0): shifted up, zeros entering at the bottom
    assert torch.equal(out[1, :5], images[1, 3:]) and (out[1, 5:] == 0).all()


def test_reflect_padding_matches_torch_reflect_pad():
    images = indexed_dataset(3, size=8).images
    expected = torch.nn.functional.pad(images.permute(0, 3, 1, 2).float(), (4, 4, 4, 4), mode="reflect")
    assert torch.equal(pad_images(images, 4, "reflect").permute(0, 3, 1, 2).float(), expected)


def test_cutout_zeroes_one_clipped_square():
    images = torch.ones(3, 3, 10, 10)
    params = AugmentParams(None, None, None, cutout_y=torch.tensor([5, 0, 9]), cutout_x=torch.tensor([5, 0, 2]))
    cutout_(images, params, 4)
    assert (images[0, :, 3:7, 3:7] == 0).all() and images[0].sum() == 3 * (100 - 16)
    assert (images[1, :, :2, :2] == 0).all() and images[1].sum() == 3 * (100 - 4)  # clipped at the corner
    assert (images[2, :, 7:, 0:4] == 0).all() and images[2].sum() == 3 * (100 - 12)


def test_train_batches_are_translated_flipped_crops_of_their_images():
    data = indexed_dataset(64, size=8)
    loader = BatchLoader(data, 16, train=True, crop_padding=2, **RAW)
    padded = pad_images(data.images, 2)
    crops = {}  # every allowed crop (offset dy, dx in 0..4, flipped or not) of every image
    for dy in range(5):
        for dx in range(5):
            for flipped in (False, True):
                window = padded[:, dy:dy + 8, dx:dx + 8]
                for image in (window.flip(2) if flipped else window):
                    crops.setdefault(image.numpy().tobytes(), (dy, dx, flipped))
    seen = []
    for x, y in loader:
        assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.is_contiguous(memory_format=torch.channels_last)
        for image in x.round().to(torch.uint8).permute(0, 2, 3, 1):
            assert image.numpy().tobytes() in crops, "a batch image is not a crop of a data set image"
            seen.append(crops[image.numpy().tobytes()])
    assert any(flipped for _, _, flipped in seen) and any((dy, dx) != (2, 2) for dy, dx, _ in seen)


def test_small_crops_are_windows_of_the_padded_images_in_the_first_epochs_only():
    data = indexed_dataset(64, size=8)
    loader = BatchLoader(data, 16, train=True, crop_padding=2, **RAW)
    loader.use_small_crops(5, 2)
    padded = pad_images(data.images, 2)
    windows = {}  # every 5x5 window of every padded 12x12 image (offsets 0..7), flipped or not
    for dy in range(8):
        for dx in range(8):
            window = padded[:, dy:dy + 5, dx:dx + 5]
            for image in torch.cat([window, window.flip(2)]):
                windows.setdefault(image.numpy().tobytes(), (dy, dx))
    offsets = []
    for epoch in range(3):
        for x, _ in loader:
            assert x.shape == ((16, 3, 5, 5) if epoch < 2 else (16, 3, 8, 8))
            assert x.is_contiguous(memory_format=torch.channels_last)
            if epoch < 2:
                for image in x.round().to(torch.uint8).permute(0, 2, 3, 1):
                    assert image.numpy().tobytes() in windows, "a small crop is not a window of its padded image"
                    offsets.append(windows[image.numpy().tobytes()])
    rows = {dy for dy, _ in offsets}
    assert min(rows) == 0 and max(rows) == 7 and len(rows) == 8  # the whole padded image is reachable
    with pytest.raises(ValueError, match="small crops of 9 pixels for 1 epochs do not fit 8x8 images"):
        loader.use_small_crops(9, 1)
    with pytest.raises(ValueError, match="small crops are for training"):
        BatchLoader(data, 16, train=False, **RAW).use_small_crops(5, 2)


def flipped_per_epoch(loader: BatchLoader, data: ImageDataset, epochs: int) -> torch.Tensor:
    """bool [epochs, N]: whether image i came out mirrored in epoch e (images are asymmetric)."""
    rows = []
    for epoch in range(epochs):
        seen = torch.zeros(len(data), dtype=torch.bool)
        for batch, start in enumerate(range(0, len(data), loader.batch_size)):
            indices = torch.arange(start, start + loader.batch_size)
            out = loader.assemble(indices, epoch, batch).round().to(torch.uint8).permute(0, 2, 3, 1)
            for i, image in zip(indices.tolist(), out):
                mirrored = torch.equal(image, data.images[i].flip(1))
                assert mirrored or torch.equal(image, data.images[i])
                seen[i] = mirrored
        rows.append(seen)
    return torch.stack(rows)


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    data = indexed_dataset(64, size=6)
    loader = BatchLoader(data, 16, train=True, crop_padding=0, alternating_flip=True, seed=3, **RAW)
    flips = flipped_per_epoch(loader, data, epochs=4)
    assert 16 < int(flips[0].sum()) < 48  # epoch 0: a coin per image
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0]) and torch.equal(flips[3], ~flips[0])
    again = BatchLoader(data, 16, train=True, crop_padding=0, alternating_flip=True, seed=3, **RAW)
    assert torch.equal(flipped_per_epoch(again, data, epochs=1)[0], flips[0])  # seeded: resumable
    coins = flipped_per_epoch(BatchLoader(data, 16, train=True, crop_padding=0, seed=3, **RAW), data, epochs=4)
    assert not all(torch.equal(coins[e + 1], ~coins[e]) for e in range(3))  # the default: independent coins


def test_normalisation_and_channels_last_option():
    data = indexed_dataset(10, size=4)
    mean, std = channel_stats(data)
    x, _ = next(iter(BatchLoader(data, 10, train=False, mean=mean, std=std, channels_last=False)))
    assert x.is_contiguous()
    expected = (data.images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-5)
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)


# ------------------------------------------------------------------------------------------
# Loader order, resume, sharding


def test_eval_mode_keeps_every_sample_in_order_unaugmented():
    data = indexed_dataset(45, size=4)
    loader = BatchLoader(data, 20, train=False, **RAW)
    batches = collect(loader)
    assert len(loader) == len(batches) == 3 and [len(y) for _, y in batches] == [20, 20, 5]
    images = torch.cat([x for x, _ in batches]).round().to(torch.uint8).permute(0, 2, 3, 1)
    assert torch.equal(images, data.images) and torch.equal(torch.cat([y for _, y in batches]), data.labels)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, collect(loader)))


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    data = indexed_dataset(50, size=4)
    loader = BatchLoader(data, 10, train=True, seed=7, **RAW)
    epoch0, epoch1 = loader.epoch_indices(0), loader.epoch_indices(1)
    assert sorted(epoch0.tolist()) == list(range(50)) and not torch.equal(epoch0, epoch1)
    again = BatchLoader(data, 10, train=True, seed=7, **RAW)
    assert torch.equal(again.epoch_indices(1), epoch1)
    assert not torch.equal(BatchLoader(data, 10, train=True, seed=8, **RAW).epoch_indices(1), epoch1)
    first, second = collect(loader), collect(loader)  # iterating moves on to the next epoch
    assert torch.equal(torch.cat([y for _, y in first]), data.labels[epoch0])
    assert torch.equal(torch.cat([y for _, y in second]), data.labels[epoch1])
    again.set_epoch(1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(collect(again), second))


def test_drop_last_defaults_to_train():
    data = indexed_dataset(45, size=4)
    assert len(BatchLoader(data, 20, train=True, **RAW)) == 2
    assert len(collect(BatchLoader(data, 20, train=True, drop_last=False, **RAW))) == 3
    with pytest.raises(ValueError, match="no full batch of 64 in the 45 samples"):
        BatchLoader(data, 64, train=True, **RAW)


@pytest.mark.parametrize("cutout, small_crops", [(0, 0), (3, 0), (0, 2)])
def test_mid_epoch_resume_replays_exactly(cutout, small_crops):
    data = indexed_dataset(100, size=8)
    options = dict(train=True, seed=5, cutout=cutout, **RAW)

    def loader() -> BatchLoader:
        made = BatchLoader(data, 16, **options)
        made.use_small_crops(6, small_crops)  # epochs 0 and 1 (the resumed one) on 6x6 crops
        return made

    reference = collect(loader(), epochs=3)
    assert reference[0][0].shape[-1] == (6 if small_crops else 8) and reference[-1][0].shape[-1] == 8

    interrupted = loader()
    collect(interrupted)
    for i, _ in enumerate(interrupted):
        if i == 2:
            break
    state = dict(interrupted.state_dict())
    assert state == {"epoch": 1, "batches_done": 3}

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # what a trainer's epoch loop does: stays inside epoch 1
    rest = collect(resumed, epochs=2)
    assert len(rest) == 2 * 6 - 3
    for (x, y), (x_ref, y_ref) in zip(rest, reference[6 + 3:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)


def test_distributed_shards_are_disjoint_equal_and_cover_the_epoch():
    data = indexed_dataset(103, size=4)
    shards = [BatchLoader(data, 12, train=True, seed=1, rank=r, world_size=4, **RAW) for r in range(4)]
    whole = BatchLoader(data, 12, train=True, seed=1, **RAW)
    for epoch in (0, 1):
        parts = [s.epoch_indices(epoch) for s in shards]
        assert {len(p) for p in parts} == {25}
        union = torch.cat(parts)
        assert len(set(union.tolist())) == 100  # disjoint; 3 of 103 left out this epoch
        assert set(union.tolist()) == set(whole.epoch_indices(epoch)[:100].tolist())
    batches = [collect(s) for s in shards]
    assert {len(b) for b in batches} == {len(shards[0])} and len(shards[0]) == 25 // 3
    assert all(x.shape[0] == 3 for b in batches for x, _ in b)
    evaluation = [BatchLoader(data, 12, train=False, rank=r, world_size=4, **RAW) for r in range(4)]
    assert sorted(i for e in evaluation for i in e.epoch_indices(0).tolist()) == list(range(103))
    with pytest.raises(ValueError, match="not divisible by world_size"):
        BatchLoader(data, 10, train=True, rank=0, world_size=4, **RAW)


# ------------------------------------------------------------------------------------------
# Official CIFAR formats


class Python2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING), as the official CIFAR pickles are."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_string(self, obj):
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_python2_string
    dispatch[bytes] = save_python2_string


def dump_python2(path: Path, obj: dict) -> None:
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"cnumpy._core.", b"cnumpy.core."))  # Python 2 numpy's names


def cifar_rows(dataset: ImageDataset) -> np.ndarray:
    """The official layout: per image the red plane, then green, then blue, each row-major."""
    return dataset.images.permute(0, 3, 1, 2).reshape(len(dataset), -1).numpy()


def write_cifar_python(folder: Path, train: ImageDataset, test: ImageDataset, cifar100: bool = False) -> Path:
    folder.mkdir(parents=True)
    if cifar100:
        dump_python2(folder / "meta", {"fine_label_names": train.classes, "coarse_label_names": ["all"]})
        for name, part in (("train", train), ("test", test)):
            dump_python2(folder / name, {"data": cifar_rows(part), "fine_labels": part.labels.tolist(),
                                         "coarse_labels": [0] * len(part), "batch_label": name})
        return folder
    dump_python2(folder / "batches.meta", {"label_names": train.classes, "num_vis": 3072})
    for i, rows in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
        part = train.subset(torch.from_numpy(rows))
        dump_python2(folder / f"data_batch_{i}", {"data": cifar_rows(part), "labels": part.labels.tolist(),
                                                  "batch_label": f"training batch {i} of 5"})
    dump_python2(folder / "test_batch", {"data": cifar_rows(test), "labels": test.labels.tolist()})
    return folder


def write_cifar_binary(folder: Path, train: ImageDataset, test: ImageDataset, cifar100: bool = False) -> Path:
    folder.mkdir(parents=True)
    names = "fine_label_names.txt" if cifar100 else "batches.meta.txt"
    (folder / names).write_text("\n".join(train.classes) + "\n\n")
    if cifar100:
        (folder / "coarse_label_names.txt").write_text("all\n")
    parts = {"test.bin" if cifar100 else "test_batch.bin": test}
    if cifar100:
        parts["train.bin"] = train
    else:
        for i, rows in enumerate(np.array_split(np.arange(len(train)), 5), start=1):
            parts[f"data_batch_{i}.bin"] = train.subset(torch.from_numpy(rows))
    for name, part in parts.items():
        labels = part.labels.numpy().astype(np.uint8)[:, None]
        label_bytes = [np.zeros_like(labels), labels] if cifar100 else [labels]  # coarse, then fine
        (folder / name).write_bytes(np.concatenate([*label_bytes, cifar_rows(part)], axis=1).tobytes())
    return folder


@pytest.fixture(scope="module")
def tiny_splits(tiny_cifar) -> tuple[ImageDataset, ImageDataset]:
    return (load_dataset(tiny_cifar, "train", cache=False, progress=False),
            load_dataset(tiny_cifar, "test", cache=False, progress=False))


def assert_same(a: ImageDataset, b: ImageDataset) -> None:
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.classes == b.classes


@pytest.mark.parametrize("writer, folder, cifar100", [
    (write_cifar_python, "cifar-10-batches-py", False), (write_cifar_python, "cifar-100-python", True),
    (write_cifar_binary, "cifar-10-batches-bin", False), (write_cifar_binary, "cifar-100-binary", True)])
def test_official_formats_read_back_exactly(tmp_path, tiny_splits, writer, folder, cifar100):
    train, test = tiny_splits
    written = writer(tmp_path / "extracted" / folder, train, test, cifar100)
    for path in (written, written.parent):  # the official folder, or the folder it was extracted into
        assert_same(load_dataset(path, "train", progress=False), train)
        assert_same(load_dataset(path, "test", progress=False), test)
    with pytest.raises(DataError, match="not 'val'; hold out a validation set"):
        load_dataset(written, "val")


def test_bad_official_files_raise_data_errors_naming_the_file(tmp_path, tiny_splits):
    train, test = tiny_splits
    folder = write_cifar_python(tmp_path / "py", train, test)
    batch = folder / "data_batch_3"
    original = batch.read_bytes()
    batch.write_bytes(original[: len(original) // 2])
    with pytest.raises(DataError, match="data_batch_3 is truncated or corrupt"):
        load_dataset(folder, cache=False)
    dump_python2(batch, {"data": cifar_rows(train)[:2], "labels": [0, 10]})
    with pytest.raises(DataError, match=r"data_batch_3 has labels 0..10 outside the 10 classes"):
        load_dataset(folder, cache=False)
    batch.unlink()
    with pytest.raises(DataError, match="lacks data_batch_3 of the official cifar10-python files"):
        load_dataset(folder, cache=False)

    binary = write_cifar_binary(tmp_path / "bin", train, test)
    (binary / "test_batch.bin").write_bytes((binary / "test_batch.bin").read_bytes()[:-5])
    with pytest.raises(DataError, match="test_batch.bin is 307295 bytes, not a whole number of 3073-byte"):
        load_dataset(binary, "test", cache=False)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickles_that_would_run_code_are_refused(tmp_path, tiny_splits):
    folder = write_cifar_python(tmp_path / "cifar-10-batches-py", *tiny_splits)
    marker = tmp_path / "code-ran"
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": RunsCode(marker), "labels": []}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle .*test_batch: it asks for (posix|os)\.system"):
        load_dataset(folder, "test", cache=False)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------
# Cache


def test_cache_hit_is_fast_equal_and_outside_the_data(tiny_cifar, tmp_path, monkeypatch):
    before = sorted(p.relative_to(tiny_cifar) for p in tiny_cifar.rglob("*"))
    start = time.perf_counter()
    first = load_dataset(tiny_cifar, "train", cache_dir=tmp_path, progress=False)
    first_s = time.perf_counter() - start
    monkeypatch.setattr(readers, "decode_images", None)  # a second decode would fail
    start = time.perf_counter()
    second = load_dataset(tiny_cifar, "train", cache_dir=tmp_path, progress=False)
    second_s = time.perf_counter() - start
    assert_same(first, second)
    assert second.source == str(tiny_cifar / "train")
    assert second_s < first_s / 2, (first_s, second_s)
    entries = list((tmp_path / "datasets").iterdir())
    assert len(entries) == 1 and sorted(p.name for p in entries[0].iterdir()) == ["card.json", "images.npy", "labels.npy"]
    assert sorted(p.relative_to(tiny_cifar) for p in tiny_cifar.rglob("*")) == before
    with pytest.raises(DataError, match="lies inside the data folder"):
        load_dataset(tiny_cifar, "train", cache_dir=tiny_cifar / "cache")


def test_changed_source_files_get_a_new_cache_entry(tmp_path):
    root = make_tree(tmp_path / "data")
    load_dataset(root, "train", cache_dir=tmp_path / "cache", progress=False)
    image = root / "train" / "a" / "1.png"
    Image.new("RGB", (8, 8), (200, 0, 0)).save(image)
    os.utime(image, ns=(1, 1))
    changed = load_dataset(root, "train", cache_dir=tmp_path / "cache", progress=False)
    assert changed.images[1, 0, 0].tolist() == [200, 0, 0]
    assert len(list((tmp_path / "cache" / "datasets").iterdir())) == 2


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "bad card"])
def test_corrupt_cache_entry_is_rebuilt(tmp_path, damage):
    root = make_tree(tmp_path / "data")
    original = load_dataset(root, "train", cache_dir=tmp_path / "cache", progress=False)
    (entry,) = (tmp_path / "cache" / "datasets").iterdir()
    images = entry / "images.npy"
    if damage == "flip a byte":
        data = bytearray(images.read_bytes())
        data[-7] ^= 0xFF
        images.write_bytes(bytes(data))
    elif damage == "truncate":
        images.write_bytes(images.read_bytes()[:100])
    else:
        (entry / "card.json").write_text("{")
    with pytest.warns(UserWarning, match="is corrupt .* rebuilding it"):
        rebuilt = load_dataset(root, "train", cache_dir=tmp_path / "cache", progress=False)
    assert_same(rebuilt, original)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(load_dataset(root, "train", cache_dir=tmp_path / "cache", progress=False), original)


@pytest.fixture(scope="session")
def cifar10_train() -> ImageDataset:
    """The full CIFAR-10 training set, through the user's cache (decoded once per machine)."""
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"CIFAR-10 not found at {CIFAR10_DIR}")
    return load_dataset(CIFAR10_DIR, "train", cache_dir=USER_CACHE, progress=False)


def test_normalisation_constants_of_the_real_cifar10(cifar10_train):
    assert len(cifar10_train) == 50_000 and cifar10_train.class_counts() == [5000] * 10
    assert cifar10_train.classes == CIFAR10_CLASSES
    mean, std = channel_stats(cifar10_train)
    assert np.allclose(mean, (0.4914, 0.4822, 0.4465), atol=5e-5)
    assert np.allclose(std, (0.2470, 0.2435, 0.2616), atol=5e-5)


# ------------------------------------------------------------------------------------------
# Download


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def archive_server(tmp_path, tiny_splits):
    """A CIFAR-10 python-version archive of the tiny split, served on 127.0.0.1: (base URL, md5)."""
    served = tmp_path / "served"
    write_cifar_python(tmp_path / "build" / "cifar-10-batches-py", *tiny_splits)
    served.mkdir()
    with tarfile.open(served / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    md5 = hashlib.md5((served / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    yield f"http://127.0.0.1:{server.server_address[1]}", md5, served
    server.shutdown()
    thread.join()


def test_download_verifies_and_extracts(tmp_path, archive_server, tiny_splits, monkeypatch):
    base, md5, _ = archive_server
    monkeypatch.setenv(download.MIRROR_ENV, base)
    monkeypatch.setitem(download.ARCHIVES, "cifar10", download.Archive("cifar-10-python.tar.gz", md5,
                                                                       "cifar-10-batches-py"))
    root = tmp_path / "data" / "cifar10"
    assert_same(load_dataset(root, "train", download=True, progress=False), tiny_splits[0])
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]  # no archive or temp files left
    assert_same(load_dataset(root, "test", download=True, progress=False), tiny_splits[1])  # no second download


def test_download_with_wrong_md5_keeps_nothing(tmp_path, archive_server):
    base, _, _ = archive_server
    root = tmp_path / "cifar10"
    with pytest.raises(DataError, match="MD5 .* but cifar-10-python.tar.gz has MD5 c58f30108f718f92721af3b95e74349a"):
        download_cifar("cifar10", root, url=f"{base}/cifar-10-python.tar.gz", progress=False)
    assert os.listdir(root) == []
    with pytest.raises(DataError, match="could not download .*missing.tar.gz"):
        download_cifar("cifar10", root, url=f"{base}/missing.tar.gz", progress=False)
    with pytest.raises(DataError, match="cannot tell which data set to download"):
        load_dataset(tmp_path / "mystery", download=True)


def test_download_refuses_archives_escaping_their_folder(tmp_path, archive_server):
    base, _, served = archive_server
    evil = tmp_path / "evil.txt"
    evil.write_text("x")
    with tarfile.open(served / "evil.tar.gz", "w:gz") as tar:
        tar.add(evil, arcname="cifar-10-batches-py/../../evil.txt")
    md5 = hashlib.md5((served / "evil.tar.gz").read_bytes()).hexdigest()
    root = tmp_path / "cifar10"
    with pytest.raises(DataError, match="lies outside cifar-10-batches-py/"):
        download_cifar("cifar10", root, url=f"{base}/evil.tar.gz", md5=md5, progress=False)
    assert os.listdir(root) == []  # the member would have landed at root/evil.txt
