"""Every registered model: shape, a backward step, parameter counts, pickling; and the
ResNet family's invariants (torchvision keys, option A, plain nets, stochastic depth)."""

import copy
import pickle

import pytest
import torch
from torch import nn

from reslab import count_parameters, create_model, list_models, model_info, residual_blocks
from reslab.models.layers import StochasticDepth, ZeroPadShortcut

ALL_MODELS = list_models()
# ImageNet nets are run at 32x32 (the stem and 4 stages leave a 1x1 map): same code path, 49x cheaper.
SMALL_INPUT = {224: 32, 32: 32}


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    size = SMALL_INPUT.get(model_info(name).input_size, model_info(name).input_size)
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape_and_backward_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter takes part in the loss"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if model_info(n).published_params])
def test_parameter_count_matches_publication(name):
    with torch.device("meta"):
        model = create_model(name)
    published = model_info(name).published_params
    if float(published).is_integer() and published > 1e7 and published % 1000:  # torchvision's exact counts
        assert count_parameters(model) == published
    else:  # papers round to 2-3 figures
        assert count_parameters(model) == pytest.approx(published, rel=0.02)


def test_torchvision_counts_exactly():
    expected = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
                "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904, "resnext101_32x8d": 88_791_336,
                "resnext101_64x4d": 83_455_272, "wide_resnet50_2": 68_883_240, "wide_resnet101_2": 126_886_696}
    for name, count in expected.items():
        with torch.device("meta"):
            assert count_parameters(create_model(name)) == count, name


@pytest.mark.parametrize("name", ALL_MODELS)
def test_model_pickles_and_deep_copies(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3).eval()
    x = small_input(name, batch=1)
    state = model.state_dict()
    with torch.no_grad():
        expected = model(x)  # a fresh ResNet-1202 overflows in eval mode: compare NaNs as equal
        for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert all(torch.equal(v, state[k]) for k, v in clone.state_dict().items())
            assert torch.allclose(clone(x), expected, rtol=0, atol=0, equal_nan=True)


# Hand-written from torchvision.models.resnet18().state_dict() (torchvision 0.2x).
TORCHVISION_RESNET18_KEYS = (
    ["conv1.weight"] + [f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    + [f"layer{l}.{b}.{m}.{s}" for l in (1, 2, 3, 4) for b in (0, 1) for m in ("conv1", "bn1", "conv2", "bn2")
       for s in (("weight",) if m.startswith("conv") else ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))]
    + [f"layer{l}.0.downsample.{i}.{s}" for l in (2, 3, 4) for i, ss in ((0, ("weight",)), (1, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))) for s in ss]
    + ["fc.weight", "fc.bias"]
)


def test_resnet18_keys_equal_torchvision():
    assert sorted(create_model("resnet18").state_dict()) == sorted(TORCHVISION_RESNET18_KEYS)
    assert len(TORCHVISION_RESNET18_KEYS) == 122


@pytest.mark.parametrize("name,layers", [("resnet50", [3, 4, 6, 3]), ("resnet101", [3, 4, 23, 3]), ("resnext50_32x4d", [3, 4, 6, 3]), ("wide_resnet50_2", [3, 4, 6, 3])])
def test_bottleneck_keys_and_shapes_equal_torchvision(name, layers):
    with torch.device("meta"):
        state = create_model(name).state_dict()
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{s}" for s in bn}
    for stage, depth in enumerate(layers, start=1):
        for block in range(depth):
            for i in (1, 2, 3):
                expected.add(f"layer{stage}.{block}.conv{i}.weight")
                expected |= {f"layer{stage}.{block}.bn{i}.{s}" for s in bn}
        expected |= {f"layer{stage}.0.downsample.0.weight"} | {f"layer{stage}.0.downsample.1.{s}" for s in bn}
    assert set(state) == expected
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["fc.weight"].shape == (1000, 2048)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)


def test_stride_is_on_the_bottleneck_3x3():
    model = create_model("resnet50")
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


@pytest.mark.parametrize("depth,blocks", [(20, 9), (32, 15), (44, 21), (56, 27), (110, 54)])
def test_cifar_resnet_depth_is_6n_plus_2(depth, blocks):
    model = create_model(f"resnet{depth}")
    assert len(residual_blocks(model)) == blocks
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == depth  # option A adds no conv to the count


def test_cifar_resnet_rejects_other_depths():
    from reslab.models.resnet import cifar_resnet

    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_option_a_shortcut_has_no_parameters_and_pads_with_zeros():
    model = create_model("resnet20")
    shortcuts = [b.downsample for _, b in residual_blocks(model) if b.downsample is not None]
    assert len(shortcuts) == 2 and all(isinstance(s, ZeroPadShortcut) for s in shortcuts)
    assert sum(p.numel() for s in shortcuts for p in s.parameters()) == 0
    x = torch.randn(2, 16, 32, 32)
    y = shortcuts[0](x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2]) and torch.all(y[:, 16:] == 0)


def test_shortcut_options_b_and_c_count_projections():
    def projections(model):
        return sum(1 for _, b in residual_blocks(model) if b.downsample is not None and not isinstance(b.downsample, ZeroPadShortcut))

    assert projections(create_model("resnet20", shortcut="A")) == 0
    assert projections(create_model("resnet20", shortcut="B")) == 2
    assert projections(create_model("resnet20", shortcut="C")) == 9
    # B adds two 1x1 projections + BN: (16*32 + 64) + (32*64 + 128)
    assert count_parameters(create_model("resnet20", shortcut="B")) - count_parameters(create_model("resnet20")) == 512 + 64 + 2048 + 128


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if n.startswith("plain")])
def test_plain_nets_contain_no_residual_blocks(name):
    with torch.device("meta"):
        plain = create_model(name)
        twin = create_model(name.replace("plain", "resnet"), shortcut="B")
    assert residual_blocks(plain) == []
    # The same stack: the plain net has exactly the residual twin's parameters minus its projections.
    projection = sum(p.numel() for _, b in residual_blocks(twin) if b.downsample is not None for p in b.downsample.parameters())
    assert count_parameters(plain) == count_parameters(twin) - projection


def test_resnet18_cifar_stem_option():
    model = create_model("resnet18", stem="cifar", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(model) == 11_173_962  # the "ResNet-18 for CIFAR" of public repositories


def test_registry_errors_list_close_matches():
    with pytest.raises(ValueError, match="did you mean.*resnet20"):
        create_model("resnet21")
    with pytest.raises(ValueError, match="did you mean shortcut"):
        create_model("resnet20", shortcutt="B")
    with pytest.raises(ValueError, match="need stochastic_depth"):
        create_model("resnet20", drop_mode="sample")


def test_list_models_pattern_and_natural_order():
    names = list_models("resnet*")
    assert names.index("resnet20") < names.index("resnet110") < names.index("resnet1202")
    assert "plain20" not in names and "resnet56" in names
    assert list_models("nothing-like-this*") == []


def test_models_script_with_stochastic_depth():
    model = create_model("resnet20", stochastic_depth=0.5).eval()
    x = torch.randn(2, 3, 32, 32)
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), model(x), atol=1e-6)


def test_channels_last_bf16_autocast_and_grad_checkpoint():
    model = create_model("resnet20").to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.manual_seed(0)
    plain = create_model("resnet56")
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing()
    x = torch.randn(2, 3, 32, 32)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    assert torch.allclose(plain.conv1.weight.grad, ckpt.conv1.weight.grad, atol=1e-5)


def test_zero_init_residual_makes_blocks_start_as_identity():
    model = create_model("resnet20", zero_init_residual=True)
    assert all(b.bn2.weight.abs().sum() == 0 for _, b in residual_blocks(model))
