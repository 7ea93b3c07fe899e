"""The experiments compute what they claim: lesions, paths, responses, evaluation, report, CLI.

Tiny ResNets (two stages of widths 4 and 8 on 8x8 inputs) with hand-set weights make the
answers predictable; labels are the unlesioned model's own predictions, so its error is 0%.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from reslab import residual_blocks, save_model
from reslab.analysis.evaluate import check_classes, confusion_matrix, evaluate, per_class_accuracy
from reslab.analysis.lesion import (delete_each, delete_random, find_units, lesion_study, lesioned, reordered,
                                    swappable_pairs)
from reslab.analysis.paths import (gradient_routes, input_gradient, path_counts, path_study, smallest_window)
from reslab.analysis.report import build_report, gather, json_tables
from reslab.analysis.responses import response_layers, response_stds
from reslab.checkpoint import make_card
from reslab.cli import build_parser, main
from reslab.errors import DataError
from reslab.models.layers import ResidualBlock, ZeroPadShortcut
from reslab.models.resnet import BasicBlock, PlainBlock, ResNet


def tiny_net(block=BasicBlock, depths=(2, 2)) -> ResNet:
    """A two-stage net (widths 4, 8; 3 classes) with random BN statistics, as if trained."""
    torch.manual_seed(0)
    model = ResNet(block, list(depths), [4, 8], num_classes=3, stem="cifar", stem_width=4, shortcut="A")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def self_labelled_batches(model: nn.Module, n: int = 24, batch: int = 8) -> list:
    """Random images labelled by the model's own predictions (so its error is exactly 0)."""
    torch.manual_seed(1)
    images = torch.randn(n, 3, 8, 8)
    with torch.no_grad():
        labels = model(images).argmax(1)
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch)]


def silence_branch(block: nn.Module) -> None:
    """Zero the branch's last BN (weight and bias): F(x) = 0, the block is the identity."""
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)


def snapshot(model: nn.Module, x: torch.Tensor) -> tuple:
    with torch.no_grad():
        out = model(x)
    return (out, [id(m) for m in model.modules()], [(b.branch_enabled, b.gradient_route) for _, b in residual_blocks(model)],
            [m.training for m in model.modules()])


# ------------------------------------------------------------------------------------------
# Lesion study


def test_units_and_their_shapes_come_from_walking_the_model():
    model = tiny_net(depths=(2, 3))
    units = find_units(model, torch.randn(2, 3, 8, 8))
    assert [u.name for u in units] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer2.2"]
    assert [u.reshapes for u in units] == [False, False, True, False, False]
    assert units[2].in_shape == (4, 8, 8) and units[2].out_shape == (8, 4, 4)
    assert all(u.residual and u.deletable for u in units)
    assert swappable_pairs(units) == [("layer1.0", "layer1.1"), ("layer2.1", "layer2.2")]


def test_deleted_block_with_identity_shortcut_is_the_identity():
    model = tiny_net()
    units = find_units(model, torch.randn(2, 3, 8, 8))
    x = torch.rand(2, 4, 8, 8)  # post-ReLU activations: non-negative
    with lesioned(model, [units[1]]):
        assert torch.equal(model.layer1[1](x), x)
    y = torch.rand(2, 4, 8, 8)
    with lesioned(model, [units[2]]):  # downsampling block: keeps its zero-padding shortcut
        assert torch.equal(model.layer2[0](y), ZeroPadShortcut(4, 8, 2)(y))
    assert not torch.equal(model.layer1[1](x), x)  # restored: the branch is back


def test_deleting_a_silent_block_changes_nothing_and_a_live_one_does():
    model = tiny_net()
    silence_branch(model.layer1[1])
    batches = self_labelled_batches(model)
    study = delete_each(model, batches)
    errors = {row["block"]: row["error_pct"] for row in study["blocks"]}
    assert study["baseline_error_pct"] == 0.0 and errors["layer1.1"] == 0.0
    assert study["chance_error_pct"] == pytest.approx(100 * 2 / 3)
    x = batches[0][0]
    with torch.no_grad():
        full = model(x)
        with lesioned(model, find_units(model, x)[1:2]):
            assert torch.equal(model(x), full)
        with lesioned(model, find_units(model, x)[3:4]):
            assert not torch.allclose(model(x), full)


def test_random_deletion_of_silent_blocks_keeps_zero_error():
    model = tiny_net(depths=(3, 3))
    units = find_units(model, torch.randn(2, 3, 8, 8))
    candidates = [u for u in units if not u.reshapes]
    for unit in candidates:
        silence_branch(model.get_submodule(unit.name))
    import random

    rows = delete_random(model, self_labelled_batches(model), candidates, max_k=4, draws=3, rng=random.Random(0))
    assert [r["k"] for r in rows] == [1, 2, 3, 4]
    assert all(r["draws"] == 3 and r["errors_pct"] == [0.0] * 3 for r in rows)


def test_reordering_swaps_modules_and_restores_them():
    model = tiny_net(depths=(3, 2))
    b0, b1, b2 = model.layer1
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
        with reordered(model, [("layer1.0", "layer1.2"), ("layer1.0", "layer1.1")]):
            assert list(model.layer1) == [b1, b2, b0]  # swaps applied in order
            stem = model.relu(model.bn1(model.conv1(x)))
            expected = model.forward_head(model.layer2(b0(b2(b1(stem)))))
            assert torch.allclose(model(x), expected)
            assert not torch.allclose(model(x), before)
        assert list(model.layer1) == [b0, b1, b2]
        assert torch.equal(model(x), before)


def test_lesion_study_restores_the_model_and_reports_every_part():
    model, plain = tiny_net(depths=(3, 2)), tiny_net(PlainBlock, depths=(3, 2))
    batches = self_labelled_batches(model)
    model.train()  # the study switches to eval mode and back
    x = batches[0][0]
    before, before_plain = snapshot(model.eval(), x), snapshot(plain, x)
    model.train()
    result = lesion_study(model, batches, plain=(plain, batches), max_k=2, draws=2, seed=0)
    assert model.training
    after = snapshot(model.eval(), x)
    assert torch.equal(before[0], after[0]) and before[1:3] == after[1:3]
    after_plain = snapshot(plain, x)
    assert torch.equal(before_plain[0], after_plain[0]) and before_plain[1:] == after_plain[1:]
    assert result["single"]["baseline_error_pct"] == 0.0 and len(result["single"]["blocks"]) == 5
    assert [r["k"] for r in result["deleted"]] == [1, 2] and [r["k"] for r in result["reordered"]] == [1, 2]
    assert [r["deletable"] for r in result["plain"]["blocks"]] == [True, True, True, False, True]
    assert result["plain"]["blocks"][3]["error_pct"] is None
    json.dumps(result)  # JSON-ready


def test_plain_block_that_keeps_the_shape_becomes_the_identity():
    model = tiny_net(PlainBlock)
    units = find_units(model, torch.randn(2, 3, 8, 8))
    assert [u.residual for u in units] == [False] * 4 and [u.deletable for u in units] == [True, True, False, True]
    original = model.layer1[1]
    with lesioned(model, [units[1]]):
        assert isinstance(model.layer1[1], nn.Identity)
    assert model.layer1[1] is original
    with pytest.raises(ValueError, match="cannot be deleted"):
        with lesioned(model, [units[2]]):
            pass
    with pytest.raises(ValueError, match="no residual blocks"):
        lesion_study(model, self_labelled_batches(model))


# ------------------------------------------------------------------------------------------
# Paths


def test_path_counts_are_binomial():
    assert path_counts(5) == [1, 5, 10, 10, 5, 1]
    counts = path_counts(54)
    assert sum(counts) == 2**54 and counts[27] == math.comb(54, 27)
    lo, hi = smallest_window(counts, 0.95)  # Veit et al.: 95% of the paths lie within 19..35 blocks
    assert 19 <= lo and hi <= 35 and sum(counts[lo:hi + 1]) >= 0.95 * 2**54


def test_smallest_window():
    assert smallest_window([0, 1, 5, 1, 0], 0.7) == (2, 2)
    assert smallest_window([0, 1, 5, 1, 0], 0.9) == (1, 3)
    assert smallest_window([2, 1, 0, 0, 1, 3], 0.5) == (4, 5)  # equally short: the heavier window
    assert smallest_window([1, 2, 3], 1.0) == (0, 2)
    with pytest.raises(ValueError):
        smallest_window([0, 0], 0.9)
    with pytest.raises(ValueError):
        smallest_window([1, 2], 0.0)


class LinearUnit(ResidualBlock):
    """x + W x: a linear residual unit on vectors (test only)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)

    def residual(self, x):
        return self.linear(x)


def linear_stack(n: int = 4, dim: int = 5) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[LinearUnit(dim) for _ in range(n)], nn.Linear(dim, 3))


def loss_gradient_at_output(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        features = model[:-1](x)
    features.requires_grad_(True)
    loss = nn.functional.cross_entropy(model[-1](features), y, reduction="sum")
    return torch.autograd.grad(loss, features)[0]


def test_path_through_no_branch_carries_the_pure_identity_gradient():
    model = linear_stack()
    x, y = torch.randn(6, 5), torch.randint(3, (6,))
    g = loss_gradient_at_output(model, x, y)
    assert torch.allclose(input_gradient(model, x, y, []), g)  # the identity path: Jacobian I
    chain = g
    for unit in reversed(model[:-1]):
        chain = chain @ unit.linear.weight  # through every branch: W_1^T ... W_n^T g
    assert torch.allclose(input_gradient(model, x, y, range(4)), chain, atol=1e-6)


def test_sampled_paths_sum_to_the_full_gradient():
    model = linear_stack()
    x, y = torch.randn(6, 5), torch.randint(3, (6,))
    total = sum(input_gradient(model, x, y, [i for i in range(4) if mask >> i & 1]) for mask in range(16))
    x_leaf = x.clone().requires_grad_(True)
    full = torch.autograd.grad(nn.functional.cross_entropy(model(x_leaf), y, reduction="sum"), x_leaf)[0]
    assert torch.allclose(total, full, atol=1e-5)
    assert all(unit.gradient_route == "both" for unit in model[:-1])


def test_path_study_table():
    model = tiny_net()
    (images, labels), = self_labelled_batches(model, n=4, batch=4)
    result = path_study(model, images, labels, samples=2, fraction=0.8)
    rows = result["lengths"]
    assert [r["length"] for r in rows] == [0, 1, 2, 3, 4] and [r["paths"] for r in rows] == [1, 4, 6, 4, 1]
    assert result["paths"] == 16 and all(len(r["samples"]) == 2 for r in rows)
    assert all(r["total_gradient"] == pytest.approx(r["paths"] * r["mean_gradient"]) for r in rows)
    assert rows[0]["std_gradient"] == 0.0  # only one path of length 0
    window = result["total_window"]
    assert window["gradient_share"] >= 0.8
    assert window["path_share"] == sum(r["paths"] for r in rows[window["shortest"]:window["longest"] + 1]) / 16
    assert all(b.gradient_route == "both" for _, b in residual_blocks(model))


def test_gradient_routes_are_restored_after_an_error():
    model = tiny_net()
    blocks = [b for _, b in residual_blocks(model)]
    with pytest.raises(RuntimeError):
        with gradient_routes(blocks, [1]):
            assert [b.gradient_route for b in blocks] == ["skip", "branch", "skip", "skip"]
            raise RuntimeError
    assert [b.gradient_route for b in blocks] == ["both"] * 4


# ------------------------------------------------------------------------------------------
# Residual responses


@pytest.mark.parametrize("block", [BasicBlock, PlainBlock])
def test_response_std_is_proportional_to_the_last_bn_scale(block):
    model = tiny_net(block)
    batches = self_labelled_batches(model)
    stds = {}
    for scale in (1.0, 3.0):
        nn.init.constant_(model.layer1[1].bn2.weight, scale)
        nn.init.zeros_(model.layer1[1].bn2.bias)
        stds[scale] = response_stds(model, batches)[1]
    assert stds[1.0]["block"] == "layer1.1"
    assert stds[3.0]["std"] == pytest.approx(3 * stds[1.0]["std"], rel=1e-5)


def test_response_layers_are_found_generically():
    model = tiny_net()
    residual = response_layers(model)
    assert [(name, take) for name, _, take in residual][:2] == [("layer1.0", "input"), ("layer1.1", "input")]
    assert [m for _, m, _ in residual] == [b.drop_path for _, b in residual_blocks(model)]
    plain = tiny_net(PlainBlock)
    layers = response_layers(plain)
    assert [m for _, m, _ in layers] == [plain.layer1[0].bn2, plain.layer1[1].bn2, plain.layer2[0].bn2, plain.layer2[1].bn2]
    assert all(take == "output" for _, _, take in layers)


# ------------------------------------------------------------------------------------------
# Evaluation


def test_confusion_matrix_and_per_class_accuracy_by_hand():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    confusion = confusion_matrix(labels, predictions, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert int(confusion.sum()) == 6
    assert per_class_accuracy(confusion) == [0.5, 1.0, pytest.approx(2 / 3), None]
    with pytest.raises(ValueError):
        confusion_matrix(labels, predictions, 2)


def test_evaluate_in_batches():
    model = nn.Identity()  # "logits" = the input: predicted class = argmax of the input vector
    inputs = torch.eye(3)[[0, 1, 2, 2, 0, 1]]
    labels = torch.tensor([0, 1, 2, 1, 1, 1])
    result = evaluate(model, [(inputs[:4], labels[:4]), (inputs[4:], labels[4:])], ["a", "b", "c"])
    assert result.num_images == 6 and result.accuracy == pytest.approx(4 / 6)
    assert result.confusion == [[1, 0, 0], [1, 2, 1], [0, 0, 1]]
    assert result.per_class_accuracy == [1.0, 0.5, 1.0]
    table = result.to_dict()
    assert table["per_class"][1] == {"class": "b", "images": 4, "accuracy_pct": 50.0}
    assert "accuracy 66.67%" in result.format()


def test_evaluate_with_test_time_flips_averages_the_mirror_view():
    class LeftAndWhole(nn.Module):  # logits: (mean of the left half, 0.75 x mean of the image)
        def forward(self, x):
            return torch.stack([x[..., :2].mean((1, 2, 3)), 0.75 * x.mean((1, 2, 3))], 1)

    images = torch.zeros(2, 1, 4, 4)
    images[0, ..., :2] = 1.0  # single view (1, 0.375): class 0; mirror (0, 0.375); mean (0.5, 0.375): class 0
    images[1, ..., 2:] = 1.0  # single view (0, 0.375): class 1; mirror (1, 0.375); mean (0.5, 0.375): class 0
    batches = [(images, torch.tensor([0, 1]))]
    assert evaluate(LeftAndWhole(), batches, ["a", "b"]).accuracy == 1.0
    flipped = evaluate(LeftAndWhole(), batches, ["a", "b"], tta_flip=True)
    assert flipped.confusion == [[1, 0], [1, 0]] and flipped.accuracy == 0.5


def test_check_classes_refuses_another_data_set():
    card = make_card("resnet20", tiny_net(), class_names=["a", "b", "c"])
    assert check_classes(card, ["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(DataError, match="predicts 3 classes"):
        check_classes(card, ["a", "b"])
    with pytest.raises(DataError, match="trained on classes"):
        check_classes(card, ["a", "b", "x"])


# ------------------------------------------------------------------------------------------
# Report


def test_report_gathers_figures_and_tables(tmp_path):
    from reslab.analysis.plots import figure, save_figure, write_json

    write_json(tmp_path / "lesion" / "lesion.json", {"experiment": "lesion", "title": "Lesion study", "draws": 3,
                                                     "single": {"blocks": [{"block": "layer1.0", "error_pct": 7.25}]},
                                                     "ratio": float("nan")})
    fig, ax = figure()
    ax.plot([0, 1], [0, 1])
    save_figure(fig, tmp_path / "lesion" / "lesion_k.png")
    write_json(tmp_path / "runs" / "a" / "config.json", {"lr": 0.1})  # not an experiment table
    assert json.loads((tmp_path / "lesion" / "lesion.json").read_text())["ratio"] is None
    sections = gather(tmp_path)
    assert [s.title for s in sections] == ["Lesion study"]
    markdown = build_report(tmp_path).read_text()
    assert "## Lesion study" in markdown and "![lesion_k](lesion/lesion_k.png)" in markdown
    assert "| layer1.0 | 7.25 |" in markdown and "| draws | 3 |" in markdown and "lr" not in markdown
    page = build_report(tmp_path, "html").read_text()
    assert "<img src='lesion/lesion_k.png'" in page and "<td>7.25</td>" in page
    with pytest.raises(FileNotFoundError):
        build_report(tmp_path / "runs")


def test_json_tables_render_matrices_and_summarise_long_lists():
    tables = dict(json_tables({"experiment": "x", "confusion": [[1, 2], [3, 4]], "values": list(range(20))}))
    assert tables["confusion"].rows == [["0", "1", "2"], ["1", "3", "4"]]
    assert tables[""].rows == [["values", "20 values, 0 to 19"]]


# ------------------------------------------------------------------------------------------
# Command line


@pytest.mark.parametrize("argv", [
    ["eval", "ckpt", "--data", "d", "--images", "10", "--fp32"],
    ["plot", "run1", "run2", "--out", "x.png", "--smooth", "3"],
    ["lesion", "ckpt", "--data", "d", "--plain", "p", "--max-k", "3", "--draws", "2"],
    ["paths", "ckpt", "--samples", "4", "--fraction", "0.8"],
    ["responses", "a", "b", "--data", "d"],
    ["report", "dir", "--format", "html"],
])
def test_commands_parse(argv):
    args = build_parser().parse_args(argv)
    assert args.command == argv[0] and callable(args.handler)


def test_bad_values_are_usage_errors(capsys):
    for argv in (["lesion", "c", "--data", "d", "--max-k", "0"], ["paths", "c", "--fraction", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(argv)
        assert exc.value.code == 2


def test_commands_end_to_end(tiny_cifar, tmp_path, capsys, monkeypatch):
    from reslab import create_model

    monkeypatch.setenv("RESLAB_CACHE", str(tmp_path / "cache"))

    torch.manual_seed(0)
    classes = sorted(p.name for p in (tiny_cifar / "test").iterdir())
    for name in ("resnet20", "plain20"):
        model = create_model(name)
        with torch.no_grad():  # BN maps that are not the identity, so that folding them changes the convolutions
            for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                bn.running_mean.uniform_(-0.2, 0.2), bn.running_var.uniform_(0.5, 2.0), bn.bias.uniform_(-0.2, 0.2)
        save_model(tmp_path / f"{name}.safetensors", model, make_card(name, model, class_names=classes,
                                                                      mean=(0.5,) * 3, std=(0.25,) * 3))
    ckpt, plain, out = str(tmp_path / "resnet20.safetensors"), str(tmp_path / "plain20.safetensors"), tmp_path / "out"
    data = ["--data", str(tiny_cifar), "--images", "10"]
    assert main(["eval", ckpt, *data, "--out", str(out / "eval_tta"), "--tta-flip", "--tta-translate", "1"]) == 0
    table = json.loads((out / "eval_tta" / "eval.json").read_text())
    assert table["tta_flip"] and table["tta_translate"] == 1 and table["num_images"] == 10
    assert main(["eval", ckpt, *data, "--out", str(out / "eval")]) == 0
    table = json.loads((out / "eval" / "eval.json").read_text())
    assert table["num_images"] == 10 and sum(map(sum, table["confusion"])) == 10 and not table["tta_flip"]
    # eval runs a BN-folded copy: the same predictions as the model as saved
    from reslab import load_model
    from reslab.analysis.evaluate import eval_batches
    from reslab.data import balanced_subset, load_dataset
    saved, card = load_model(ckpt, with_card=True)
    subset = balanced_subset(load_dataset(tiny_cifar, "test"), 10, 0)
    unfolded = evaluate(saved, eval_batches(subset, card.mean, card.std), classes)
    assert table["confusion"] == unfolded.confusion
    assert main(["lesion", ckpt, *data, "--plain", plain, "--max-k", "1", "--draws", "1", "--out", str(out / "lesion")]) == 0
    lesion = json.loads((out / "lesion" / "lesion.json").read_text())
    assert len(lesion["single"]["blocks"]) == 9 and sum(r["downsampling"] for r in lesion["single"]["blocks"]) == 2
    assert main(["paths", ckpt, "--images", "2", "--samples", "1", "--out", str(out / "paths")]) == 0
    assert len(json.loads((out / "paths" / "paths.json").read_text())["lengths"]) == 10
    assert main(["responses", ckpt, plain, *data, "--out", str(out / "responses")]) == 0
    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for png in ("eval/confusion.png", "lesion/lesion_blocks.png", "lesion/lesion_k.png", "paths/paths.png", "responses/responses.png"):
        assert (out / png).stat().st_size > 10_000 and png in report
    assert main(["lesion", str(tmp_path / "missing"), "--data", str(tiny_cifar)]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    # every command saves what reruns it: the command, the weights' hashes, the images and the seed
    from reslab.analysis.sources import weights_sha256
    for name, models in (("lesion", [ckpt, plain]), ("paths", [ckpt]), ("responses", [ckpt, plain])):
        record = json.loads((out / name / f"{name}_run.json").read_text())
        assert record["of_experiment"] == name and record["command"] and record["seed"] == 0
        assert [m["source"] for m in record["models"]] == models
        assert record["models"][0]["weights_sha256"] == weights_sha256(load_model(ckpt))
    assert len(json.loads((out / "lesion" / "lesion_run.json").read_text())["image_indices"]) == 10
    assert "claims" in json.loads((out / "lesion" / "lesion.json").read_text())
    # a plain net where the study needs residual blocks: one line naming what it applies to
    capsys.readouterr()
    assert main(["lesion", plain, *data, "--out", str(out / "lesion_plain")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no residual blocks" in err and "resnet56" in err
    assert main(["paths", plain, "--images", "2", "--out", str(out / "paths_plain")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "applies to residual networks" in err


# ------------------------------------------------------------------------------------------
# Training experiments: degradation and stochastic depth, on run folders written by hand


def fake_run(folder, config, train_errors, test_errors, **per_epoch):
    """A finished run folder as `reslab train` writes it: config, checkpoint, result, logs."""
    from reslab.analysis.plots import write_json
    from reslab.train.state import CHECKPOINT_FILE, RESULT_FILE

    folder.mkdir(parents=True)
    write_json(folder / "config.json", {"config": config.to_dict()})
    (folder / CHECKPOINT_FILE).write_bytes(b"")
    write_json(folder / RESULT_FILE, {})
    epochs = [{"epoch": e, "iteration": 10 * (e + 1), "lr": 0.1, "train_error": tr, "test_error": te,
               "epoch_seconds": 2.0, **{k: v[e] for k, v in per_epoch.items()}}
              for e, (tr, te) in enumerate(zip(train_errors, test_errors))]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    steps = [{"iteration": 5 * (i + 1), "train_error": 0.9 - 0.01 * i} for i in range(2 * len(epochs))]
    (folder / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps) + '{"iteration": 9')  # torn line


def row(model, residual, depth, train):
    return {"model": model, "residual": residual, "depth": depth, "final_train_error_pct": train}


def test_degradation_verdict():
    from reslab.analysis.degradation import degradation_verdict

    seen = degradation_verdict([row("plain20", False, 20, 5.0), row("plain56", False, 56, 9.0),
                                row("resnet20", True, 20, 4.0), row("resnet56", True, 56, 2.0)])
    assert seen["plain_deeper_trains_worse"] and seen["residual_deeper_trains_better"] and seen["reproduced"]
    assert "plain56 (56 layers) ends with higher training error than plain20 (20 layers): 9.00% vs 5.00%" in seen["text"]
    unseen = degradation_verdict([row("plain56", False, 56, 4.0), row("plain20", False, 20, 5.0),
                                  row("resnet20", True, 20, 4.0), row("resnet56", True, 56, 2.0)])
    assert unseen["plain_deeper_trains_worse"] is False and unseen["reproduced"] is False
    partial = degradation_verdict([row("resnet20", True, 20, 4.0), row("resnet56", True, 56, 2.0)])
    assert partial["plain_deeper_trains_worse"] is None and partial["reproduced"] is None


def test_degradation_command_reuses_finished_runs(tmp_path, capsys):
    from reslab.train import TrainConfig

    out = tmp_path / "degradation"
    final = {"plain20": (0.05, 0.10), "plain56": (0.09, 0.14), "resnet20": (0.04, 0.09), "resnet56": (0.02, 0.07)}
    for model, (train, test) in final.items():
        config = TrainConfig.from_recipe("fast", model=model, data="d", out=str(out / model), epochs=2)
        fake_run(out / model, config, [0.5, train], [0.6, test])
    assert main(["degradation", "--data", "d", "--out", str(out), "--recipe", "fast", "--epochs", "2"]) == 0
    table = json.loads((out / "degradation.json").read_text())
    assert [r["status"] for r in table["runs"]] == ["reused"] * 4
    assert [r["depth"] for r in table["runs"]] == [20, 56, 20, 56]
    assert table["runs"][1]["final_train_error_pct"] == pytest.approx(9.0) and table["verdict"]["reproduced"] is True
    assert (out / "degradation.png").stat().st_size > 10_000
    assert main(["degradation", "--data", "d", "--out", str(out), "--recipe", "fast", "--epochs", "3"]) == 1
    assert "configured otherwise (epochs: 2 there, 3.0 asked)" in capsys.readouterr().err


def test_read_run_and_plot_command(tmp_path):
    from reslab.analysis.plots import read_run
    from reslab.train import TrainConfig

    fake_run(tmp_path / "a", TrainConfig(), [0.5, 0.25], [0.6, 0.3])
    curves = read_run(tmp_path / "a")
    assert curves.name == "a" and curves.test_iterations == [10, 20] and curves.test_error == [60.0, 30.0]
    assert curves.train_iterations == [5, 10, 15, 20] and curves.train_error[0] == pytest.approx(90.0)
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "missing")]) == 1


def test_depth_probe_counts_computed_branches_and_gradients():
    from reslab.analysis.sdepth import DepthProbe, first_block_conv
    from reslab.models.layers import StochasticDepth

    model = tiny_net(depths=(2, 2)).train()
    blocks = [b for _, b in residual_blocks(model)]
    blocks[1].drop_path = StochasticDepth(1e-9)  # never computed in training
    blocks[3].drop_path = StochasticDepth(1e-9)
    assert first_block_conv(model) is model.layer1[0].conv1
    probe, grads = DepthProbe(), []
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    for it in range(5):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append(model.layer1[0].conv1.weight.grad.abs().mean().item())
        probe.after_backward(model, it)
        model.eval()
        model(x)  # evaluation forwards are not training steps
        model.train()
    logged = probe.on_epoch_end(0, {})
    assert logged["active_blocks"] == 2.0  # blocks 0 and 2 computed, 1 and 3 dropped
    assert logged["first_block_grad"] == pytest.approx(sum(grads) / 5)
    assert all(not b.drop_path._forward_hooks for b in blocks)  # no hook left on the model
    assert probe.on_epoch_end(1, {}) == {}


def test_sdepth_command_reports_depth_and_time(tmp_path):
    from reslab.train import TrainConfig

    out = tmp_path / "sdepth"
    for name, survival, seconds, grads in (("constant", None, 10.0, [1e-3, 5e-4]), ("stochastic", 0.5, 7.5, [2e-3, 1e-3])):
        config = TrainConfig.from_recipe("stochastic-depth", model="resnet20", data="d", out=str(out / name),
                                         stochastic_depth=survival, epochs=2)
        fake_run(out / name, config, [0.5, 0.3], [0.6, 0.4], first_block_grad=grads, active_blocks=[6.0, 7.0])
        lines = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        (out / name / "metrics.jsonl").write_text("".join(json.dumps({**r, "epoch_seconds": seconds}) + "\n" for r in lines))
    assert main(["sdepth", "--data", "d", "--out", str(out), "--model", "resnet20", "--epochs", "2"]) == 0
    result = json.loads((out / "sdepth.json").read_text())
    assert result["depth"]["blocks"] == 9 and result["depth"]["sum_survival"] == pytest.approx(6.5)
    assert result["depth"]["paper_formula"] == pytest.approx((3 * 9 - 1) / 4)
    assert result["depth"]["measured_active_blocks"] == pytest.approx(6.5)
    assert result["time"]["time_saved_pct"] == pytest.approx(25.0)
    assert [r["stochastic_grad"] for r in result["epochs"]] == [2e-3, 1e-3]
    assert (out / "sdepth.png").stat().st_size > 10_000


def test_sdepth_trains_both_runs_with_the_probe(tiny_cifar, tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "sdepth"
    argv = ["sdepth", "--data", str(tiny_cifar), "--out", str(out), "--model", "resnet20", "--recipe", "fast",
            "--epochs", "2", "--train-subset", "60", "--batch-size", "30", "--threads", "1", "--set", "progress=quiet", "--set", "tta_flip=False"]
    assert main(argv) == 0
    result = json.loads((out / "sdepth.json").read_text())
    assert result["status"] == {"constant": "trained", "stochastic": "trained"}
    assert len(result["epochs"]) == 2 and all(r["constant_grad"] > 0 and r["stochastic_grad"] > 0 for r in result["epochs"])
    # One counted step per epoch (2 steps, the first only attaches the hooks): 1..9 blocks computed.
    assert all(1 <= r["stochastic_active_blocks"] <= 9 for r in result["epochs"])
    assert main(argv) == 0 and json.loads((out / "sdepth.json").read_text())["status"]["constant"] == "reused"


def test_counts_of_one_are_singular():
    """'1 classes' and '1 images' read as slips of a tool that does not look at its output."""
    from types import SimpleNamespace

    from reslab.analysis.evaluate import Evaluation
    from reslab.errors import DataError

    one = Evaluation(num_images=1, accuracy=1.0, class_names=["a", "b"], per_class_accuracy=[1.0, None],
                     confusion=[[1, 0], [0, 0]])
    assert one.format().startswith("1 image, accuracy 100.00%")
    with pytest.raises(DataError, match=r"predicts 1 class but the data set has 2"):
        check_classes(SimpleNamespace(num_classes=1, class_names=None), ["a", "b"])


# ------------------------------------------------------------------------------------------
# Claim tables: the paper's claims judged on the numbers


def _single(base, errors, downsampling=(), residual=True):
    return {"residual": residual, "baseline_error_pct": base, "chance_error_pct": 90.0,
            "blocks": [{"index": i, "downsampling": i in downsampling, "error_pct": e} for i, e in enumerate(errors, 1)]}


def _ks(means):
    return [{"k": k, "mean_error_pct": m} for k, m in enumerate(means, 1)]


def test_lesion_claims_judge_the_numbers():
    from reslab.analysis.lesion import lesion_claims

    result = {"single": _single(7.0, [7.5, 8.0, 30.0, 7.2], downsampling=(3,)), "draws": 5,
              "deleted": _ks([8.0, 9.5, 12.0]), "reordered": _ks([8.0, 8.2, 8.1]),
              "plain": _single(8.0, [90.0, 88.0, 85.0], residual=False)}
    claims = {c["claim"]: c for c in lesion_claims(result)}
    barely = claims["deleting one residual block (not downsampling) barely changes the test error"]
    assert barely["holds"] is True and "median 7.50%" in barely["reslab"] and "worst 8.00%" in barely["reslab"]
    assert claims["deleting a downsampling block hurts more than the others"]["holds"] is True
    assert claims["deleting one layer of a plain network gives chance-level error"]["holds"] is True
    assert claims["the error rises smoothly with the number of blocks deleted"]["holds"] is True
    assert claims["the error rises smoothly with the number of blocks reordered"]["holds"] is True
    result["single"] = _single(7.0, [12.0, 9.5, 30.0, 10.0], downsampling=(3,))  # median rise 3 points
    result["deleted"] = _ks([8.0, 14.0, 11.0])  # falls by 3 points at k = 3
    result["plain"] = _single(8.0, [20.0, 30.0], residual=False)
    claims = {c["claim"]: c["holds"] for c in lesion_claims(result)}
    assert claims["deleting one residual block (not downsampling) barely changes the test error"] is False
    assert len(lesion_claims({**result, "deleted": _ks([8.0]), "reordered": []})) == 3  # one k: no rise to judge
    assert claims["deleting one layer of a plain network gives chance-level error"] is False
    assert claims["the error rises smoothly with the number of blocks deleted"] is False
    # a fall of 3 points is noise when the draws spread widely: std 10 over 20 draws gives a
    # standard error of 2.24 per mean, so two standard errors of the difference are 6.3 points
    result["deleted"] = [{**row, "std_error_pct": 10.0} for row in _ks([8.0, 14.0, 11.0])]
    result["draws"] = 20
    deleted = {c["claim"]: c for c in lesion_claims(result)}["the error rises smoothly with the number of blocks deleted"]
    assert deleted["holds"] is True and "largest fall 3.0 points (noise allows 6.3)" in deleted["reslab"]
    result["deleted"] = [{**row, "std_error_pct": 1.0} for row in _ks([8.0, 14.0, 11.0])]
    assert {c["claim"]: c["holds"] for c in lesion_claims(result)}[
        "the error rises smoothly with the number of blocks deleted"] is False


def test_responses_and_paths_claims():
    from reslab.analysis.paths import paths_claims
    from reslab.analysis.responses import responses_claims

    def entry(model, residual, blocks, std):
        return {"model": model, "residual": residual, "num_blocks": blocks, "mean_std": std}

    claims = responses_claims([entry("plain20", False, 9, 1.0), entry("resnet20", True, 9, 0.6),
                               entry("resnet56", True, 27, 0.4), entry("plain56", False, 27, 0.3)])
    assert [(c["claim"], c["holds"]) for c in claims] == [
        ("resnet20 responds less than plain20", True), ("resnet56 responds less than plain56", False),
        ("the deeper the ResNet, the smaller its responses", True)]
    assert paths_claims(54, 5, 17, 0.9, 0.9)[0]["holds"] is True
    assert paths_claims(27, 10, 16, 0.9, 0.9)[0]["holds"] is False


def test_degradation_of_finished_runs_without_training(tmp_path, capsys):
    from reslab.train import TrainConfig

    runs = []
    for model, (train, test) in {"plain20": (0.05, 0.10), "plain56": (0.09, 0.14),
                                 "resnet20": (0.04, 0.09), "resnet56": (0.02, 0.07)}.items():
        runs.append(tmp_path / "zoo" / model)
        fake_run(runs[-1], TrainConfig.from_recipe("zoo", model=model, data="d", out=str(runs[-1])), [0.5, train], [0.6, test])
    out = tmp_path / "degradation"
    assert main(["degradation", "--runs", *map(str, runs), "--out", str(out)]) == 0
    table = json.loads((out / "degradation.json").read_text())
    assert [r["status"] for r in table["runs"]] == ["given"] * 4 and table["recipe"] == "zoo"
    assert [c["holds"] for c in table["claims"]] == [True, True]
    assert "plain20 5.00% train / 10.00% test, plain56 9.00% train / 14.00% test" in table["claims"][0]["reslab"]
    record = json.loads((out / "degradation_run.json").read_text())
    assert [m["run"] for m in record["models"]] == list(map(str, runs)) and len(record["models"][0]["metrics_sha256"]) == 64
    assert main(["degradation", "--out", str(tmp_path / "nothing")]) == 1
    assert "give --data" in capsys.readouterr().err


def test_sdepth_claims():
    from reslab.analysis.sdepth import sdepth_claims

    epochs = [{"constant_grad": 1.0, "stochastic_grad": g} for g in (0.8, 0.9, 1.2, 1.4)]
    summary = {"depth": {"blocks": 27, "sum_survival": 20.0, "measured_active_blocks": 20.2},
               "time": {"time_saved_pct": 20.0, "expected_saved_pct": 25.9}, "epochs": epochs}
    claims = sdepth_claims(summary)
    assert [c["holds"] for c in claims] == [True, True, True]
    assert "1.20-1.40x (mean 1.30x)" in claims[2]["reslab"]
    summary["time"]["time_saved_pct"] = 10.0
    summary["depth"]["measured_active_blocks"] = 24.0
    assert [c["holds"] for c in sdepth_claims(summary)][:2] == [False, False]


def test_sdepth_on_a_plain_net_fails_before_training(tmp_path, capsys):
    out = tmp_path / "sdepth"
    assert main(["sdepth", "--data", str(tmp_path), "--model", "plain20", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "applies to residual networks" in err and not out.exists()


def test_a_finished_run_without_its_checkpoint_is_reused(tmp_path):
    from reslab.analysis.degradation import train_or_reuse
    from reslab.train import TrainConfig
    from reslab.train.state import CHECKPOINT_FILE

    config = TrainConfig.from_recipe("fast", model="resnet20", data="d", out=str(tmp_path / "run"), epochs=2)
    fake_run(tmp_path / "run", config, [0.5, 0.1], [0.6, 0.2])
    (tmp_path / "run" / CHECKPOINT_FILE).unlink()  # committed evidence keeps no checkpoint
    assert train_or_reuse(config) == "reused"


def test_gallery_gathers_figures_and_claims(tmp_path):
    import importlib.util
    from pathlib import Path

    from reslab.analysis.plots import figure, save_figure, write_json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gallery.py"
    spec = importlib.util.spec_from_file_location("gallery", path)
    gallery = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["gallery"] = gallery  # dataclasses look their module up there
    spec.loader.exec_module(gallery)
    source, out = tmp_path / "experiments", tmp_path / "gallery"
    entry = next(e for e in gallery.GALLERY if e.key == "shattered")
    fig, _ = figure()
    save_figure(fig, source / entry.folder / entry.figure)
    write_json(source / entry.folder / entry.table, {"experiment": "shattered", "claims": [
        {"claim": "plain | shatters", "paper": "Fig. 1", "reslab": "0.01", "holds": True},
        {"claim": "residual stays", "paper": "Fig. 2", "reslab": "0.9", "holds": False}]})
    page, snippet = gallery.gather(source, out)
    assert (out / "shattered.png").read_bytes() == (source / entry.folder / entry.figure).read_bytes()
    assert "| [shattered](../shattered/) | plain / shatters | Fig. 1 | 0.01 | yes |" in page
    assert "| residual stays | Fig. 2 | 0.9 | **no** |" in snippet and "![shattered](" in snippet
    assert "Not gathered: degradation" in page and (out / "README.md").read_text() == page


def _lesion_record(errors_by_k: dict[int, list[float]], baseline: float = 6.0) -> dict:
    rows = [{"k": k, "draws": len(e), "mean_error_pct": sum(e) / len(e), "std_error_pct": 1.0, "errors_pct": e}
            for k, e in errors_by_k.items()]
    return {"num_images": 1000, "seed": 0, "draws": 4, "split": "test", "deletion_candidates": "same-shape",
            "checkpoint": "net", "single": {"baseline_error_pct": baseline, "chance_error_pct": 90.0},
            "deleted": rows, "reordered": rows}


def test_lesion_comparison_pairs_draws_and_judges_robustness() -> None:
    """experiments/lesion/compare.py (Veit et al. sec. 6): the claim holds only when the second
    net's error is lower beyond two paired standard errors at large k."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "lesion" / "compare.py"
    spec = importlib.util.spec_from_file_location("lesion_compare", path)
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    first = _lesion_record({1: [7, 8, 7, 8], 2: [20, 30, 25, 35], 3: [40, 50, 45, 60], 4: [60, 70, 65, 80]})
    robust = _lesion_record({1: [7, 8, 8, 8], 2: [12, 20, 16, 22], 3: [25, 36, 30, 40], 4: [40, 48, 44, 60]})
    rows = compare.paired_rows(first, robust)
    assert [r["difference_pct"] for r in rows] == [0.25, -10.0, -16.0, -20.75]
    assert compare.robustness_claim(rows, ("a", "b"))["holds"]
    assert not compare.robustness_claim(compare.paired_rows(first, first), ("a", "a"))["holds"]
    noisy = _lesion_record({1: [7, 8, 7, 8], 2: [20, 30, 25, 35], 3: [30, 60, 35, 60], 4: [40, 90, 45, 90]})
    assert not compare.robustness_claim(compare.paired_rows(first, noisy), ("a", "b"))["holds"]
    with pytest.raises(ValueError, match="draws"):
        compare.paired_rows(first, _lesion_record({1: [7, 8], 2: [1, 2], 3: [1, 2], 4: [1, 2]}))
