"""Trained CIFAR-10 weights: ``create_model(name, pretrained=True)``, their cards, and where
the files are found.

A *manifest* (``weights/manifest.json`` in the package) records, per model name, the weights
file, its sha256, an optional https URL, and the model's *card*: accuracy on the full CIFAR-10
test set (single view and with flips, per class), the recipe and every training value, epochs,
seed, wall time, machine, reslab commit, parameter count, mean/std, input size and label names,
and the command that trained it (model cards: Mitchell et al. 2019, "Model Cards for Model
Reporting"). The accuracies are measured on the stored file itself (``benchmarks/train_zoo.py``).

A weights file is looked for, in this order:

1. ``$RESLAB_WEIGHTS_DIR/<file>`` (a folder of weights; it may hold its own ``manifest.json``,
   whose entries add to or replace the package's);
2. the package's own ``weights/<file>`` (the small CIFAR weights ship with reslab);
3. the cache, ``$RESLAB_CACHE/weights/<file>`` (default ``~/.cache/reslab/weights``), filled by
   downloading the entry's URL, as ``torch.hub`` does: to a temporary file in the same folder,
   hash checked, then renamed, so a cut or corrupted download never leaves a file behind.

Every file is checked against its sha256 before it is read; a mismatch is refused. Files are
safetensors only (no pickle), with the reslab model card (:mod:`reslab.checkpoint`) in their
metadata, so every command that loads a checkpoint can load them as well.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from reslab.errors import CheckpointError

WEIGHTS_DIR_ENV = "RESLAB_WEIGHTS_DIR"
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "reslab-weights/1"
# The fields every card holds (the tests check them; ``benchmarks/train_zoo.py add`` writes them).
CARD_FIELDS = ("model", "num_classes", "input_size", "mean", "std", "label_names", "params", "dtype", "metrics",
               "recipe", "config", "epochs", "seed", "train_images", "train_seconds", "wall_seconds", "machine",
               "reslab_commit", "torch_version", "command")
METRIC_FIELDS = ("test_images", "accuracy_pct", "accuracy_flip_pct", "per_class_accuracy_pct", "evaluation")


# ------------------------------------------------------------------------------------------
# The manifest


def weights_dir_from_env() -> Optional[Path]:
    """The folder ``$RESLAB_WEIGHTS_DIR`` names, if set (it must exist)."""
    value = os.environ.get(WEIGHTS_DIR_ENV)
    if not value:
        return None
    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"{WEIGHTS_DIR_ENV}={value} is not a folder; point it at a folder of weights files "
                              "or unset it")
    return folder


def read_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The entries of ``folder/manifest.json`` (none if the file is absent)."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        entries = data["models"]
        if data.get("format") != MANIFEST_FORMAT or not isinstance(entries, dict):
            raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a reslab weights manifest ({exc}); restore it from the package "
                              "or rewrite it with benchmarks/train_zoo.py add") from None
    return entries


def write_manifest(folder: Path, entries: dict[str, dict[str, Any]]) -> None:
    """Write ``folder/manifest.json`` atomically, models in natural name order."""
    from reslab.checkpoint import atomic_write_bytes
    from reslab.registry import _natural_key

    ordered = {name: entries[name] for name in sorted(entries, key=_natural_key)}
    text = json.dumps({"format": MANIFEST_FORMAT, "models": ordered}, indent=1, sort_keys=False) + "\n"
    atomic_write_bytes(folder / MANIFEST_FILE, text.encode())


def manifest() -> dict[str, dict[str, Any]]:
    """Every model with weights: the package's entries, then those of ``$RESLAB_WEIGHTS_DIR``."""
    entries = dict(read_manifest(PACKAGE_WEIGHTS_DIR))
    env_dir = weights_dir_from_env()
    if env_dir is not None:
        entries.update(read_manifest(env_dir))
    return entries


def pretrained_names() -> list[str]:
    """Names of the models that have trained weights, in natural order."""
    from reslab.registry import _natural_key

    return sorted(manifest(), key=_natural_key)


def pretrained_entry(name: str) -> dict[str, Any]:
    """The manifest entry of ``name`` (a registry name or alias); a one-line error listing the
    models with weights otherwise."""
    from reslab.registry import pretrained_name

    entries = manifest()
    key = name if name in entries else pretrained_name(name)
    if key not in entries:
        have = ", ".join(pretrained_names()) or "none"
        raise CheckpointError(f"no pretrained weights for {name!r}; models with weights: {have} "
                              "(`reslab models --pretrained`)")
    return entries[key]


def pretrained_cfg(name: str) -> dict[str, Any]:
    """The card of ``name``'s weights with the file, sha256 and URL: what ``model.pretrained_cfg`` holds."""
    entry = pretrained_entry(name)
    card = dict(entry["card"])
    card["input_size"] = tuple(card["input_size"])
    from reslab.inference.preprocess import default_resize_size

    size = int(card["input_size"][-1])
    # How the evaluation transform crops and resizes (timm's crop_pct and interpolation):
    # Preprocess.from_pretrained_cfg(cfg) builds it.
    view = {"crop_pct": size / default_resize_size(size), "interpolation": "bilinear"}
    return {"name": name, "file": entry["file"], "sha256": entry["sha256"], "url": entry.get("url"), **view, **card}


# ------------------------------------------------------------------------------------------
# Finding, downloading and checking a file


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where downloaded weights go: ``$RESLAB_CACHE/weights`` (default ``~/.cache/reslab/weights``)."""
    from reslab.data.cache import default_cache_dir

    return default_cache_dir() / "weights"


def check_hash(path: Path, expected: str) -> Path:
    """``path`` if its sha256 is ``expected``; a one-line error naming the file otherwise."""
    actual = sha256_of(path)
    if actual != expected:
        raise CheckpointError(f"{path} has sha256 {actual[:12]}..., not the manifest's {expected[:12]}...: the file "
                              "is corrupt or was replaced; delete it (a cached file is downloaded again) or "
                              "reinstall reslab")
    return path


def download(url: str, destination: Path, sha256: str) -> Path:
    """Download ``url`` to ``destination`` through a temporary file in the same folder, keeping it
    only if the whole file arrived and its sha256 is ``sha256`` (``torch.hub``'s downloader)."""
    from http.client import HTTPException
    from urllib.error import URLError
    from urllib.parse import urlparse

    if urlparse(url).scheme not in ("https", "http"):
        raise CheckpointError(f"weights URL {url!r} is not http(s); fix the manifest entry")
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(destination), hash_prefix=sha256, progress=True)
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise CheckpointError(f"download of {url} to {destination} has the wrong sha256 (not the manifest's "
                              f"{sha256[:12]}...); nothing was kept: retry, or fix the URL or the manifest") from None
    except (URLError, HTTPException, OSError) as exc:
        raise CheckpointError(f"download of {url} to {destination} failed ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); nothing was kept: retry, or set {WEIGHTS_DIR_ENV} to a folder "
                              "that holds the file") from None
    return destination


def weights_file(name: str) -> Path:
    """The hash-checked weights file of ``name``: from ``$RESLAB_WEIGHTS_DIR``, the package, or
    the cache (downloading it there from the entry's URL if needed)."""
    entry = pretrained_entry(name)
    file, sha256, url = entry["file"], entry["sha256"], entry.get("url")
    env_dir = weights_dir_from_env()
    for folder in ([env_dir] if env_dir is not None else []) + [PACKAGE_WEIGHTS_DIR, cache_dir()]:
        if (folder / file).is_file():
            return check_hash(folder / file, sha256)
    if not url:
        raise CheckpointError(f"weights file {file} of {name} is in none of {WEIGHTS_DIR_ENV}, the package or "
                              f"{cache_dir()}, and its entry has no URL; reinstall reslab or put the file in "
                              f"{WEIGHTS_DIR_ENV}")
    return download(url, cache_dir() / file, sha256)


# ------------------------------------------------------------------------------------------
# Building models


def load_pretrained(name: str) -> nn.Module:
    """The model ``name`` with its trained weights, in eval mode, with ``pretrained_cfg`` (and
    timm's older name for it, ``default_cfg``) set to its card."""
    from reslab.checkpoint import load_weights, read_checkpoint

    cfg = pretrained_cfg(name)
    path = weights_file(name)
    state, card = read_checkpoint(path)
    if card is None:
        raise CheckpointError(f"{path} has no reslab model card; rewrite it with benchmarks/train_zoo.py add")
    model = load_weights(card.build(), state, str(path)).eval()
    model.pretrained_cfg = model.default_cfg = cfg
    return model


def resolve_named_checkpoint(spec: Union[str, os.PathLike]) -> Optional[Path]:
    """For commands that take a checkpoint: the shipped weights file when ``spec`` is not an
    existing path but a model name with weights; ``None`` when it is neither (a path, then).
    A registered model without weights is an error listing those with weights."""
    from reslab.registry import model_info

    text = str(spec)
    if Path(text).exists() or os.sep in text or text.endswith((".safetensors", ".pt", ".pth")):
        return None
    if text not in manifest():
        try:
            model_info(text)
        except ValueError:
            return None
    return weights_file(text)


# ------------------------------------------------------------------------------------------
# The card's figures


def measure(model: nn.Module, dataset, *, batch_size: int = 500) -> dict[str, Any]:
    """The card's metrics of ``model`` on ``dataset``: accuracy single view and with flips
    (logits of each image and its mirror averaged) and per-class accuracy (single view), in
    %, in float32 with BN folded (what ``reslab eval --fp32`` computes)."""
    from reslab.analysis.evaluate import eval_batches, evaluate
    from reslab.inference.fold import folded_for_evaluation

    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" not in cfg or list(cfg.get("label_names") or []) != list(dataset.classes):
        raise ValueError(f"measure() needs a model with pretrained_cfg whose label_names are the data set's classes "
                         f"({dataset.classes})")
    mean, std = cfg["mean"], cfg["std"]
    batches = eval_batches(dataset, mean, std, batch_size=batch_size)
    folded = folded_for_evaluation(model)
    single = evaluate(folded, batches, dataset.classes)
    flips = evaluate(folded, batches, dataset.classes, tta_flip=True)
    return {"test_images": single.num_images, "accuracy_pct": round(100 * single.accuracy, 2),
            "accuracy_flip_pct": round(100 * flips.accuracy, 2),
            "per_class_accuracy_pct": {c: round(100 * a, 1) for c, a in zip(single.class_names, single.per_class_accuracy)
                                       if a is not None},
            "evaluation": "float32, BN folded, final-epoch weights as stored"}


# ------------------------------------------------------------------------------------------
# Printing (reslab models --pretrained)


def format_pretrained_rows(cfgs: list[dict[str, Any]], markdown: bool = False) -> str:
    """The models with weights as a table: accuracy single view and with flips, epochs, time."""
    from reslab.zoo_table import format_table

    header = ["model", "params", "accuracy", "with flips", "epochs", "seed", "training time", "machine", "stored as"]
    body = [[c["name"], f"{c['params']:,}", f"{c['metrics']['accuracy_pct']:.2f}%",
             f"{c['metrics']['accuracy_flip_pct']:.2f}%", f"{c['epochs']:g}", str(c["seed"]),
             f"{c['train_seconds'] / 60:.0f} min", describe_machine(c["machine"]), c["dtype"]] for c in cfgs]
    return format_table(header, body, markdown)


def describe_machine(machine: dict[str, Any]) -> str:
    """``Intel(R) Xeon(R) Processor, 2 cores, bf16`` or ``NVIDIA H100 (cuda), bf16``."""
    where = f"{machine.get('cpu_count')} cores" if machine.get("device") == "cpu" else machine.get("device")
    return f"{machine.get('device_name')}, {where}, {machine.get('precision')}"


def format_card(cfg: dict[str, Any]) -> str:
    """A model card as plain text (``reslab models --pretrained NAME``)."""
    metrics = cfg["metrics"]
    per_class = ", ".join(f"{name} {value:.1f}" for name, value in metrics["per_class_accuracy_pct"].items())
    config = cfg.get("config") or {}
    rows = [
        ("file", f"{cfg['file']} ({cfg['dtype']}), sha256 {cfg['sha256']}"),
        ("url", cfg.get("url") or "- (ships with the package)"),
        ("accuracy", f"{metrics['accuracy_pct']:.2f}% single view, {metrics['accuracy_flip_pct']:.2f}% with flips, on "
                     f"{metrics['test_images']} CIFAR-10 test images ({metrics['evaluation']})"),
        ("per class", per_class + " (% single view)"),
        ("training", f"recipe {cfg['recipe']}, {cfg['epochs']:g} epochs, seed {cfg['seed']}, {cfg['train_images']} "
                     f"images; {cfg['train_seconds'] / 60:.1f} min training, {cfg['wall_seconds'] / 60:.1f} min wall"),
        ("machine", describe_machine(cfg["machine"]) + f", torch {cfg['torch_version']}"),
        ("reslab commit", str(cfg["reslab_commit"])),
        ("parameters", f"{cfg['params']:,}"),
        ("input", f"{tuple(cfg['input_size'])}, mean {tuple(round(m, 4) for m in cfg['mean'])}, "
                  f"std {tuple(round(s, 4) for s in cfg['std'])}"),
        ("labels", ", ".join(cfg["label_names"])),
        ("command", cfg["command"]),
        ("training values", " ".join(f"{k}={v}" for k, v in sorted(config.items()))),
    ]
    if cfg.get("differs_from_command"):
        rows.append(("differs from command", "; ".join(cfg["differs_from_command"])))
    width = max(len(key) for key, _ in rows)
    return "\n".join([f"{cfg['name']} ({cfg['model']}): CIFAR-10 weights trained by reslab"] +
                     [f"  {key:<{width}}  {value}" for key, value in rows])
