"""The four analyses beyond the seeds compute what they claim, each checked against an
independent computation: the loss landscape (filter normalisation, the surface's points, its
shape), curvature (against the explicit Hessian), layer similarity (against CKA's formula in
numpy and its invariances), shattered gradients (against finite differences and numpy's
correlation); and their commands write the JSON, PNG and run record that the report gathers.
"""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reslab.analysis.curvature import curvature_study, hessian_curvature
from reslab.analysis.landscape import (PerturbedModel, filter_normalize, filter_normalized_direction, grid_coordinates,
                                       interpolation, loss_and_accuracy, loss_surface, nonconvex_share)
from reslab.analysis.shattered import autocorrelation, directional_gradients, gradient_mode, shattering
from reslab.analysis.similarity import block_grams, cka_matrix, linear_cka
from reslab.analysis.sources import weights_sha256
from reslab.models.resnet import BasicBlock, PlainBlock, ResNet


def tiny_net(block=BasicBlock, depths=(1, 1), widths=(4, 8), seed=0) -> ResNet:
    """A small net on 8x8 inputs (3 classes) whose BN running statistics come from a pass over
    shifted, scaled noise (not the identity, as if trained), so that folding BN changes the
    convolutions."""
    torch.manual_seed(seed)
    model = ResNet(block, list(depths), list(widths), num_classes=3, stem="cifar", stem_width=widths[0], shortcut="A")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # the running statistics become those of the pass below
    with torch.no_grad():
        model.train()(1.5 * torch.randn(32, 3, 8, 8) + 0.3)
    return model.eval()


def batches_of(n=24, batch=8, seed=1) -> list:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 8, 8, generator=generator)
    labels = torch.randint(3, (n,), generator=generator)
    return [(images[i:i + batch], labels[i:i + batch]) for i in range(0, n, batch)]


def plain_loss(model: nn.Module, batches: list) -> float:
    """Mean cross-entropy computed directly, unfolded, in float32."""
    with torch.no_grad():
        return float(torch.cat([F.cross_entropy(model(x), y, reduction="none") for x, y in batches]).mean())


# ------------------------------------------------------------------------------------------
# Loss landscape


def test_filter_normalisation_gives_each_filter_the_weights_filter_norm_and_zero_on_bn_and_biases():
    model = tiny_net()
    direction = filter_normalized_direction(model, seed=3)
    weights = dict(model.named_parameters())
    checked = 0
    for name, d in direction.items():
        w = weights[name].detach()
        if w.dim() <= 1:  # BN weights and biases, the fc bias
            assert not d.any(), name
            continue
        for j in range(w.shape[0]):  # each filter: an output channel of a conv, a row of the fc layer
            assert torch.linalg.vector_norm(d[j]).item() == pytest.approx(torch.linalg.vector_norm(w[j]).item(), rel=1e-5)
            checked += 1
    assert checked == 4 + 4 + 4 + 8 + 8 + 3  # stem, two convs per block, fc rows
    assert any("bn" in name for name in direction) and "fc.bias" in direction
    # a direction is random: another seed gives another one, the same seed the same one
    again, other = filter_normalized_direction(model, seed=3), filter_normalized_direction(model, seed=4)
    assert all(torch.equal(direction[k], again[k]) for k in direction)
    assert not torch.equal(direction["fc.weight"], other["fc.weight"])


def test_filter_normalize_scales_whole_filters_only():
    conv = nn.Conv2d(2, 3, 3, bias=True)
    model = nn.Sequential(conv)
    raw = {"0.weight": torch.randn(3, 2, 3, 3), "0.bias": torch.randn(3)}
    normalized = filter_normalize(raw, model)
    ratios = normalized["0.weight"] / raw["0.weight"]  # one factor per filter: the direction's shape is kept
    for j in range(3):
        assert torch.allclose(ratios[j], ratios[j].flatten()[0].expand_as(ratios[j]))
        assert ratios[j].flatten()[0] == pytest.approx(float(conv.weight[j].detach().norm() / raw["0.weight"][j].norm()), rel=1e-5)
    assert not normalized["0.bias"].any()


def test_landscape_centre_is_the_models_loss_and_each_point_the_perturbed_models():
    model, batches = tiny_net(), batches_of()
    d1, d2 = filter_normalized_direction(model, 0), filter_normalized_direction(model, 1)
    axis = grid_coordinates(3, 0.5)
    assert axis == [-0.5, 0.0, 0.5]
    surface = loss_surface(model, batches, [d1, d2], [axis, axis])
    assert surface["folded_bn"]
    assert surface["loss"][1][1] == pytest.approx(plain_loss(model, batches), rel=1e-5)
    # an independent computation of a corner: the unfolded model's weights moved by hand
    moved = tiny_net()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(-0.5 * d1[name] + 0.5 * d2[name])
    assert surface["loss"][0][2] == pytest.approx(plain_loss(moved, batches), rel=1e-4)
    with torch.no_grad():
        predictions = torch.cat([moved(x).argmax(1) for x, _ in batches])
    labels = torch.cat([y for _, y in batches])
    assert surface["accuracy"][0][2] == pytest.approx(float((predictions == labels).double().mean()))
    # the model is left as it was
    assert plain_loss(model, batches) == pytest.approx(surface["loss"][1][1], rel=1e-5)


@pytest.mark.parametrize("foldable", [True, False])
def test_perturbed_model_folded_or_not_is_the_moved_model(foldable, monkeypatch):
    import reslab.inference.fold

    if not foldable:  # a model torch.fx cannot trace: evaluated unfolded, BN in eval mode
        def untraceable(model):
            raise ValueError("cannot fold")
        monkeypatch.setattr(reslab.inference.fold, "foldable_pairs", untraceable)
    model, batches = tiny_net(), batches_of()
    d = filter_normalized_direction(model, 5)
    perturbed = PerturbedModel(model, [d])
    assert perturbed.folded == foldable
    loss, _ = loss_and_accuracy(perturbed.set_coefficients([0.3]), batches)
    moved = tiny_net()
    with torch.no_grad():
        for name, p in moved.named_parameters():
            p.add_(0.3 * d[name])
    assert loss == pytest.approx(plain_loss(moved, batches), rel=1e-4)


def test_grid_needs_an_odd_number_of_points():
    with pytest.raises(ValueError, match="odd"):
        grid_coordinates(4, 1.0)


def test_interpolation_ends_are_the_two_models():
    a, b, batches = tiny_net(seed=0), tiny_net(seed=1), batches_of()
    rows = interpolation(a, b, batches, [0.0, 0.5, 1.0])
    assert rows[0]["loss"] == pytest.approx(plain_loss(a, batches), rel=1e-5)
    assert rows[2]["loss"] == pytest.approx(plain_loss(b, batches), rel=1e-5)
    with pytest.raises(ValueError, match="same architecture"):
        interpolation(a, tiny_net(depths=(2, 1)), batches, [0.5])


def test_nonconvex_share_of_a_bowl_and_a_saddle():
    axis = torch.linspace(-1, 1, 7)
    a, b = torch.meshgrid(axis, axis, indexing="ij")
    step = float(axis[1] - axis[0])
    assert nonconvex_share((a**2 + 3 * b**2).tolist(), step, step) == 0.0
    assert nonconvex_share((a**2 - b**2).tolist(), step, step) == 1.0
    assert nonconvex_share((a**2 - 0.01 * b**2).tolist(), step, step) == 0.0  # within the rounding margin


# ------------------------------------------------------------------------------------------
# Curvature


def explicit_hessian(model: nn.Module, batch) -> torch.Tensor:
    """The Hessian of the mean cross-entropy over every parameter, by torch.autograd.functional."""
    from torch.func import functional_call

    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    buffers = dict(model.named_buffers())

    def loss(vector: torch.Tensor) -> torch.Tensor:
        params, offset = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = vector[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
        return F.cross_entropy(functional_call(model, {**params, **buffers}, (batch[0],)), batch[1])

    return torch.autograd.functional.hessian(loss, flat)


def test_top_eigenvalue_and_trace_match_the_explicit_hessian():
    model = tiny_net(widths=(2,), depths=(1,))
    x, y = batches_of(n=8, batch=8)[0]
    hessian = explicit_hessian(model, (x, y))
    eigenvalues = torch.linalg.eigvalsh(hessian.double())
    largest = eigenvalues[eigenvalues.abs().argmax()].item()
    result = hessian_curvature(model, (x, y), top_k=1, power_iterations=200, tolerance=1e-6, trace_samples=100, seed=0)
    assert result["parameters"] == hessian.shape[0]
    assert result["top_eigenvalues"][0] == pytest.approx(largest, rel=1e-3)
    assert result["converged"] == [True]
    exact_trace = torch.trace(hessian).item()
    assert abs(result["trace"] - exact_trace) < 4 * result["trace_stderr"]
    assert result["trace_stderr"] < 0.25 * abs(exact_trace)  # the estimate is informative
    with torch.no_grad():
        assert result["loss"] == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-5)


def test_curvature_claims_compare_residual_and_plain():
    batch = batches_of(n=8, batch=8)[0]
    result = curvature_study({"res": (tiny_net(), batch), "plain": (tiny_net(PlainBlock), batch)}, top_k=1,
                             power_iterations=20, trace_samples=4)
    assert [e["residual"] for e in result["models"]] == [True, False]
    assert len(result["claims"]) == 2 and all(isinstance(c["holds"], bool) for c in result["claims"])


def test_an_unconverged_top_eigenvalue_is_a_lower_bound_in_the_claims():
    from reslab.analysis.curvature import curvature_claims

    def entry(label, residual, top, converged, trace=10.0):
        return {"label": label, "residual": residual, "top_eigenvalues": [top], "converged": [converged],
                "trace": trace, "trace_stderr": 1.0}

    rows = curvature_claims([entry("res", True, 97.0, True), entry("plain", False, 410.0, False, trace=20.0)])
    assert rows[0]["holds"] is True and "plain 410 (not converged: at least this)" in rows[0]["reslab"]
    assert rows[1]["holds"] is True and "not converged" not in rows[1]["reslab"]  # the trace has no such bound
    # a residual net's unconverged value may be too small: the comparison cannot be judged
    rows = curvature_claims([entry("res", True, 97.0, False), entry("plain", False, 410.0, True)])
    assert rows[0]["holds"] is None


# ------------------------------------------------------------------------------------------
# Layer similarity (CKA)


def numpy_linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. 3-4, written out: HSIC with the centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def test_linear_cka_matches_the_formula_and_its_invariances():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 12, generator=generator, dtype=torch.float64)
    y = x @ torch.randn(12, 7, generator=generator, dtype=torch.float64) + 0.5 * torch.randn(30, 7, generator=generator, dtype=torch.float64)
    expected = numpy_linear_cka(x.numpy(), y.numpy())
    assert linear_cka(x, y) == pytest.approx(expected, rel=1e-5)
    assert 0 < expected < 1
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=generator, dtype=torch.float64))
    assert linear_cka(x @ q, y) == pytest.approx(expected, rel=1e-5)  # orthogonal transform
    assert linear_cka(7.5 * x, y) == pytest.approx(expected, rel=1e-5)  # isotropic scaling
    assert linear_cka(x, x) == pytest.approx(1.0, rel=1e-6)  # identical
    assert linear_cka(x + 3.0, y) == pytest.approx(expected, rel=1e-5)  # a constant shift is centred away
    stretch = torch.diag(torch.logspace(-2, 2, 12, dtype=torch.float64))
    assert abs(linear_cka(x @ stretch, y) - expected) > 1e-3  # not invariant to any invertible map
    with pytest.raises(ValueError, match="same images"):
        linear_cka(x, y[:10])


def test_block_cka_uses_each_blocks_output():
    model = tiny_net(depths=(2, 1))
    images = torch.randn(20, 3, 8, 8)
    outputs = {}
    handles = [model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
               for name in ("layer1.0", "layer1.1", "layer2.0")]
    with torch.no_grad():
        model(images)
    for h in handles:
        h.remove()
    named = block_grams(model, images)
    assert [name for name, _ in named] == ["layer1.0", "layer1.1", "layer2.0"]
    matrix = cka_matrix([g for _, g in named])
    assert [matrix[i][i] for i in range(3)] == [1.0, 1.0, 1.0]
    assert matrix[0][2] == matrix[2][0]
    expected = numpy_linear_cka(outputs["layer1.0"].flatten(1).double().numpy(), outputs["layer2.0"].flatten(1).double().numpy())
    assert matrix[0][2] == pytest.approx(expected, rel=1e-4)


def test_block_cka_refuses_a_model_without_blocks():
    with pytest.raises(ValueError, match="no blocks"):
        block_grams(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), torch.randn(4, 3, 8, 8))


# ------------------------------------------------------------------------------------------
# Shattered gradients


def test_autocorrelation_matches_numpy_on_known_signals():
    rng = np.random.default_rng(0)
    for signal in (np.sin(np.linspace(0, 6 * np.pi, 200)), rng.standard_normal(200), np.cumsum(rng.standard_normal(200))):
        centred = signal - signal.mean()
        full = np.correlate(centred, centred, mode="full")[len(signal) - 1:]
        assert autocorrelation(torch.tensor(signal), 10) == pytest.approx((full / full[0])[:11].tolist(), abs=1e-10)
    white = autocorrelation(torch.tensor(rng.standard_normal(4000)), 3)
    assert all(abs(v) < 0.05 for v in white[1:])  # white noise: uncorrelated at every lag
    brown = autocorrelation(torch.tensor(np.cumsum(rng.standard_normal(4000))), 1)
    assert brown[1] > 0.9


def test_directional_gradient_is_the_derivative_along_the_line():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    readout = torch.tensor([0.6, -0.8, 0.0])
    x0, u = torch.randn(1, 3, 2, 2, dtype=torch.float64), torch.randn(1, 3, 2, 2, dtype=torch.float64)
    ts = torch.linspace(-1, 1, 9, dtype=torch.float64)
    inputs = x0 + ts.view(-1, 1, 1, 1) * u
    g = directional_gradients(model, inputs, u[0], readout)

    def f(t):
        with torch.no_grad():
            return model(x0 + t * u).float() @ readout

    h = 1e-4
    finite_differences = torch.stack([(f(t + h) - f(t - h)) / (2 * h) for t in ts]).flatten()
    assert torch.allclose(g.float(), finite_differences, rtol=1e-3, atol=1e-4)


def test_gradient_mode_uses_batch_statistics_and_restores_the_model():
    model = tiny_net()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with gradient_mode(model, "batch"):
        assert all(m.training == isinstance(m, nn.BatchNorm2d) for m in model.modules())
        model(torch.randn(16, 3, 8, 8) * 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics untouched
    assert all(m.training for m in model.modules())


def test_plain_deep_gradients_shatter_residual_ones_do_not():
    torch.manual_seed(0)
    deep_plain = ResNet(PlainBlock, [12], [8], num_classes=3, stem="cifar", stem_width=8, shortcut="A")
    torch.manual_seed(0)
    deep_residual = ResNet(BasicBlock, [12], [8], num_classes=3, stem="cifar", stem_width=8, shortcut="A")
    kwargs = dict(points=64, radius=0.05, lines=2, max_lag=3, seed=0)
    plain = shattering(deep_plain, (3, 8, 8), 3, **kwargs)
    residual = shattering(deep_residual, (3, 8, 8), 3, **kwargs)
    assert residual["lag1_autocorrelation"] > plain["lag1_autocorrelation"] + 0.2


# ------------------------------------------------------------------------------------------
# Commands, run records and the report


def test_weights_hash_follows_the_weights():
    a, b = tiny_net(), tiny_net()
    assert weights_sha256(a) == weights_sha256(b)
    with torch.no_grad():
        b.fc.bias[0] += 1e-6
    assert weights_sha256(a) != weights_sha256(b)


def test_commands_write_results_run_records_and_the_report(tiny_cifar, tmp_path, capsys, monkeypatch):
    from reslab import create_model, save_model
    from reslab.checkpoint import make_card
    from reslab.cli import main
    from reslab.pretrained import sha256_of

    monkeypatch.setenv("RESLAB_CACHE", str(tmp_path / "cache"))
    classes = sorted(p.name for p in (tiny_cifar / "train").iterdir())
    paths = {}
    for name in ("resnet20", "plain20"):
        torch.manual_seed(0)
        model = create_model(name)
        paths[name] = tmp_path / f"{name}.safetensors"
        save_model(paths[name], model, make_card(name, model, class_names=classes, mean=(0.5,) * 3, std=(0.25,) * 3))
    res, plain, out = str(paths["resnet20"]), str(paths["plain20"]), tmp_path / "out"
    data = ["--data", str(tiny_cifar), "--images", "10"]

    assert main(["landscape", res, plain, *data, "--points", "3", "--out", str(out / "landscape")]) == 0
    table = json.loads((out / "landscape" / "landscape.json").read_text())
    assert [e["label"] for e in table["models"]] == ["resnet20", "plain20"]
    assert len(table["models"][0]["surface"]["loss"]) == 3 and table["claims"][-1]["holds"] in (True, False)
    record = json.loads((out / "landscape" / "landscape_run.json").read_text())
    assert record["seed"] == 0 and record["split"] == "train" and len(record["image_indices"]) == 10
    assert record["models"][0]["file_sha256"] == sha256_of(paths["resnet20"])
    assert "one grid point takes about" in capsys.readouterr().out
    # --beside: plain20 computed alone beside a resnet20-only run gives the pair's table
    assert main(["landscape", res, *data, "--points", "3", "--out", str(tmp_path / "alone")]) == 0
    assert main(["landscape", plain, *data, "--points", "3", "--beside", str(tmp_path / "alone"),
                 "--out", str(tmp_path / "beside")]) == 0
    beside = json.loads((tmp_path / "beside" / "landscape.json").read_text())
    assert [e["label"] for e in beside["models"]] == ["resnet20", "plain20"]
    assert [e["surface"]["loss"] for e in beside["models"]] == [e["surface"]["loss"] for e in table["models"]]
    assert beside["claims"] == table["claims"]
    assert [m["source"] for m in json.loads((tmp_path / "beside" / "landscape_run.json").read_text())["models"]] == [res, plain]
    assert main(["landscape", plain, "--data", str(tiny_cifar), "--images", "12", "--points", "3",
                 "--beside", str(tmp_path / "alone"), "--out", str(tmp_path / "other_images")]) == 1
    assert "evaluated on other images" in capsys.readouterr().err

    assert main(["curvature", res, "--data", str(tiny_cifar), "--images", "2", "--iterations", "2", "--trace-samples", "1",
                 "--out", str(out / "curvature")]) == 0
    table = json.loads((out / "curvature" / "curvature.json").read_text())
    assert table["models"][0]["num_images"] == 2 and len(table["models"][0]["top_eigenvalues"]) == 1

    assert main(["similarity", res, plain, *data, "--out", str(out / "similarity")]) == 0
    table = json.loads((out / "similarity" / "similarity.json").read_text())
    assert len(table["models"][0]["cka"]) == 9 and table["models"][0]["cka"][4][4] == 1.0

    assert main(["shattered", "resnet20", plain, "--points", "8", "--lines", "1", "--max-lag", "2",
                 "--out", str(out / "shattered")]) == 0
    record = json.loads((out / "shattered" / "shattered_run.json").read_text())
    assert record["models"][0]["weights"].startswith("initialisation") and "file_sha256" in record["models"][1]

    assert main(["report", str(out)]) == 0
    report = (out / "report.md").read_text()
    for png in ("landscape/landscape_1d.png", "landscape/landscape_contour.png", "landscape/landscape_surface.png",
                "curvature/curvature.png", "similarity/similarity.png", "shattered/shattered.png"):
        assert (out / png).stat().st_size > 10_000 and png in report
    assert report.index("Claims: each paper against reslab") < report.index("Loss landscape")
    assert "claims: the paper against reslab" in report and "surface" not in report.split("Claims")[0]
    assert main(["report", str(out), "--format", "html"]) == 0
    page = (out / "report.html").read_text()
    assert "Claims: each paper against reslab" in page and "landscape/landscape_contour.png" in page

    capsys.readouterr()
    assert main(["similarity", str(tmp_path / "missing"), *data, "--out", str(out / "x")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
