"""Using a trained model: `reslab predict` on real CIFAR PNGs and odd images, BN folding across
the zoo, ONNX and TorchScript export checked against PyTorch, torchvision/timm weights, bench."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reslab import create_model, list_models, model_info
from reslab.checkpoint import load_model, make_card, save_model
from reslab.cli import main
from reslab.errors import CheckpointError
from reslab.inference.bench import BASELINE, BenchSetup, compare_with_baseline, run_benchmark
from reslab.inference.export import export_onnx, export_torchscript, verify_onnx, verify_torchscript
from reslab.inference.fold import count_batchnorms, fold_bn, foldable_pairs
from reslab.inference.interop import (export_state_dict, import_weights, load_timm_state_dict,
                                      load_torchvision_state_dict, read_state_dict)
from reslab.inference.predict import Predictor
from reslab.inference.preprocess import Preprocess, default_resize_size, find_images, to_rgb

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small models on a shared 2-core machine: one thread is 2-4x faster than two fighting
    other processes for the cores (OpenMP threads wait on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def with_trained_statistics(model: nn.Module, size: int) -> nn.Module:
    """BN layers with running statistics from data and non-trivial affine parameters, as after
    training (fresh BN layers are the identity in eval mode, which would make folding trivial)."""
    generator = torch.Generator().manual_seed(0)
    batchnorms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in batchnorms:
        bn.momentum = None  # cumulative average: one batch sets the statistics
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, size, size, generator=generator))
        for bn in batchnorms:
            bn.weight.uniform_(0.5, 1.0, generator=generator)
            bn.bias.uniform_(-0.2, 0.2, generator=generator)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tiny_cifar, tmp_path_factory):
    """A freshly initialised resnet20 saved with the CIFAR-10 class names and normalisation."""
    torch.manual_seed(0)
    classes = sorted(p.name for p in (tiny_cifar / "test").iterdir())
    model = with_trained_statistics(create_model("resnet20"), 32)
    path = tmp_path_factory.mktemp("run") / "model.safetensors"
    save_model(path, model, make_card("resnet20", model, class_names=classes, mean=CIFAR_MEAN, std=CIFAR_STD, input_size=32))
    return path


@pytest.fixture(scope="module")
def cifar_pngs(tiny_cifar):
    return [tiny_cifar / "test" / "cat" / sorted(p.name for p in (tiny_cifar / "test" / "cat").iterdir())[0],
            tiny_cifar / "test" / "ship" / sorted(p.name for p in (tiny_cifar / "test" / "ship").iterdir())[0]]


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------
# reslab predict


def test_predict_prints_top_k_in_order_with_class_names(checkpoint, cifar_pngs, capsys):
    status, out, err = run_cli(capsys, "predict", checkpoint, *cifar_pngs, "--top-k", "3", "--device", "cpu")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) == 2 * 4
    for block, png in zip((lines[:4], lines[4:]), cifar_pngs):
        assert block[0] == str(png)
        ranks = [line.split()[0] for line in block[1:]]
        probabilities = [float(line.split()[-1]) for line in block[1:]]
        assert ranks == ["1.", "2.", "3."]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-3
        assert all(line.split()[1] in {p.name for p in png.parents[1].iterdir()} for line in block[1:])


def test_predict_json_matches_the_model_on_the_decoded_image(checkpoint, cifar_pngs, capsys):
    status, out, _ = run_cli(capsys, "predict", checkpoint.parent, *cifar_pngs, "--json", "--top-k", "10")
    assert status == 0
    results = json.loads(out)
    assert [r["path"] for r in results] == [str(p) for p in cifar_pngs]
    predictor = Predictor.from_checkpoint(checkpoint)
    for result, png in zip(results, cifar_pngs):
        top = result["top_k"]
        assert len(top) == 10 and math.isclose(sum(t["probability"] for t in top), 1.0, rel_tol=1e-4)
        assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
        assert all(predictor.class_names[t["index"]] == t["name"] for t in top)
        # Independently: PNG -> [0, 1] -> normalised -> model -> softmax.
        pixels = torch.from_numpy(np.asarray(Image.open(png).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
        x = ((pixels - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1))[None]
        with torch.no_grad():
            expected = predictor.model(x).softmax(1)[0]
        assert all(math.isclose(t["probability"], float(expected[t["index"]]), abs_tol=1e-5) for t in top)


def test_predict_walks_folders_recursively_in_batches(checkpoint, tiny_cifar, capsys):
    status, out, _ = run_cli(capsys, "predict", checkpoint, tiny_cifar / "test", "--json", "--top-k", "1", "--batch-size", "32")
    assert status == 0
    paths = [r["path"] for r in json.loads(out)]
    assert len(paths) == 100 and paths == sorted(paths)
    assert all(len(r["top_k"]) == 1 for r in json.loads(out))


def test_predict_bad_inputs_give_one_line_errors(checkpoint, cifar_pngs, tmp_path, capsys):
    status, out, err = run_cli(capsys, "predict", checkpoint, tmp_path / "absent.png")
    assert status == 1 and out == "" and err == f"reslab predict: error: no such file or folder: {tmp_path / 'absent.png'}\n"

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    status, out, err = run_cli(capsys, "predict", checkpoint, text)
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"reslab predict: error: cannot read {text} as an image")

    # Several inputs: the unreadable one is reported and skipped, the others predicted, status 1.
    status, out, err = run_cli(capsys, "predict", checkpoint, cifar_pngs[0], text, "--json")
    assert status == 1 and err.count("\n") == 1 and str(text) in err
    results = json.loads(out)
    assert "top_k" in results[0] and results[1]["path"] == str(text) and "cannot read" in results[1]["error"]

    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, err = run_cli(capsys, "predict", checkpoint, empty)
    assert status == 1 and "no image files in folder" in err


def _odd_images(tmp_path):
    """Files in modes and sizes that training never saw."""
    rgb = Image.new("RGB", (45, 17), (200, 40, 10))
    images = {
        "rgba.png": rgb.convert("RGBA"), "grey.png": rgb.convert("L"), "grey-alpha.png": rgb.convert("LA"),
        "palette.gif": rgb.convert("P"), "cmyk.jpg": rgb.convert("CMYK"), "bilevel.bmp": rgb.convert("1"),
        "large.jpg": Image.new("RGB", (640, 480), (10, 200, 30)), "tall.webp": Image.new("RGB", (3, 200), (9, 9, 9)),
        "grey16.png": Image.fromarray(np.full((20, 30), 40000, dtype=np.uint16)),
        "float.tif": Image.fromarray(np.full((20, 30), 0.5, dtype=np.float32)),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
    return sorted(tmp_path / name for name in images)


def test_odd_image_modes_and_sizes_are_converted(checkpoint, tmp_path):
    paths = _odd_images(tmp_path)
    assert find_images([tmp_path]) == paths
    predictions = list(Predictor.from_checkpoint(checkpoint).predict_files(paths, top_k=2))
    assert [p.error for p in predictions] == [None] * len(paths)
    assert all(len(p.top) == 2 and p.top[0].probability >= p.top[1].probability for p in predictions)


def test_conversions_keep_the_picture():
    # 16-bit is scaled, not clipped: 40000 / 65535 of full scale is grey 156, not white.
    grey16 = to_rgb(Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)))
    assert grey16.getpixel((0, 0)) == (156, 156, 156)
    # Transparent pixels are composited on white; opaque ones keep their colour.
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 255, 0))
    converted = to_rgb(rgba)
    assert (converted.getpixel((0, 0)), converted.getpixel((1, 0))) == ((255, 0, 0), (255, 255, 255))
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)


def test_resize_and_centre_crop():
    assert default_resize_size(32) == 32 and default_resize_size(224) == 256
    # A 96x32 strip red | green | blue: the shorter side is already 32, the centre crop is green.
    strip = Image.new("RGB", (96, 32), (255, 0, 0))
    strip.paste((0, 255, 0), (32, 0, 64, 32))
    strip.paste((0, 0, 255), (64, 0, 96, 32))
    cifar = Preprocess(32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    x = cifar(strip)
    assert x.shape == (3, 32, 32) and torch.equal(x[1], torch.ones(32, 32)) and x[0].abs().max() == 0
    # ImageNet: a 512x384 image -> shorter side 256 (341x256) -> centre 224x224.
    imagenet = Preprocess(224, 256, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert imagenet.resize_and_crop(Image.new("RGB", (512, 384))).size == (224, 224)
    assert torch.allclose(imagenet(Image.new("RGB", (512, 384), (255, 255, 255))), torch.full((3, 224, 224), 2.0))


# ------------------------------------------------------------------------------------------
# BN folding

# One model per family, small variants (ImageNet nets run at 64x64): post-activation basic and
# bottleneck, pre-activation, wide with dropout, FractalNet (dropout between conv and BN), DPN.
FOLD_SAMPLE = [(name, overrides) for name, overrides in (
    ("resnet20", {}), ("resnet50", {}), ("preact_resnet18", {}), ("wrn16_4", {"dropout": 0.3}),
    ("fractalnet20", {"channels": (16, 16, 32, 32, 64), "dropout": 0.1}), ("dpn68", {}),
) if name in list_models()]


@pytest.mark.parametrize("name,overrides", FOLD_SAMPLE)
def test_fold_bn_keeps_outputs_and_removes_batchnorms(name, overrides):
    torch.manual_seed(0)
    size = 64 if model_info(name).input_size == 224 else model_info(name).input_size
    model = with_trained_statistics(create_model(name, **overrides), size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_bn(model)
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert (got - expected).abs().max() <= 1e-5 * max(1.0, float(expected.abs().max()))
    assert count_batchnorms(folded) == count_batchnorms(model) - len(foldable_pairs(model)) < count_batchnorms(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the original is untouched"
    if name in ("resnet20", "resnet50"):  # post-activation: every BN follows a conv
        assert count_batchnorms(folded) == 0


class SharedConvOutput(nn.Module):
    """conv -> (BN -> conv) + identity: the conv's output also feeds the shortcut."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        y = self.conv(x)
        return y + self.bn2(self.conv2(self.bn(y)))


def test_fold_bn_leaves_a_bn_whose_input_feeds_another_path():
    model = with_trained_statistics(SharedConvOutput(), 8)
    assert foldable_pairs(model) == [("conv2", "bn2")]
    folded = fold_bn(model)
    assert isinstance(folded.bn, nn.BatchNorm2d) and isinstance(folded.bn2, nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


# ------------------------------------------------------------------------------------------
# Export


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return with_trained_statistics(create_model("resnet20"), 32)


def test_onnx_has_a_dynamic_batch_and_matches_pytorch(resnet20, tmp_path):
    import onnx
    import onnxruntime

    model = fold_bn(resnet20)
    path = export_onnx(model, tmp_path / "m.onnx", 32)
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            assert np.abs(logits - resnet20(x).numpy()).max() < 1e-4
    assert verify_onnx(path, model, 32).relative < 1e-5


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("method", ["script", "trace"])
def test_torchscript_loads_back_and_matches_pytorch(resnet20, tmp_path, method):
    path = export_torchscript(fold_bn(resnet20), tmp_path / "m.pt", 32, method)
    loaded = torch.jit.load(str(path))
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert torch.allclose(loaded(x), resnet20(x), atol=1e-5)
    assert verify_torchscript(path, resnet20, 32).max_difference < 1e-4


def test_export_cli_writes_and_verifies(checkpoint, tmp_path, capsys):
    status, out, _ = run_cli(capsys, "export", checkpoint, "--format", "onnx", "--out", tmp_path / "r20.onnx")
    assert status == 0 and (tmp_path / "r20.onnx").is_file()
    assert "wrote" in out and out.rstrip().endswith(": ok")
    status, out, err = run_cli(capsys, "export", checkpoint, "--format", "state-dict")
    assert status == 1 and "cannot write torchvision/timm weights: the stem" in err


# ------------------------------------------------------------------------------------------
# torchvision / timm weights. The foreign key lists are written from torchvision's and timm's
# resnet.py (stem conv1/bn1, layerN.i.convK/bnK, downsample.0/.1 on each stage's first block,
# fc), not derived from reslab.

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def foreign_resnet_shapes(layers, groups=1, width_per_group=64, num_classes=1000):
    """{key: shape} of a torchvision/timm bottleneck ResNet(-eXt)."""
    shapes = {"conv1.weight": (64, 3, 7, 7), "fc.bias": (num_classes,)}

    def bn(prefix, channels):
        for key in BN_KEYS:
            shapes[f"{prefix}.{key}"] = () if key == "num_batches_tracked" else (channels,)

    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        width = int(planes * width_per_group / 64) * groups
        for i in range(depth):
            p = f"layer{stage}.{i}"
            shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
            shapes[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
            shapes[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
            for k, c in ((1, width), (2, width), (3, planes * 4)):
                bn(f"{p}.bn{k}", c)
            if i == 0:
                shapes[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    shapes["fc.weight"] = (num_classes, 2048)
    return shapes


def numbered_state(shapes):
    """A distinct constant per tensor, so a misplaced tensor is caught (cheap for 44M weights)."""
    return {k: torch.tensor(7) if k.endswith("num_batches_tracked") else torch.full(s, float(i))
            for i, (k, s) in enumerate(shapes.items())}


RESNET50_SHAPES = foreign_resnet_shapes((3, 4, 6, 3))


def uninitialised(name: str, **overrides) -> nn.Module:
    """A model with allocated but uninitialised weights: loading overwrites them all anyway."""
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return model.to_empty(device="cpu")


def test_resnet50_key_list_is_torchvisions():
    assert len(RESNET50_SHAPES) == 320  # len(torchvision.models.resnet50().state_dict())
    assert sum(math.prod(s) for k, s in RESNET50_SHAPES.items() if "running" not in k and "num_batches" not in k) == 25_557_032


@pytest.mark.parametrize("wrapping", ["bare .pth", "state_dict + module. prefix", "model wrapper", "safetensors", "mapping"])
def test_torchvision_resnet50_weights_load_strictly(tmp_path, wrapping):
    from safetensors.torch import save_file

    state = numbered_state(RESNET50_SHAPES)
    path = tmp_path / ("w.safetensors" if wrapping == "safetensors" else "w.pth")
    if wrapping == "bare .pth":
        torch.save(state, path)
    elif wrapping == "state_dict + module. prefix":
        torch.save({"epoch": 90, "state_dict": {f"module.{k}": v for k, v in state.items()}, "best_acc1": 76.1}, path)
    elif wrapping == "model wrapper":
        torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    elif wrapping == "safetensors":
        save_file(state, path)
    source = state if wrapping == "mapping" else path
    model = load_torchvision_state_dict(uninitialised("resnet50"), source)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_imported_weights_become_a_reslab_model_file(tmp_path):
    state = numbered_state(RESNET50_SHAPES)
    path = import_weights(state, "resnet50", tmp_path / "resnet50.safetensors", "torchvision")
    model, card = load_model(path, with_card=True)
    assert (card.model, card.input_size, card.mean) == ("resnet50", 224, (0.485, 0.456, 0.406))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_old_torchvision_files_without_num_batches_tracked_load():
    state = {k: v for k, v in numbered_state(RESNET50_SHAPES).items() if not k.endswith("num_batches_tracked")}
    model = load_torchvision_state_dict(uninitialised("resnet50"), state)
    assert int(model.bn1.num_batches_tracked) == 0 and torch.equal(model.fc.bias, state["fc.bias"])


def test_timm_resnext101_32x4d_weights_load_strictly():
    state = numbered_state(foreign_resnet_shapes((3, 4, 23, 3), groups=32, width_per_group=4))
    model = load_timm_state_dict(uninitialised("resnext101_32x4d"), {"state_dict": state})
    assert model.layer3[22].conv2.weight.shape == (512, 16, 3, 3)  # width 32 x 16, 32 groups
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_foreign_weights_of_another_architecture_are_refused(tmp_path):
    state = numbered_state(RESNET50_SHAPES)
    with pytest.raises(CheckpointError, match="missing keys: none; unexpected keys: layer1.0.conv3.weight.*another architecture"):
        load_torchvision_state_dict(uninitialised("resnet34"), state)
    state["head.fc.weight"] = state.pop("fc.weight")
    with pytest.raises(CheckpointError, match="missing keys: fc.weight; unexpected keys: head.fc.weight"):
        load_torchvision_state_dict(uninitialised("resnet50"), state)
    torch.save({"epoch": 3, "arch": "resnet50"}, tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="holds no state dict .* found: epoch, arch"):
        read_state_dict(tmp_path / "junk.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_state_dict_writes_torchvision_keys(tmp_path, suffix):
    model = create_model("resnet50")
    path = export_state_dict(model, tmp_path / f"resnet50{suffix}", "torchvision")
    written = read_state_dict(path)
    assert {k: tuple(v.shape) for k, v in written.items()} == RESNET50_SHAPES
    assert torch.equal(written["layer4.2.bn3.running_var"], model.layer4[2].bn3.running_var)


@pytest.mark.parametrize("name,overrides,reason", [("resnet20", {}, "the stem"), ("resnet50", {"shortcut": "C"}, "option B"),
                                                    ("plain18", {}, "PlainBlock")])
def test_export_state_dict_refuses_other_layouts(tmp_path, name, overrides, reason):
    with pytest.raises(ValueError, match=reason):
        export_state_dict(create_model(name, **overrides), tmp_path / "x.pth", "timm")


# ------------------------------------------------------------------------------------------
# Benchmark


def test_benchmark_measures_setups_against_the_baseline(resnet20):
    setup = BenchSetup("fp32", channels_last=True, fold_bn=True)
    baseline, measured = compare_with_baseline(resnet20, "infer", setup, batch_size=4, input_size=32, repeats=2, warmup=1)
    assert baseline.setup == BASELINE and baseline.setup.label == "eager fp32 NCHW"
    assert measured.setup.label == "fold-bn + fp32 + channels_last"
    for m in (baseline, measured):
        assert len(m.seconds) == 2 and m.images_per_second > 0 and m.latency_ms > 0
        assert m.peak_memory_bytes is None or m.peak_memory_bytes >= 0
    (train,) = run_benchmark(resnet20, "train", [BASELINE], batch_size=4, input_size=32, repeats=1, warmup=1)
    assert train.mode == "train" and train.images_per_second > 0
    with pytest.raises(ValueError, match="fold_bn is for inference"):
        run_benchmark(resnet20, "train", [BenchSetup(fold_bn=True)], batch_size=2, input_size=32, repeats=1, warmup=0)


def test_bench_cli_json(capsys):
    status, out, _ = run_cli(capsys, "bench", "resnet20", "--batch-size", "2", "--repeats", "2", "--warmup", "1",
                             "--precision", "bf16", "--device", "cpu", "--json")
    result = json.loads(out)
    assert status == 0 and result["baseline"]["setup"] == "eager fp32 NCHW" and result["measured"]["setup"] == "bf16 + NCHW"
    assert result["speedup"] == pytest.approx(result["measured"]["images_per_second"] / result["baseline"]["images_per_second"])


def test_one_image_path_is_one_image_not_its_characters(checkpoint, cifar_pngs):
    """A str where a list of paths is expected was iterated character by character."""
    from reslab.inference.predict import predict_images

    image = cifar_pngs[0]
    assert find_images(str(image)) == [image] and find_images(image) == [image]
    for given in (str(image), image):
        predictions = list(Predictor.from_checkpoint(checkpoint).predict_files(given, top_k=1))
        assert [p.path for p in predictions] == [str(image)] and predictions[0].error is None
    assert [p.path for p in predict_images(checkpoint, str(image), top_k=1)] == [str(image)]
