"""Train, ship, verify and tabulate reslab's trained CIFAR-10 weights (docs/pretrained.md).

    python benchmarks/train_zoo.py train resnet20 plain20     # `reslab train` with the zoo command; resumes a stopped run
    python benchmarks/train_zoo.py train resnet56.sdepth      # the same with stochastic depth, p_L = 0.5 (VARIANTS)
    python benchmarks/train_zoo.py train resnet32 --epochs 100  # the same recipe run longer: runs/zoo/resnet32_e100_seed0
    python benchmarks/train_zoo.py add runs/zoo/resnet20_seed0  # final weights -> src/reslab/weights, measured, with its card
    python benchmarks/train_zoo.py verify                       # re-measure every shipped model on the full test set
    python benchmarks/train_zoo.py table                        # the README's reproduction table, from the manifest

Every reslab figure of the table comes from the manifest, which ``add`` writes by evaluating the
stored file (float16 weights by default) on the full 10,000-image test set, single view and with
flips, in float32 with BN folded; ``verify`` evaluates the shipped files again and compares. The
shipped weights are the final epoch of seed 0, trained on all 50,000 training images; the recipe
and its length (50 epochs; 100 for ResNet-32 and ResNet-44, retrained after their 50-epoch runs fell
short of the paper) were chosen on the 45k/5k split (``--val 5000``), never on the test set.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from reslab.checkpoint import CARD_KEY, atomic_write_bytes, load_weights, read_checkpoint
from reslab.complexity import count_parameters
from reslab.errors import ReslabError
from reslab.pretrained import (PACKAGE_WEIGHTS_DIR, describe_machine, load_pretrained, manifest, measure,
                               pretrained_names, read_manifest, sha256_of, write_manifest)
from reslab.registry import _natural_key
from reslab.train.config import RECIPES

DATA = "../shared/datasets/cifar10"
RUNS = "runs/zoo"
# The zoo's training command: the fast recipe for 50 epochs, the test set evaluated after every
# epoch (single view) so the curve is in metrics.jsonl; the same for every model of the family.
# Its values are reslab's `zoo` recipe (`--recipe zoo`), read from there, and written out as flags.
ZOO_RECIPE = "fast"
ZOO_VALUES = {key: value for key, value in RECIPES["zoo"].items() if RECIPES[ZOO_RECIPE].get(key) != value}
ZOO_EPOCHS = ZOO_VALUES["epochs"]
ZOO_EVAL_FLAGS = ("--eval-interval", "1", "--no-tta-flip", "--tta-translate", "0")
# Config fields that say where and how verbosely a run ran, not what it trained; and the recipe's
# name, whose values are compared one by one (`--recipe zoo` is this command under one name).
PLACE_FIELDS = {"out", "data", "progress", "cache_dir", "download", "tensorboard", "device", "threads", "log_interval",
                "model", "seed", "recipe"}
STORAGE = {"float16": torch.float16, "float32": torch.float32}
# Tagged variants (timm's `architecture.tag`): the zoo command plus these training values, e.g.
# `train resnet56.sdepth` trains ResNet-56 with stochastic depth (Huang et al. 2016: survival
# falling linearly to p_L = 0.5), shipped as `create_model("resnet56.sdepth", pretrained=True)`.
VARIANTS: dict[str, dict[str, Any]] = {"sdepth": {"stochastic_depth": 0.5}}

# Published CIFAR-10 test errors (%), C10+ augmentation, single 32x32 view
# (/work/shared/reference/papers.md). He et al. 2015 Table 6 (ResNet-110: best of 5, mean 6.61);
# akamaster/pytorch_resnet_cifar10 (option A, 200 epochs); chenyaofo/pytorch-cifar-models
# (option B-style shortcuts, 200 epochs, 100 - its top-1 accuracy). The paper has no table for the
# plain nets (Fig. 6, curves only). preact_resnet110's paper figure is He et al. 2016 (Identity
# Mappings, C10+, median of 5 runs).
REFERENCE_ERRORS: dict[str, tuple[Optional[float], Optional[float], Optional[float]]] = {
    "resnet20": (8.75, 8.27, 7.40), "resnet32": (7.51, 7.37, 6.47), "resnet44": (7.17, 6.90, 5.99),
    "resnet56": (6.97, 6.61, 5.63), "resnet110": (6.43, 6.32, None),
    "plain20": (None, None, None), "plain32": (None, None, None), "plain44": (None, None, None),
    "plain56": (None, None, None), "preact_resnet110": (6.37, None, None),
}


def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """``'resnet56.sdepth'`` -> ``('resnet56', {'stochastic_depth': 0.5})``; an untagged name has no values."""
    from reslab.registry import split_tag

    model, tag = split_tag(name)
    if tag is not None and tag not in VARIANTS:
        raise ReslabError(f"unknown variant {tag!r} in {name!r}; the zoo trains: {', '.join(VARIANTS)}")
    return model, dict(VARIANTS.get(tag, {}))


def variant_of(config: dict[str, Any]) -> Optional[str]:
    """The tag whose training values ``config`` has (None for the plain zoo command)."""
    return next((tag for tag, values in VARIANTS.items() if all(config.get(k) == v for k, v in values.items())), None)


def train_command(name: str, out: Path, data: str = DATA, seed: int = 0, epochs: float = ZOO_EPOCHS) -> list[str]:
    """The `reslab train` command line that trains ``name`` (a model, or a tagged variant) for the zoo,
    for ``epochs`` epochs (the schedule keeps its shape: warm-up, small crops and decay scale with it)."""
    model, values = split_variant(name)
    flags = [part for key, value in values.items() for part in (f"--{key.replace('_', '-')}", str(value))]
    return ["reslab", "train", model, "--data", data, "--out", str(out), "--recipe", ZOO_RECIPE, "--epochs", f"{epochs:g}",
            *ZOO_EVAL_FLAGS, *flags, "--seed", str(seed)]


def run_folder(runs: Path, name: str, seed: int, epochs: float = ZOO_EPOCHS) -> Path:
    """``runs/resnet32_seed0`` for the zoo's 50 epochs, ``runs/resnet32_e100_seed0`` for another length."""
    length = "" if epochs == ZOO_EPOCHS else f"_e{epochs:g}"
    return runs / f"{name}{length}_seed{seed}"


# ------------------------------------------------------------------------------------------
# train


def train(models: list[str], runs: Path, data: str, seed: int, dry_run: bool = False,
          epochs: float = ZOO_EPOCHS) -> int:
    """Train each model into ``run_folder(runs, model, seed, epochs)``; a folder with a checkpoint
    is resumed, a finished one skipped."""
    if epochs <= 0:
        raise ReslabError(f"--epochs must be positive, got {epochs:g}")
    for model in models:
        out = run_folder(runs, model, seed, epochs)
        if (out / "result.json").is_file():
            print(f"{out}: finished; skipped")
            continue
        command = (["reslab", "train", "--resume", str(out)] if (out / "checkpoint.pt").is_file()
                   else train_command(model, out, data, seed, epochs))
        print("$ " + shlex.join(command), flush=True)
        if not dry_run:
            status = subprocess.call([sys.executable, "-m", "reslab", *command[1:]])
            if status:
                return status
    return 0


# ------------------------------------------------------------------------------------------
# add


def read_run(run: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(config, environment, result, metrics) of a finished run folder of `reslab train`."""
    from reslab.analysis.plots import read_jsonl

    if not (run / "result.json").is_file():
        raise ReslabError(f"{run} has no result.json: not a finished run of reslab train (resume it with "
                          "`python benchmarks/train_zoo.py train MODEL`)")
    saved = json.loads((run / "config.json").read_text())
    return saved["config"], saved["environment"], json.loads((run / "result.json").read_text()), \
        read_jsonl(run / "metrics.jsonl")


def config_differences(config: dict[str, Any], tag: Optional[str] = None) -> list[str]:
    """The training values of ``config`` that differ from what the zoo command (of variant
    ``tag``, for the run's number of epochs) gives with this code (fields that the run's reslab did
    not have yet are left out)."""
    from reslab.train.config import TrainConfig

    values = {**ZOO_VALUES, **VARIANTS.get(tag, {})} if tag else dict(ZOO_VALUES)
    values["epochs"] = config.get("epochs", values["epochs"])
    expected = TrainConfig.from_recipe(ZOO_RECIPE, model=config["model"], seed=config["seed"], **values).to_dict()
    return [f"{key}={config[key]!r} (zoo: {value!r})" for key, value in expected.items()
            if key not in PLACE_FIELDS and key in config and config[key] != value]


def store_weights(source: Path, destination: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Write ``source``'s weights to ``destination`` with floating tensors in ``dtype``, the model
    card kept in the metadata; atomically."""
    from safetensors.torch import save

    state, card = read_checkpoint(source)
    if card is None:
        raise ReslabError(f"{source} has no reslab model card")
    stored = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    atomic_write_bytes(destination, save(stored, metadata={CARD_KEY: card.to_json()}))
    return stored


def add(run: Path, data: str, weights_dir: Path, name: Optional[str] = None, storage: str = "float16",
        url: Optional[str] = None) -> dict[str, Any]:
    """Ship the final weights of ``run`` as ``name`` (default: the run's model): copy them into
    ``weights_dir``, measure the stored file on the full test set and write its manifest entry."""
    from reslab.data import load_dataset

    config, environment, result, metrics = read_run(run)
    tag = variant_of(config)
    name = name or (f"{config['model']}.{tag}" if tag else config["model"])
    differences = config_differences(config, tag)
    if differences:
        print(f"warning: {run} was not trained with the zoo command: " + "; ".join(differences))
    weights_dir.mkdir(parents=True, exist_ok=True)
    file = f"{name}.safetensors"
    store_weights(run / "model.safetensors", weights_dir / file, STORAGE[storage])
    state, model_card = read_checkpoint(weights_dir / file)
    model = load_weights(model_card.build(), state, file).eval()
    model.pretrained_cfg = {"mean": list(model_card.mean), "std": list(model_card.std),
                            "label_names": model_card.class_names}
    test = load_dataset(data, split="test")
    train_images = len(load_dataset(data, split="train")) - int(config.get("val") or 0)
    print(f"measuring {weights_dir / file} on {len(test)} test images ...", flush=True)
    figures = measure(model, test)
    figures["trainer_accuracy_pct"] = round(100 * result["test_accuracy"], 2)
    figures["trainer_evaluation"] = (f"during training: {environment.get('precision')} autocast, test-time flips "
                                     f"{'on' if config.get('tta_flip') else 'off'}")
    card = {
        "model": model_card.model, "num_classes": model_card.num_classes,
        "input_size": [3, model_card.input_size, model_card.input_size],
        "mean": list(model_card.mean), "std": list(model_card.std), "label_names": model_card.class_names,
        "params": count_parameters(model), "dtype": storage, "metrics": figures,
        "recipe": config["recipe"], "config": config, "epochs": config["epochs"], "seed": config["seed"],
        "train_images": train_images,
        "train_seconds": round(sum(m.get("epoch_seconds", 0.0) for m in metrics), 1),
        "wall_seconds": round(result["wall_seconds"], 1),
        "machine": {key: environment.get(key) for key in ("device", "device_name", "cpu_count", "threads", "precision")},
        "reslab_commit": environment.get("git_commit"), "torch_version": environment.get("torch_version"),
        "command": shlex.join(train_command(name, run_folder(Path(RUNS), name, config["seed"], config["epochs"]), DATA,
                                            config["seed"], config["epochs"])),
        "differs_from_command": differences,
    }
    entries = read_manifest(weights_dir)
    entries[name] = {"file": file, "sha256": sha256_of(weights_dir / file), "url": url, "card": card}
    write_manifest(weights_dir, entries)
    print(f"{name}: {figures['accuracy_pct']:.2f}% single view, {figures['accuracy_flip_pct']:.2f}% with flips "
          f"(trainer: {figures['trainer_accuracy_pct']:.2f}%); wrote {weights_dir / file} and its manifest entry")
    return entries[name]


# ------------------------------------------------------------------------------------------
# verify and table


def verify(names: list[str], data: str, tolerance: float) -> int:
    """Measure each shipped model again on the full test set; 1 if a figure moved by more than
    ``tolerance`` points."""
    from reslab.data import load_dataset

    test = load_dataset(data, split="test")
    failed = 0
    print(f"{'model':<12} {'single view':>22} {'flips':>22}")
    for name in names or pretrained_names():
        model = load_pretrained(name)  # hash checked
        card, now = model.pretrained_cfg["metrics"], measure(model, test)
        cells = []
        for key in ("accuracy_pct", "accuracy_flip_pct"):
            off = abs(now[key] - card[key]) > tolerance
            failed += off
            cells.append(f"{now[key]:.2f} (card {card[key]:.2f}){' !' if off else '  '}")
        print(f"{name:<12} {cells[0]:>22} {cells[1]:>22}", flush=True)
    if failed:
        print(f"{failed} figure(s) differ from the manifest by more than {tolerance} points")
    return 1 if failed else 0


def _error(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def table_rows(entries: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per shipped model: published errors, reslab's (single view, flips), epochs, time."""
    rows = []
    known = [name for name in REFERENCE_ERRORS if name in entries]
    for name in known + sorted(set(entries) - set(known), key=_natural_key):
        card = entries[name]["card"]
        paper, akamaster, chenyaofo = REFERENCE_ERRORS.get(name, (None, None, None))  # none for a variant
        figures = card["metrics"]
        time = f"{card['train_seconds'] / 60:.0f} min, {describe_machine(card['machine'])}"
        rows.append([name, _error(paper), _error(akamaster), _error(chenyaofo),
                     _error(100 - figures["accuracy_pct"]), _error(100 - figures["accuracy_flip_pct"]),
                     f"{card['epochs']:g}", time])
    return rows


def table(entries: dict[str, dict[str, Any]]) -> str:
    """The README's reproduction table (markdown), CIFAR-10 test error in %."""
    from reslab.zoo_table import format_table

    header = ["model", "paper", "akamaster", "chenyaofo", "reslab (single view)", "reslab (flips)", "epochs",
              "training time and machine"]
    rows = table_rows(entries)
    lines = [format_table(header, rows, markdown=True)] if rows else []
    missing = [m for m in REFERENCE_ERRORS if m not in entries]
    if missing:
        lines += ["Not shipped yet (to train on a GPU): " + ", ".join(missing) + "."]
    return "\n\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("train", help="train (or resume) models with the zoo command")
    p.add_argument("models", nargs="+", help="zoo models, or tagged variants: " +
                   ", ".join(f"MODEL.{tag} ({', '.join(f'{k}={v}' for k, v in values.items())})"
                             for tag, values in VARIANTS.items()))
    p.add_argument("--runs", type=Path, default=Path(RUNS), help="folder of the run folders (default: %(default)s)")
    p.add_argument("--data", default=DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=float, default=ZOO_EPOCHS,
                   help="length of the zoo recipe (default %(default)s); another length trains into MODEL_eN_seedS")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p = commands.add_parser("add", help="ship a finished run's final weights with a measured card")
    p.add_argument("run", type=Path)
    p.add_argument("--name", help="weights name (default: the run's model)")
    p.add_argument("--data", default=DATA)
    p.add_argument("--weights-dir", type=Path, default=PACKAGE_WEIGHTS_DIR, help="default: the package's weights")
    p.add_argument("--storage", choices=tuple(STORAGE), default="float16", help="dtype of the stored weights")
    p.add_argument("--url", help="https URL the file will also be downloadable from")
    p = commands.add_parser("verify", help="re-measure the shipped models on the full test set")
    p.add_argument("names", nargs="*", help="default: every model with weights")
    p.add_argument("--data", default=DATA)
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="points of accuracy a figure may move (default %(default)s: 5 of 10,000 images, float32 "
                        "rounding on another CPU)")
    commands.add_parser("table", help="print the README's reproduction table")
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return train(args.models, args.runs, args.data, args.seed, args.dry_run, args.epochs)
        if args.command == "add":
            add(args.run, args.data, args.weights_dir, args.name, args.storage, args.url)
            return 0
        if args.command == "verify":
            return verify(args.names, args.data, args.tolerance)
        print(table(manifest()))
        return 0
    except (ReslabError, ValueError, OSError) as exc:
        print(f"train_zoo.py {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
