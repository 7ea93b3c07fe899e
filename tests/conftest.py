"""Shared fixtures: small slices of the real CIFAR-10 in ../shared (read-only)."""

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR10_DIR = REPO.parent / "shared" / "datasets" / "cifar10"


def copy_cifar_slice(dest: Path, train_per_class: int, test_per_class: int) -> Path:
    """Copy the first N images of each class of each split into a class-folder tree."""
    if not CIFAR10_DIR.is_dir():
        pytest.skip(f"CIFAR-10 not found at {CIFAR10_DIR}")
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for class_dir in sorted((CIFAR10_DIR / split).iterdir()):
            out = dest / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for image in sorted(class_dir.iterdir())[:n]:
                shutil.copyfile(image, out / image.name)
    return dest


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    """A class-folder CIFAR-10 slice: 20 train and 10 test images per class (300 PNGs)."""
    return copy_cifar_slice(tmp_path_factory.mktemp("tiny_cifar"), 20, 10)


@pytest.fixture(scope="session")
def small_cifar(tmp_path_factory) -> Path:
    """A larger slice for tests that must see learning: 200 train and 50 test images per class."""
    return copy_cifar_slice(tmp_path_factory.mktemp("small_cifar"), 200, 50)


@pytest.fixture(scope="session", autouse=True)
def _private_data_cache(tmp_path_factory):
    """Decoded-data caches of the tests' temporary slices go to a temporary folder, not ~/.cache."""
    patch = pytest.MonkeyPatch()
    patch.setenv("RESLAB_CACHE", str(tmp_path_factory.mktemp("reslab-cache")))
    yield
    patch.undo()
