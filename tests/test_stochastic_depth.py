"""Stochastic depth (Huang et al. 2016) and the residual-block controls the analyses use."""

import pytest
import torch

from reslab import create_model, residual_blocks
from reslab.models.layers import StochasticDepth


def test_linear_decay_rule_and_expected_depth():
    model = create_model("resnet110", stochastic_depth=0.5)
    survivals = [b.drop_path.survival for _, b in residual_blocks(model)]
    L = len(survivals)
    assert L == 54
    assert survivals[-1] == pytest.approx(0.5) and survivals[0] == pytest.approx(1 - 0.5 / L)
    assert sum(survivals) == pytest.approx((3 * L - 1) / 4)  # 40.25 blocks for ResNet-110


def test_mean_active_blocks_in_batch_mode_is_3L_minus_1_over_4():
    torch.manual_seed(0)
    model = create_model("resnet20", stochastic_depth=0.5).train()
    blocks = [b for _, b in residual_blocks(model)]
    L = len(blocks)
    trials = 4000
    active = sum(b.drop_path.keep_batch() for _ in range(trials) for b in blocks) / trials
    assert active == pytest.approx((3 * L - 1) / 4, abs=0.08)  # 6.5 of 9; binomial std / sqrt(trials) ~ 0.02


def test_dropped_branch_is_not_computed_in_batch_mode():
    model = create_model("resnet20", stochastic_depth=0.5).train()
    calls = []
    for _, block in residual_blocks(model):
        block.conv1.register_forward_hook(lambda *a: calls.append(1))
    torch.manual_seed(1)
    n = 50
    for _ in range(n):
        model(torch.randn(2, 3, 32, 32))
    expected = sum(b.drop_path.survival for _, b in residual_blocks(model)) * n
    assert len(calls) < 9 * n and len(calls) == pytest.approx(expected, rel=0.1)


def test_eval_is_deterministic_and_scaled_by_survival():
    model = create_model("resnet20", stochastic_depth=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))
    layer = StochasticDepth(0.7, scaling="paper").eval()
    r = torch.randn(3, 4)
    assert torch.allclose(layer(r), 0.7 * r)
    assert torch.equal(StochasticDepth(0.7, scaling="inverted").eval()(r), r)


@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("scaling", ["paper", "inverted"])
def test_training_expectation_equals_test_output(mode, scaling):
    """Each scaling makes the test-time block output the expected training output."""
    torch.manual_seed(0)
    model = create_model("resnet20", stochastic_depth=0.5, drop_mode=mode, drop_scaling=scaling)
    block = residual_blocks(model)[-1][1]  # p_L = 0.5: the most dropped block
    for m in block.modules():  # freeze BN so that only the drop is random
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    x = torch.randn(8, 64, 8, 8).relu()
    block.eval()
    expected = block.residual(x) * (0.5 if scaling == "paper" else 1.0) + x  # before the final ReLU
    block.train()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        # merge() applies ReLU(h + F); compare pre-activations through the branch mean instead.
        draws = []
        for _ in range(3000):
            if not block.drop_path.keep_batch():
                draws.append(torch.zeros_like(x))
            else:
                draws.append(block.drop_path(block.residual(x)))
        mean_branch = torch.stack(draws).mean(0)
    assert torch.allclose(mean_branch + x, expected, atol=0.06 * expected.abs().max().item())


def test_paper_and_inverted_scalings_agree_in_expectation():
    """Same weights: the paper's eval output equals inverted scaling's with the branch scaled by p."""
    torch.manual_seed(0)
    paper = create_model("resnet20", stochastic_depth=0.5, drop_scaling="paper").eval()
    inverted = create_model("resnet20", stochastic_depth=0.5, drop_scaling="inverted").eval()
    inverted.load_state_dict(paper.state_dict())
    for (_, bp), (_, bi) in zip(residual_blocks(paper), residual_blocks(inverted)):
        bi.bn2.weight.data.mul_(bp.drop_path.survival)
        bi.bn2.bias.data.mul_(bp.drop_path.survival)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(paper(x), inverted(x), atol=1e-5)


def test_per_sample_mode_drops_samples_independently():
    torch.manual_seed(0)
    layer = StochasticDepth(0.5, mode="sample").train()
    out = layer(torch.ones(4000, 3))
    kept = (out[:, 0] != 0).float()
    assert kept.mean().item() == pytest.approx(0.5, abs=0.03)
    assert torch.all((out == 0).all(1) | (out == 1).all(1))  # whole samples kept or dropped


def test_stochastic_depth_validation():
    with pytest.raises(ValueError):
        StochasticDepth(0.0)
    with pytest.raises(ValueError):
        StochasticDepth(0.5, mode="layer")
    with pytest.raises(ValueError, match="p_L"):
        create_model("resnet20", stochastic_depth=1.5)
    with pytest.raises(ValueError, match="no residual blocks"):
        create_model("plain20", stochastic_depth=0.5)


def test_branch_disabled_block_is_identity_and_routes_restrict_gradient():
    model = create_model("resnet20").eval()
    _, block = residual_blocks(model)[1]
    x = torch.randn(2, 16, 32, 32).relu()
    block.branch_enabled = False
    assert torch.equal(block(x), x)  # ReLU of a non-negative input
    block.branch_enabled = True
    y_both = block(x)
    for route in ("branch", "skip"):
        block.gradient_route = route
        xi = x.clone().requires_grad_()
        y = block(xi)
        assert torch.equal(y, y_both)  # forward values unchanged
        y.sum().backward()
        if route == "skip":  # only the identity: d/dx sum(relu(x + F)) = 1 where the output is positive
            assert torch.equal(xi.grad, (y > 0).float())
        else:
            assert not torch.equal(xi.grad, (y > 0).float())


def test_gradient_checkpointing_replays_the_same_drop_decisions():
    """The recomputed forward pass restores the RNG state, so per-batch drops are drawn identically."""
    import copy

    torch.manual_seed(0)
    model = create_model("resnet20", stochastic_depth=0.5)
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing()
    x = torch.randn(4, 3, 32, 32)
    for m in (model, checkpointed):
        torch.manual_seed(5)
        m(x).sum().backward()
    for a, b in zip(model.parameters(), checkpointed.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-5)


def test_dropped_preactivation_unit_skips_its_bn_relu():
    """A dropped identity unit costs nothing: its pre-activation BN is not run (stats untouched)."""
    model = create_model("preact_resnet110").train()
    identity_unit = residual_blocks(model)[1][1]
    assert identity_unit.downsample is None
    identity_unit.branch_enabled = False
    before = identity_unit.preact[0].running_mean.clone()
    x = torch.randn(2, 16, 32, 32)
    assert torch.equal(identity_unit(x), x)
    assert torch.equal(identity_unit.preact[0].running_mean, before)
    downsampling = next(b for _, b in residual_blocks(model) if b.downsample is not None)
    downsampling.branch_enabled = False
    out = downsampling(torch.randn(2, downsampling.preact[0].num_features, 32, 32))
    assert out.shape[1] == downsampling.downsample[0].out_channels  # the projection still runs


@pytest.mark.parametrize("scaling", ["paper", "inverted"])
def test_batch_mode_traced_with_torch_fx_draws_anew_on_every_training_pass(scaling):
    """torch.fx (and torchvision's create_feature_extractor) froze the per-batch drop decision at
    trace time: one output over 50 training passes. The traced graph must draw on every call, at
    the same rate as the eager model, and stay exact in eval mode."""
    torch.manual_seed(0)
    model = create_model("resnet20", stochastic_depth=0.5, drop_scaling=scaling).train()
    traced = torch.fx.symbolic_trace(model)
    assert any(node.target is torch.rand_like for node in traced.graph.nodes)  # the draw is in the graph
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        outputs = {tuple(traced(x).flatten().tolist()) for _ in range(50)}
    assert len(outputs) > 10  # 9 blocks, p_l from 0.94 to 0.5: 50 passes give many patterns
    model.eval()
    traced_eval = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced_eval(x), model(x), atol=1e-6)
