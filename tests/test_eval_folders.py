"""`reslab eval` on class folders of photos (issue 33): a split of varied sizes and modes is
streamed through the evaluation transform of a streaming run (resize and centre crop at the
checkpoint's input size, its mean and std), unreadable files left out and counted; the official
CIFAR files and folders of one size equal to the input size keep the in-memory path."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reslab import create_model
from reslab.checkpoint import make_card, save_model
from reslab.cli import main

CLASSES = ("apple", "boat", "cloud")
INPUT = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    """Smooth random colours (so a random network's predictions vary from image to image)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).convert(mode)


def normalised(image: Image.Image) -> torch.Tensor:
    """float32 [3, H, W] in [0, 1], less the mean, over the std."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255
    return (pixels - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def make_split(root: Path, per_class: int, sizes, seed: int) -> None:
    rng = random.Random(seed)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            width, height = sizes(rng)
            mode = ("RGB", "L", "CMYK")[i % 3] if width != height else "RGB"
            photo(width, height, seed * 1000 + c * 100 + i, mode).save(root / name / f"{name}{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A ResNet-20 of 3 classes as a streaming run saves it: 32 px input, ImageNet's mean and std."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=len(CLASSES))
    for layer in model.modules():
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.momentum = None  # a plain average over the calibration batch
    calibration = torch.stack([normalised(photo(INPUT, INPUT, seed)) for seed in range(64)])
    with torch.no_grad():  # BN statistics and centred logits, so that the predictions of a random net vary
        model(calibration)
        model.eval()
        classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        classifier.bias -= model(calibration).mean(0)
    path = tmp_path_factory.mktemp("run") / "model.safetensors"
    save_model(path, model, make_card("resnet20", model, class_names=list(CLASSES), mean=MEAN, std=STD,
                                      input_size=INPUT, config={"tta_flip": False, "tta_translate": 0}))
    return path


def independent_predictions(path: Path, folder: Path) -> tuple[list[int], list[int]]:
    """Labels and predictions computed image by image: Pillow resize of the centre square of the
    shorter side to 32x32 (small inputs keep the whole square), then the model in float32."""
    from reslab.checkpoint import load_model

    model = load_model(path)
    labels, predictions = [], []
    for label, name in enumerate(CLASSES):
        for file in sorted((folder / name).iterdir()):
            try:
                with Image.open(file) as image:
                    rgb = image.convert("RGB")
            except OSError:
                continue  # the corrupt file, left out
            width, height = rgb.size
            side = min(width, height)
            box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
            with torch.no_grad():
                x = normalised(rgb.resize((INPUT, INPUT), Image.Resampling.BILINEAR, box=box))
                predictions.append(int(model(x[None]).argmax(1)))
            labels.append(label)
    return labels, predictions


def test_eval_streams_a_folder_of_varied_sizes_with_the_runs_transform(checkpoint, tmp_path, capsys):
    data = tmp_path / "photos"
    make_split(data / "train", 1, lambda rng: (rng.randint(33, 60), rng.randint(33, 60)), seed=1)
    make_split(data / "val", 6, lambda rng: (rng.randint(33, 60), rng.randint(33, 60)), seed=2)
    buffer = io.BytesIO()
    photo(40, 40, 9).save(buffer, format="JPEG")
    (data / "val" / "boat" / "corrupt.jpg").write_bytes(buffer.getvalue()[:200])
    out = tmp_path / "eval"
    assert main(["eval", str(checkpoint), "--data", str(data), "--split", "val", "--fp32", "--workers", "0",
                 "--batch-size", "5", "--bad-image-limit", "0.1", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "data path: streaming" in printed.out and "differ in size" in printed.out
    assert "skipped: 1 unreadable file" in printed.out and "corrupt.jpg" in printed.err
    assert "evaluating" in printed.err  # the progress indication
    table = json.loads((out / "eval.json").read_text())
    labels, predictions = independent_predictions(checkpoint, data / "val")
    assert len(set(predictions)) == 3, "a test whose model predicts one class checks little"
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (labels, predictions), 1)
    assert table["num_images"] == 18 and table["data_path"] == "stream" and table["image_size"] == INPUT
    assert table["confusion"] == confusion.tolist()
    assert table["accuracy_pct"] == pytest.approx(100 * np.mean(np.array(labels) == np.array(predictions)))
    assert list(table["unreadable_images"]) == [str(data / "val" / "boat" / "corrupt.jpg")]


def test_a_folder_of_the_input_size_keeps_the_in_memory_path_and_another_size_streams(checkpoint, tmp_path, capsys):
    for side, streamed in ((INPUT, False), (48, True)):
        data = tmp_path / f"square{side}"
        make_split(data / "train", 1, lambda rng: (side, side), seed=3)
        make_split(data / "test", 2, lambda rng: (side, side), seed=4)
        out = tmp_path / f"eval{side}"
        assert main(["eval", str(checkpoint), "--data", str(data), "--fp32", "--workers", "0", "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        table = json.loads((out / "eval.json").read_text())
        assert table["num_images"] == 6
        assert ("data path: streaming" in printed) == streamed and ("data_path" in table) == streamed
    assert "to resize the 48x48 images to the model's input size 32" in printed
