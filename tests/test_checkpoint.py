"""Model files: the card carries what a model needs, save/load round-trips exactly, and
loading is safe (no pickled code runs) and fails with one clear line on foreign or broken files."""

import os
import pickle
import shlex

import pytest
import torch
from PIL import Image
from torch import nn

import reslab
from reslab import create_model
from reslab.checkpoint import ModelCard, load_model, load_weights, make_card, read_checkpoint, save_model
from reslab.cli import main
from reslab.errors import CheckpointError
from reslab.inference.interop import load_torchvision_state_dict

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def trained_looking(model: nn.Module, size: int = 32) -> nn.Module:
    """Give every BN non-trivial running statistics (as training would), then eval mode."""
    torch.manual_seed(1)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, size, size))
    return model.eval()


def save_resnet20(path, **overrides):
    model = trained_looking(create_model("resnet20", **overrides))
    card = make_card("resnet20", model, overrides=overrides, class_names=CLASSES, mean=CIFAR_MEAN, std=CIFAR_STD,
                     input_size=32, config={"epochs": 3, "lr": 0.1})
    save_model(path, model, card)
    return model, card


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(path)
    return path


class WritesMarker:
    """Unpickling this runs a shell command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_card_carries_name_overrides_classes_normalisation_size_config_versions(tmp_path):
    path = tmp_path / "model.safetensors"
    _, card = save_resnet20(path, shortcut="B")
    model, loaded = load_model(path, with_card=True)
    assert loaded == card
    assert (loaded.model, loaded.num_classes, loaded.overrides) == ("resnet20", 10, {"shortcut": "B"})
    assert loaded.class_names == CLASSES and loaded.input_size == 32
    assert loaded.mean == CIFAR_MEAN and loaded.std == CIFAR_STD
    assert loaded.config == {"epochs": 3, "lr": 0.1}
    assert loaded.reslab_version == reslab.__version__ and loaded.torch_version == torch.__version__
    # The override was applied when rebuilding: option B has 1x1 projection shortcuts.
    assert isinstance(model.layer2[0].downsample, nn.Sequential) and not model.training


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    path = tmp_path / "model.safetensors"
    original, _ = save_resnet20(path)
    loaded = load_model(tmp_path)  # a run folder resolves to its model.safetensors
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert all(torch.equal(v, original.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.mark.parametrize("wrapped", [False, True])
def test_pickled_code_is_refused_and_never_runs(tmp_path, wrapped):
    marker = tmp_path / "code-ran"
    payload = WritesMarker(marker)
    evil = tmp_path / "evil.pt"
    state = create_model("resnet20").state_dict()
    torch.save({"state_dict": state, "extra": payload} if wrapped else {"conv1.weight": payload}, evil)

    for load in (read_checkpoint, load_model, lambda p: load_torchvision_state_dict(create_model("resnet20"), p)):
        with pytest.raises(CheckpointError, match="refusing to load .*could run code"):
            load(evil)
    assert not marker.exists(), "loading a checkpoint ran the code inside it"

    # The payload is live: an unsafe load does run it, so the assertion above can fail.
    with open(evil, "rb") as f:
        torch.load(f, weights_only=False)
    assert marker.exists()


def test_pickle_disguised_as_safetensors_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pickle.dumps(WritesMarker(marker)))
    with pytest.raises(CheckpointError, match="is a torch checkpoint, not a safetensors file"):
        load_model(disguised)
    assert not marker.exists()


@pytest.mark.parametrize("name, content", [("config.json", b'{"config": {}}'), ("notes.txt", b"weights"), ("empty.pt", b"")])
def test_a_file_of_neither_format_is_named_as_not_a_model_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"is not a model file \(neither safetensors nor a torch checkpoint\)"):
        read_checkpoint(path)


def test_checkpoint_of_another_architecture_names_missing_and_unexpected_keys(tmp_path):
    source = create_model("resnet20", shortcut="B").state_dict()  # 3 blocks per stage, projections
    with pytest.raises(CheckpointError) as info:
        load_weights(create_model("resnet32"), source, "r20.safetensors")  # 5 blocks per stage, option A
    message = str(info.value)
    assert "missing keys: layer1.3.conv1.weight" in message
    assert "unexpected keys: layer2.0.downsample.0.weight" in message
    assert "another architecture" in message

    # A card that names another model than the weights: load_model reports the same.
    path = tmp_path / "mismatch.safetensors"
    model = create_model("resnet20")
    save_model(path, model, make_card("resnet32", model))
    with pytest.raises(CheckpointError, match="missing keys: layer1.3"):
        load_model(path)


def test_same_keys_other_shapes_are_named(tmp_path):
    path = tmp_path / "wide.safetensors"
    model = create_model("resnet20", num_classes=100)
    save_model(path, model, make_card("resnet20", model))
    state, _ = read_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"fc.weight \(100, 64\) vs \(10, 64\)"):
        load_weights(create_model("resnet20"), state)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_file_is_a_checkpoint_error(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    model, card = save_resnet20(tmp_path / "full.safetensors")
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        path.write_bytes((tmp_path / "full.safetensors").read_bytes())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(path)


def test_weights_without_card_say_how_to_load_them(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match="no reslab model card.*create_model"):
        load_model(path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_model(tmp_path / "absent.safetensors")
    with pytest.raises(CheckpointError, match="folder without model.safetensors"):
        load_model(tmp_path)


def test_unreadable_card_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="model card is unreadable"):
        ModelCard.from_json("{not json", "x.safetensors")


def _cli_error(capsys, argv):
    status = main(argv)
    err = capsys.readouterr().err
    return status, err


@pytest.mark.parametrize("case", ["pickled code", "truncated", "other architecture", "missing"])
def test_cli_reports_bad_checkpoints_in_one_line(tmp_path, image, capsys, case):
    path = tmp_path / "model.safetensors"
    if case == "pickled code":
        path = tmp_path / "evil.pt"
        torch.save({"conv1.weight": WritesMarker(tmp_path / "code-ran")}, path)
    elif case == "truncated":
        save_resnet20(path)
        path.write_bytes(path.read_bytes()[:1000])
    elif case == "other architecture":
        model = create_model("resnet20")
        save_model(path, model, make_card("resnet56", model))
    for argv in (["predict", str(path), str(image)], ["export", str(path), "--format", "onnx"]):
        status, err = _cli_error(capsys, argv)
        assert status == 1
        assert err.count("\n") == 1 and err.startswith(f"reslab {argv[0]}: error: ")
        assert "Traceback" not in err
    assert not (tmp_path / "code-ran").exists()


def test_load_model_returns_the_model_and_the_card_on_request(tmp_path):
    """The README says load_model rebuilds the model; it returned (model, card)."""
    path = tmp_path / "model.safetensors"
    _, card = save_resnet20(path)
    model = load_model(path)
    assert isinstance(model, nn.Module) and not model.training
    model, loaded = load_model(path, with_card=True)
    assert isinstance(model, nn.Module) and loaded == card
    assert reslab.checkpoint.load_card(tmp_path) == card


def test_load_weights_takes_a_path_as_well_as_a_state_dict(tmp_path):
    """A path string was iterated over as keys: 'unexpected keys: r, u, n, s, /'."""
    path = tmp_path / "model.safetensors"
    original, _ = save_resnet20(path)
    for source in (str(path), path, tmp_path, original.state_dict()):
        model = load_weights(create_model("resnet20"), source).eval()
        assert all(torch.equal(v, original.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"no checkpoint at"):
        load_weights(create_model("resnet20"), str(tmp_path / "absent.safetensors"))
    with pytest.raises(TypeError, match=r"state dict or a checkpoint path, not list"):
        load_weights(create_model("resnet20"), ["conv1.weight"])


def test_a_torch_checkpoint_renamed_safetensors_is_named_as_one(tmp_path, capsys):
    """It was called 'not a readable safetensors file ... it may be truncated'."""
    path = tmp_path / "model.safetensors"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"is a torch checkpoint, not a safetensors file .*rename it to \.pt"):
        read_checkpoint(path)
    assert main(["export", str(path), "--format", "state-dict", "--out", str(tmp_path / "x.pth")]) == 1
    assert "is a torch checkpoint" in capsys.readouterr().err


def test_class_names_given_as_one_string_are_refused():
    """A string would stand for the list of its characters: 10 classes named 'a', 'i', 'r'..."""
    model = create_model("resnet20")
    with pytest.raises(TypeError, match=r"class_names must be a list of names, not the string 'airplane'"):
        make_card("resnet20", model, class_names="airplane")


def test_a_safetensors_file_whose_first_byte_is_a_pickles_is_still_read(tmp_path):
    """Its 8-byte header length may start with 0x80, the first byte of a pickle: that alone must
    not make it 'a torch checkpoint named .safetensors'."""
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    state = {"weight": torch.arange(6.0).reshape(2, 3)}
    for padding in range(512):
        save_file(state, path, metadata={"pad": "x" * padding})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(read_checkpoint(path)[0]["weight"], state["weight"])
