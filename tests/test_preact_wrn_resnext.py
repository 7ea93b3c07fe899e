"""Pre-activation ResNets, Wide ResNets and CIFAR ResNeXts: depth rules, the clean shortcut of a
pre-activation unit, WRN widths and dropout, the three equivalent ResNeXt block forms, counts."""

import copy
import pickle

import pytest
import torch
from torch import nn

from reslab import count_parameters, create_model, model_info, residual_blocks
from reslab.models.preact_resnet import PreActBasicBlock, PreActBottleneck, cifar_preact_resnet
from reslab.models.resnet import BasicBlock, Bottleneck
from reslab.models.resnext import ConcatenatedPathsBlock, SummedPathsBlock, cifar_resnext, from_grouped
from reslab.models.wide_resnet import wide_resnet


def randomize_batchnorms(module: nn.Module) -> nn.Module:
    """Give every BN non-trivial affine parameters and running statistics, so eval mode is not the identity."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return module


def branch_layers(model: nn.Module) -> int:
    """Weighted layers counted in a network's depth: the stem, each branch's convs and fc (not projections)."""
    projections = {id(m) for _, b in residual_blocks(model) if b.downsample is not None for m in b.downsample.modules()}
    return sum(1 for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in projections)


# --- depth rules -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth,block,units", [(20, PreActBasicBlock, 9), (110, PreActBasicBlock, 54),
                                               (29, PreActBottleneck, 9), (164, PreActBottleneck, 54)])
def test_cifar_preact_depth_counts_layers(depth, block, units):
    with torch.device("meta"):
        model = cifar_preact_resnet(depth, block)
    assert len(residual_blocks(model)) == units
    assert branch_layers(model) == depth


@pytest.mark.parametrize("depth,block,message", [(111, PreActBasicBlock, "6n\\+2"), (165, PreActBottleneck, "9n\\+2"),
                                                 (2, PreActBasicBlock, "6n\\+2"), (100, PreActBottleneck, "9n\\+2"),
                                                 (20, BasicBlock, "PreActBasicBlock or PreActBottleneck")])
def test_cifar_preact_rejects_bad_depths(depth, block, message):
    with pytest.raises(ValueError, match=message):
        cifar_preact_resnet(depth, block)


@pytest.mark.parametrize("depth,k,message", [(27, 4, "6n\\+4"), (4, 1, "6n\\+4"), (28, 0, "widen_factor"),
                                             (28, 2.5, "widen_factor")])
def test_wrn_rejects_bad_depth_and_width(depth, k, message):
    with pytest.raises(ValueError, match=message):
        create_model("wrn", depth=depth, widen_factor=k)


def test_wrn_depth_is_6n_plus_4():
    with torch.device("meta"):
        model = create_model("wrn", depth=22, widen_factor=2)
    assert [len(stage) for stage in model.stages()] == [3, 3, 3]  # n = (22 - 4) / 6 units per stage


# --- the pre-activation unit -----------------------------------------------------------------

def test_preact_unit_is_identity_plus_residual_with_no_activation_after_the_addition():
    block = randomize_batchnorms(PreActBasicBlock(16, 16)).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
        assert torch.allclose(y - x, block.residual(block.preact(x)), atol=1e-6)
        assert (y < 0).any()  # no ReLU after the addition ...
        assert (randomize_batchnorms(BasicBlock(16, 16)).eval()(x) >= 0).all()  # ... unlike the original unit
        block.branch_enabled = False  # a deleted branch leaves the input untouched
        assert torch.equal(block(x), x)


@pytest.mark.parametrize("block", [PreActBottleneck(16, 16), PreActBasicBlock(16, 32, stride=2)])
def test_projection_is_a_bare_conv_on_the_preactivated_input(block):
    block = randomize_batchnorms(block).eval()
    assert [type(m) for m in block.downsample] == [nn.Conv2d]
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        preactivated = block.preact(x)
        branch = block.residual(preactivated)
        assert torch.allclose(block(x), block.downsample(preactivated) + branch, atol=1e-6)
        assert not torch.allclose(block(x), block.downsample(x) + branch, atol=1e-3)


def test_preact_network_layout():
    with torch.device("meta"):
        cifar, bottleneck, imagenet = create_model("preact_resnet110"), create_model("preact_resnet164"), create_model("preact_resnet50")
    assert isinstance(cifar.bn1, nn.Identity) and isinstance(cifar.relu, nn.Identity)  # the first unit pre-activates
    assert isinstance(imagenet.bn1, nn.BatchNorm2d) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    for model, width, projections in ((cifar, 64, 2), (bottleneck, 256, 3), (imagenet, 2048, 4)):
        assert isinstance(model.final_bn[0], nn.BatchNorm2d) and model.final_bn[0].num_features == width
        assert isinstance(model.final_bn[1], nn.ReLU)
        assert sum(1 for _, b in residual_blocks(model) if b.downsample is not None) == projections
    # No BN after a pre-activation branch's last conv.
    assert all(isinstance(b.bn2, nn.Identity) for _, b in residual_blocks(cifar))
    assert all(isinstance(b.bn3, nn.Identity) for _, b in residual_blocks(bottleneck))


def test_zero_init_residual_makes_preact_units_identities():
    model = randomize_batchnorms(create_model("preact_resnet164", zero_init_residual=True)).eval()
    block = model.layer2[1]
    x = torch.randn(2, 128, 16, 16)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    assert all(b.conv3.weight.abs().sum() == 0 for _, b in residual_blocks(model))


# --- Wide ResNets ----------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 4])
def test_wrn_widths_are_16k_32k_64k(k):
    with torch.device("meta"):
        model = wide_resnet(16, k)
    assert model.conv1.out_channels == 16
    assert [stage[-1].conv2.out_channels for stage in model.stages()] == [16 * k, 32 * k, 64 * k]
    assert model.fc.in_features == 64 * k
    assert (model.layer1[0].downsample is None) == (k == 1)  # 16 -> 16k channels needs a projection iff k > 1


def test_wrn_dropout_sits_between_the_convs_and_is_off_in_eval():
    torch.manual_seed(0)
    model = wide_resnet(16, 2, dropout=0.3)
    block = model.layer2[1]
    assert isinstance(block.dropout, nn.Dropout) and block.dropout.p == 0.3
    seen = {}
    block.dropout.register_forward_hook(lambda m, inp, out: seen.update(before=inp[0].clone(), after=out))
    block.conv2.register_forward_pre_hook(lambda m, inp: seen.update(conv2_input=inp[0]))
    x = torch.randn(4, 3, 16, 16)
    model.train()(x)
    assert seen["conv2_input"] is seen["after"]  # dropout output feeds the second conv
    kept = seen["after"] != 0
    assert torch.allclose(seen["after"][kept], seen["before"][kept] / 0.7)
    dropped = ((seen["after"] == 0) & (seen["before"] != 0)).sum() / (seen["before"] != 0).sum()
    assert 0.25 < dropped < 0.35
    no_dropout = wide_resnet(16, 2)
    no_dropout.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), no_dropout.eval()(x))


# --- ResNeXt ---------------------------------------------------------------------------------

def test_resnext29_layout():
    with torch.device("meta"):
        model = create_model("resnext29_16x64d")
    assert model.conv1.out_channels == 64 and isinstance(model.bn1, nn.BatchNorm2d)
    assert [len(stage) for stage in model.stages()] == [3, 3, 3]
    assert [stage[0].conv2.out_channels for stage in model.stages()] == [16 * 64, 16 * 128, 16 * 256]
    assert all(b.conv2.groups == 16 for _, b in residual_blocks(model))
    assert [stage[-1].conv3.out_channels for stage in model.stages()] == [256, 512, 1024]


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("in_channels,stride", [(64, 1), (64, 2), (256, 1)])
def test_resnext_forms_a_b_c_compute_the_same_function(mode, in_channels, stride):
    grouped = randomize_batchnorms(Bottleneck(in_channels, 64, stride, "B", groups=8, width_per_group=4)).train(mode == "train")
    summed, concatenated = from_grouped(grouped, "a"), from_grouped(grouped, "b")
    assert isinstance(summed, SummedPathsBlock) and isinstance(concatenated, ConcatenatedPathsBlock)
    assert len(summed.paths) == len(concatenated.paths) == 8 and summed.paths[0].conv2.out_channels == 4
    assert count_parameters(summed) == count_parameters(concatenated) == count_parameters(grouped)
    x = torch.randn(4, in_channels, 8, 8)
    with torch.no_grad():
        expected = grouped(x)
        assert torch.allclose(summed(x), expected, atol=1e-5)
        assert torch.allclose(concatenated(x), expected, atol=1e-5)


def test_from_grouped_errors():
    with pytest.raises(ValueError, match="form must be"):
        from_grouped(Bottleneck(64, 16), "c")
    with pytest.raises(TypeError, match="Bottleneck"):
        from_grouped(BasicBlock(16, 16), "a")


# --- counts, names, scripting, checkpointing -------------------------------------------------

EXACT_PARAMS = {"preact_resnet110": 1_730_522, "preact_resnet164": 1_703_258, "preact_resnet1001": 10_327_706,
                "preact_resnet18": 11_687_848, "preact_resnet50": 25_549_480, "wrn16_4": 2_748_890,
                "wrn28_10": 36_479_194, "wrn40_4": 8_949_210, "resnext29_8x64d": 34_426_698,
                "resnext29_16x64d": 68_155_210}


@pytest.mark.parametrize("name,count", EXACT_PARAMS.items())
def test_exact_parameter_counts(name, count):
    with torch.device("meta"):
        assert count_parameters(create_model(name)) == count


@pytest.mark.parametrize("alias,name", [("preresnet110", "preact_resnet110"), ("PreActResNet18", "preact_resnet18"),
                                        ("preact-resnet1001", "preact_resnet1001"), ("wrn-28-10", "wrn28_10"),
                                        ("wide_resnet28_10", "wrn28_10"), ("resnext29_8x64", "resnext29_8x64d")])
def test_aliases(alias, name):
    assert model_info(alias).name == name


SMALL_NETS = {
    "preact-basic": lambda: cifar_preact_resnet(20),
    "preact-bottleneck": lambda: cifar_preact_resnet(11, PreActBottleneck),
    "wrn-10-2-dropout": lambda: wide_resnet(10, 2, dropout=0.3),
    "resnext-2x4d": lambda: cifar_resnext(2, 4),
}


@pytest.mark.parametrize("build", SMALL_NETS.values(), ids=SMALL_NETS.keys())
def test_scripts_and_runs_channels_last_in_bf16(build):
    torch.manual_seed(0)
    model = randomize_batchnorms(build()).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)
        model = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.to(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


@pytest.mark.parametrize("form", ["a", "b"])
def test_resnext_forms_script_pickle_and_copy(form):
    block = from_grouped(randomize_batchnorms(Bottleneck(64, 32, 2, "B", groups=4, width_per_group=8)).eval(), form)
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        expected = block(x)
        for clone in (torch.jit.script(block), pickle.loads(pickle.dumps(block)), copy.deepcopy(block)):
            assert torch.allclose(clone(x), expected, atol=1e-6)
