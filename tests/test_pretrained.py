"""reslab.pretrained: the shipped weights (hash, architecture, accuracy on a test slice, card),
``create_model(name, pretrained=True)``, the lookup order, downloads with hash checks, the
commands that take a model name, and benchmarks/train_zoo.py's ``add`` and ``table``."""

from __future__ import annotations

import http.server
import json
import math
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import reslab
from reslab.checkpoint import make_card, read_checkpoint, resolve_checkpoint_path, save_model
from reslab.errors import CheckpointError
from reslab.models.layers import residual_blocks
from reslab.pretrained import (CARD_FIELDS, METRIC_FIELDS, PACKAGE_WEIGHTS_DIR, WEIGHTS_DIR_ENV, measure,
                               read_manifest, sha256_of, weights_file, write_manifest)
from reslab.train.config import TrainConfig
from reslab.train.state import write_config

from conftest import copy_cifar_slice

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import train_zoo  # noqa: E402

SHIPPED = sorted(read_manifest(PACKAGE_WEIGHTS_DIR))
SLICE_PER_CLASS = 50  # 500 test images


@pytest.fixture(scope="module")
def test_slice(tmp_path_factory):
    """The first 50 test images of each CIFAR-10 class (by file name): 500 images chosen without
    looking at any model."""
    from reslab.data import load_dataset

    folder = copy_cifar_slice(tmp_path_factory.mktemp("slice"), 0, SLICE_PER_CLASS)
    return load_dataset(folder, split="test", cache=False, progress=False)


@pytest.fixture
def no_env_weights(monkeypatch):
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)


# ------------------------------------------------------------------------------------------
# The shipped weights


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_matches_its_hash_and_builds_its_model(name: str, no_env_weights) -> None:
    entry = read_manifest(PACKAGE_WEIGHTS_DIR)[name]
    path = PACKAGE_WEIGHTS_DIR / entry["file"]
    assert sha256_of(path) == entry["sha256"]
    state, card = read_checkpoint(path)
    assert card.model == entry["card"]["model"] and card.class_names == entry["card"]["label_names"]
    model = reslab.create_model(name, pretrained=True)
    assert type(model) is type(reslab.create_model(entry["card"]["model"]))
    assert reslab.count_parameters(model) == entry["card"]["params"]
    assert not model.training
    stored = next(v for v in state.values() if v.is_floating_point())
    assert str(stored.dtype).removeprefix("torch.") == entry["card"]["dtype"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_agrees_with_its_card_on_500_test_images(name: str, test_slice, no_env_weights) -> None:
    """Single view on 500 of the 10,000 test images. Their accuracy is a binomial estimate of the
    card's full-test-set accuracy p with standard error sqrt(p(1-p)/500) (1.2 points at p = 0.92;
    less, as the 500 are part of the 10,000): 4 standard errors leave a correct model a 6e-5
    chance of failing, while wrong normalisation, a wrong class order or corrupt weights move
    the accuracy by tens of points."""
    from reslab.analysis.evaluate import eval_batches, evaluate
    from reslab.inference.fold import folded_for_evaluation

    model = reslab.create_model(name, pretrained=True)
    cfg = model.pretrained_cfg
    batches = eval_batches(test_slice, cfg["mean"], cfg["std"], batch_size=250)
    accuracy = 100 * evaluate(folded_for_evaluation(model), batches, test_slice.classes).accuracy
    p = cfg["metrics"]["accuracy_pct"] / 100
    tolerance = 4 * 100 * math.sqrt(p * (1 - p) / len(test_slice))
    assert accuracy > 50, f"{name}: {accuracy:.1f}% on 500 test images (chance: 10%)"
    assert abs(accuracy - cfg["metrics"]["accuracy_pct"]) <= tolerance, \
        f"{name}: {accuracy:.2f}% on 500 test images against the card's {cfg['metrics']['accuracy_pct']:.2f}%"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_card_has_every_field(name: str, no_env_weights) -> None:
    cfg = reslab.create_model(name, pretrained=True).pretrained_cfg
    assert set(CARD_FIELDS) <= set(cfg) and set(METRIC_FIELDS) <= set(cfg["metrics"])
    assert cfg["input_size"] == (3, 32, 32) and len(cfg["label_names"]) == 10 and len(cfg["mean"]) == 3
    assert cfg["metrics"]["test_images"] == 10000 and cfg["seed"] == 0 and cfg["reslab_commit"]
    assert list(cfg["metrics"]["per_class_accuracy_pct"]) == cfg["label_names"]
    assert cfg["command"].startswith(f"reslab train {cfg['model']} ") and "--seed 0" in cfg["command"]
    assert not cfg["differs_from_command"], "shipped weights must come from the command in their card"


# ------------------------------------------------------------------------------------------
# The mechanism, on a weights folder of our own: an untrained ResNet-20 shipped by `add`


def fake_run(folder: Path, **values) -> Path:
    """A finished run folder as `reslab train` writes it, of an untrained ResNet-20 (trained with
    the zoo command and ``values``)."""
    folder.mkdir(parents=True)
    config = TrainConfig.from_recipe("fast", model="resnet20", data="data", out=str(folder), seed=0,
                                     **{**train_zoo.ZOO_VALUES, **values})
    write_config(folder, config, {"device": "cpu", "device_name": "test CPU", "cpu_count": 2, "threads": 1,
                                  "precision": "fp32", "git_commit": "0" * 40, "torch_version": torch.__version__})
    torch.manual_seed(0)
    model = reslab.create_model("resnet20", **config.model_overrides())
    card = make_card("resnet20", model, class_names=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                     "horse", "ship", "truck"],
                     mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), config=config.to_dict(),
                     overrides=config.model_overrides())
    save_model(folder / "model.safetensors", model, card)
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "epoch_seconds": 60.0}) + "\n")
    (folder / "result.json").write_text(json.dumps({"test_accuracy": 0.1, "wall_seconds": 70.0}))
    return folder


@pytest.fixture
def weights_dir(tmp_path, tiny_cifar, monkeypatch) -> Path:
    """``add`` of a fake run into a folder that RESLAB_WEIGHTS_DIR then names."""
    folder = tmp_path / "weights"
    train_zoo.add(fake_run(tmp_path / "run" / "resnet20_seed0"), str(tiny_cifar), folder)
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(folder))
    monkeypatch.setenv("RESLAB_CACHE", str(tmp_path / "cache"))
    return folder


def test_add_stores_float16_weights_with_hash_and_measured_card(weights_dir, tmp_path, tiny_cifar) -> None:
    from reslab.data import load_dataset

    entry = read_manifest(weights_dir)["resnet20"]
    assert entry["sha256"] == sha256_of(weights_dir / "resnet20.safetensors")
    stored = load_file(weights_dir / "resnet20.safetensors")
    original = load_file(tmp_path / "run" / "resnet20_seed0" / "model.safetensors")
    assert stored["fc.weight"].dtype == torch.float16
    assert torch.equal(stored["fc.weight"], original["fc.weight"].half())
    assert stored["bn1.num_batches_tracked"].dtype == torch.int64
    assert set(CARD_FIELDS) <= set(entry["card"]) and entry["card"]["train_images"] == 200
    assert entry["card"]["differs_from_command"] == [] and entry["card"]["train_seconds"] == 60.0
    # the card's figures are those of the stored (float16) weights on the test split
    model = reslab.create_model("resnet20", pretrained=True)
    assert measure(model, load_dataset(tiny_cifar, split="test", progress=False)) == \
        {k: v for k, v in entry["card"]["metrics"].items() if not k.startswith("trainer_")}


def test_pretrained_model_is_eval_ready_with_its_card(weights_dir) -> None:
    model = reslab.create_model("resnet20", pretrained=True)
    assert not model.training and model.default_cfg is model.pretrained_cfg
    assert model.pretrained_cfg["sha256"] == sha256_of(weights_dir / "resnet20.safetensors")
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    stored = load_file(weights_dir / "resnet20.safetensors")
    assert torch.equal(model.state_dict()["conv1.weight"], stored["conv1.weight"].float())
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_list_models_pretrained_lists_only_models_with_weights(weights_dir) -> None:
    names = reslab.list_models(pretrained=True)
    assert "resnet20" in names and "resnet110" not in names
    assert reslab.list_models("plain*", pretrained=True) == [n for n in names if n.startswith("plain")]


def test_model_without_weights_is_a_one_line_error_listing_those_with(weights_dir) -> None:
    with pytest.raises(CheckpointError) as error:
        reslab.create_model("resnet110", pretrained=True)
    assert "resnet20" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="drop num_classes"):
        reslab.create_model("resnet20", pretrained=True, num_classes=100)


def test_a_tagged_variant_ships_beside_its_architecture_as_timm_names_it(weights_dir, tmp_path, tiny_cifar) -> None:
    """`add` of a run trained with stochastic depth ships 'resnet20.sdepth'; pretrained=True
    rebuilds it with its test-time scaling; without pretrained the tag is ignored."""
    run = fake_run(tmp_path / "run" / "resnet20.sdepth_seed0", stochastic_depth=0.5)
    entry = train_zoo.add(run, str(tiny_cifar), weights_dir)
    assert entry["file"] == "resnet20.sdepth.safetensors" and entry["card"]["differs_from_command"] == []
    assert "--stochastic-depth 0.5" in entry["card"]["command"]
    assert reslab.list_models("resnet20*", pretrained=True) == ["resnet20", "resnet20.sdepth"]
    tagged = reslab.create_model("ResNet20.sdepth", pretrained=True)
    assert tagged.pretrained_cfg["name"] == "resnet20.sdepth"
    survivals = [b.drop_path.survival for _, b in residual_blocks(tagged)]
    assert survivals[0] < 1 and survivals[-1] == pytest.approx(0.5)
    assert all(b.drop_path.survival == 1 for _, b in residual_blocks(reslab.create_model("resnet20", pretrained=True)))
    assert all(b.drop_path.survival == 1 for _, b in residual_blocks(reslab.create_model("resnet20.sdepth")))
    with pytest.raises(CheckpointError, match=r"no pretrained weights for 'resnet20.other'.*resnet20, resnet20.sdepth"):
        reslab.create_model("resnet20.other", pretrained=True)
    assert train_zoo.table_rows(read_manifest(weights_dir))[-1][:4] == ["resnet20.sdepth", "-", "-", "-"]


def test_a_file_whose_hash_differs_is_refused(weights_dir) -> None:
    path = weights_dir / "resnet20.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as error:
        reslab.create_model("resnet20", pretrained=True)
    message = str(error.value)
    assert str(path) in message and "delete it" in message and "\n" not in message


def test_weights_dir_comes_before_the_package(weights_dir, monkeypatch) -> None:
    """An entry of RESLAB_WEIGHTS_DIR's manifest replaces the package's; its file is used."""
    assert weights_file("resnet20") == weights_dir / "resnet20.safetensors"
    monkeypatch.delenv(WEIGHTS_DIR_ENV)
    if "resnet20" in SHIPPED:
        assert weights_file("resnet20") == PACKAGE_WEIGHTS_DIR / "resnet20.safetensors"
    else:
        with pytest.raises(CheckpointError, match="no pretrained weights"):
            weights_file("resnet20")


# ------------------------------------------------------------------------------------------
# Downloads, from a server on 127.0.0.1


class Server:
    """Serves ``files[path] = bytes`` over HTTP on 127.0.0.1; ``truncate`` sends half of each
    file while announcing all of it, then closes the connection."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate = False
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests += 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if server.truncate else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    serving = Server()
    yield serving
    serving.httpd.shutdown()
    serving.httpd.server_close()


@pytest.fixture
def remote(weights_dir, server, tmp_path, monkeypatch):
    """The weights folder's entry with a URL on the server, its file moved there, and no package
    weights (whose own file would be found before the cache)."""
    monkeypatch.setattr("reslab.pretrained.PACKAGE_WEIGHTS_DIR", tmp_path / "no-package")
    file = weights_dir / "resnet20.safetensors"
    server.files["/resnet20.safetensors"] = file.read_bytes()
    file.unlink()
    entries = read_manifest(weights_dir)
    entries["resnet20"]["url"] = server.url + "/resnet20.safetensors"
    write_manifest(weights_dir, entries)
    return tmp_path / "cache" / "weights"


def test_download_into_the_cache_once(remote, server) -> None:
    model = reslab.create_model("resnet20", pretrained=True)
    assert (remote / "resnet20.safetensors").is_file() and server.requests == 1
    assert model.pretrained_cfg["url"].startswith(server.url)
    reslab.create_model("resnet20", pretrained=True)
    assert server.requests == 1 and sorted(p.name for p in remote.iterdir()) == ["resnet20.safetensors"]


def test_truncated_download_leaves_nothing(remote, server) -> None:
    server.truncate = True
    with pytest.raises(CheckpointError) as error:
        reslab.create_model("resnet20", pretrained=True)
    assert "nothing was kept" in str(error.value) and "\n" not in str(error.value)
    assert list(remote.iterdir()) == []


def test_download_with_the_wrong_hash_leaves_nothing(remote, server) -> None:
    server.files["/resnet20.safetensors"] = b"not the weights" * 100
    with pytest.raises(CheckpointError, match="wrong sha256") as error:
        reslab.create_model("resnet20", pretrained=True)
    assert "\n" not in str(error.value) and list(remote.iterdir()) == []


def test_a_corrupt_cached_file_is_refused(remote, server) -> None:
    remote.mkdir(parents=True)
    (remote / "resnet20.safetensors").write_bytes(b"half a file")
    with pytest.raises(CheckpointError, match="delete it"):
        reslab.create_model("resnet20", pretrained=True)


# ------------------------------------------------------------------------------------------
# Commands


def test_checkpoint_arguments_take_a_name_but_an_existing_path_wins(weights_dir, tmp_path, monkeypatch) -> None:
    assert resolve_checkpoint_path("resnet20") == weights_dir / "resnet20.safetensors"
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path / "resnet20")  # a run folder called like the model
    assert resolve_checkpoint_path("resnet20").resolve() == run / "model.safetensors"
    with pytest.raises(CheckpointError, match="models with weights: .*resnet20"):
        resolve_checkpoint_path("resnet110")


def test_eval_and_models_commands_take_a_model_name(weights_dir, tiny_cifar, tmp_path, capsys) -> None:
    from reslab.cli import main

    assert main(["eval", "resnet20", "--data", str(tiny_cifar), "--fp32", "--out", str(tmp_path / "eval")]) == 0
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    card = read_manifest(weights_dir)["resnet20"]["card"]
    assert result["accuracy_pct"] == pytest.approx(card["metrics"]["accuracy_pct"], abs=0.01)
    capsys.readouterr()
    assert main(["models", "--pretrained"]) == 0
    assert "resnet20" in capsys.readouterr().out
    assert main(["models", "--pretrained", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert read_manifest(weights_dir)["resnet20"]["sha256"] in out and "reslab train resnet20" in out


def test_the_zoo_recipe_is_the_command_in_the_cards() -> None:
    """`reslab train --recipe zoo` trains what the shipped cards' command trains; a run that
    differs is named."""
    zoo = TrainConfig.from_recipe("zoo", model="resnet56", seed=0).to_dict()
    assert train_zoo.config_differences(zoo) == []
    assert train_zoo.config_differences({**zoo, "lr": 0.1}) == ["lr=0.1 (zoo: 0.15)"]


def test_the_zoo_command_line_trains_the_zoo_recipe() -> None:
    """The flags `train_zoo.py train` writes into the command (and the cards) give the values of
    reslab's `zoo` recipe, from which the script reads what a run is checked against."""
    from dataclasses import fields

    from reslab.cli import build_parser

    args = build_parser().parse_args(train_zoo.train_command("resnet20", Path("out"), "data", 0)[1:])
    names = {f.name for f in fields(TrainConfig)}
    given = {key: value for key, value in vars(args).items() if key in names and value is not None}
    from_flags = TrainConfig.from_recipe(args.recipe, **given).to_dict()
    zoo = TrainConfig.from_recipe("zoo", model="resnet20", data="data", out="out", seed=0).to_dict()
    assert (from_flags.pop("recipe"), zoo.pop("recipe")) == ("fast", "zoo")  # the name alone differs
    assert from_flags == zoo


def test_a_longer_zoo_run_is_the_same_command_with_its_epochs(tmp_path, tiny_cifar) -> None:
    """`train MODEL --epochs 100` runs the zoo command for 100 epochs in its own folder; `add`
    ships it under the model's name with that command in the card and no difference flagged."""
    assert train_zoo.run_folder(Path("runs"), "resnet32", 0) == Path("runs/resnet32_seed0")
    assert train_zoo.run_folder(Path("runs"), "resnet32", 0, 100) == Path("runs/resnet32_e100_seed0")
    command = train_zoo.train_command("resnet32", Path("out"), "data", 0, 100)
    assert command[command.index("--epochs") + 1] == "100" and command.count("--epochs") == 1
    run = fake_run(tmp_path / "run" / "resnet20_e100_seed0", epochs=100.0)
    entry = train_zoo.add(run, str(tiny_cifar), tmp_path / "weights")
    assert entry["card"]["epochs"] == 100.0 and entry["card"]["differs_from_command"] == []
    assert "--epochs 100 " in entry["card"]["command"] and "resnet20_e100_seed0" in entry["card"]["command"]
    assert train_zoo.config_differences({**TrainConfig.from_recipe("zoo", model="resnet20", seed=0).to_dict(),
                                         "epochs": 100.0, "lr": 0.1}) == ["lr=0.1 (zoo: 0.15)"]


def test_reproduction_table_shows_published_and_reslab_errors(weights_dir) -> None:
    entries = read_manifest(weights_dir)
    entries["resnet20"]["card"]["metrics"].update(accuracy_pct=91.5, accuracy_flip_pct=92.25)
    table = train_zoo.table(entries)
    row = next(line for line in table.splitlines() if line.startswith("| resnet20 "))
    assert row.split(" | ")[1:7] == ["8.75", "8.27", "7.40", "8.50", "7.75", "50"]
    assert "Not shipped yet" in table and "resnet56" in table.split("Not shipped yet")[1]


def test_pretrained_cfg_gives_the_evaluation_transform_of_the_card():
    """model.pretrained_cfg carries timm's crop_pct and interpolation, and
    Preprocess.from_pretrained_cfg builds the same transform as the card's own (Preprocess.for_card)."""
    import numpy as np
    from PIL import Image

    from reslab.checkpoint import load_card
    from reslab.inference.preprocess import Preprocess
    from reslab.pretrained import pretrained_cfg, pretrained_names, resolve_named_checkpoint

    name = pretrained_names()[0]
    cfg = pretrained_cfg(name)
    assert cfg["crop_pct"] == 1.0 and cfg["interpolation"] == "bilinear"
    transform = Preprocess.from_pretrained_cfg(cfg)
    assert transform == Preprocess.for_card(load_card(resolve_named_checkpoint(name)))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    assert transform(image).shape == (3, 32, 32)
    imagenet = Preprocess.from_pretrained_cfg({"input_size": (3, 224, 224), "crop_pct": 0.875,
                                               "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)})
    assert (imagenet.input_size, imagenet.resize_size) == (224, 256)
    with pytest.raises(ValueError, match="lacks mean"):
        Preprocess.from_pretrained_cfg({"input_size": 32, "std": (1, 1, 1)})
    with pytest.raises(ValueError, match="bilinear"):
        Preprocess.from_pretrained_cfg({**cfg, "interpolation": "bicubic"})
