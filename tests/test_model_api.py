"""The model API users know from timm and torchvision (docs/model-api.md): classifier removal and
pooling, feature maps, intermediates, gradient checkpointing, drop_path_rate, torch.hub, and the
checkpoints of timm's DPN and ResNetV2 and of the two popular CIFAR ResNet repositories.

timm and torchvision are not importable beside this torch, so the foreign layouts are small
re-implementations written here from reading each repository's model file (timm
``timm/models/dpn.py`` and ``resnetv2.py``, akamaster/pytorch_resnet_cifar10 ``resnet.py``,
chenyaofo/pytorch-cifar-models ``pytorch_cifar_models/resnet.py``): the same module names,
shapes and forward pass.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reslab.models.features as features_module
from reslab import create_model, residual_blocks
from reslab.errors import CheckpointError
from reslab.inference.flavours import detect_flavour, from_reslab, to_reslab
from reslab.inference.interop import (export_state_dict, foreign_model_spec, load_foreign_model,
                                      load_foreign_state_dict, read_state_dict)
from reslab.models.dpn import DPN
from reslab.models.fractalnet import FractalNet
from reslab.models.merge_run import DMRNet
from reslab.models.preact_resnet import PreActBasicBlock, PreActBottleneck
from reslab.models.resnet import ResNet

from test_pretrained import weights_dir  # noqa: F401 (a fixture: a folder of trained weights)

REPO = Path(__file__).resolve().parent.parent


TINY_MODELS = {  # one small network of every family (the zoo's layouts, widths cut for speed)
    "resnet_cifar": lambda: create_model("resnet20"),
    "resnet_imagenet": lambda: ResNet(PreActBottleneck, [1, 1, 1, 1], [4, 8, 8, 8], stem_width=8, num_classes=5),
    "preact_cifar": lambda: create_model("wrn", depth=10, widen_factor=1),
    "dpn": lambda: DPN((1, 1, 1, 1), (4, 4, 4, 4), 8, 4, (8, 16, 16, 16), stem="cifar", stem_width=8, num_classes=10),
    "dmrnet": lambda: DMRNet(depth=8, num_classes=10),
    "fractalnet": lambda: FractalNet(2, 3, channels=[8, 8, 8], num_classes=10),
}


def tiny_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return TINY_MODELS[name]()


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a wrongly mapped BN shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Head: num_classes=0, reset_classifier, get_classifier, forward_head(pre_logits), global_pool

def test_num_classes_zero_returns_pooled_features():
    model = create_model("resnet20", num_classes=0).eval()
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(model.get_classifier(), nn.Identity)
    assert torch.allclose(model(x), model.forward_features(x).mean((2, 3)), atol=1e-6)
    assert model(x).shape == (2, 64)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_reset_classifier_zero_removes_the_head_as_timm(name):
    model = tiny_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(model.get_classifier()(pooled), model(x), atol=1e-5)
    model.reset_classifier(0)
    assert torch.allclose(model(x), pooled, atol=1e-6) and model(x).shape == (2, model.num_features)
    model.reset_classifier(7, global_pool="max")
    assert model(x).shape == (2, 7) and model.get_classifier().in_features == model.num_features


def test_global_pool_types():
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    fmap = model.forward_features(x)
    expected = {"avg": fmap.mean((2, 3)), "max": fmap.amax((2, 3)),
                "avgmax": 0.5 * (fmap.mean((2, 3)) + fmap.amax((2, 3))),
                "catavgmax": torch.cat([fmap.mean((2, 3)), fmap.amax((2, 3))], 1)}
    for pool, features in expected.items():
        model.reset_classifier(0, pool)
        assert torch.allclose(model(x), features, atol=1e-6), pool
    model.reset_classifier(0, "")
    assert torch.equal(model(x), fmap)  # no pooling: the map itself
    built = create_model("resnet20", global_pool="catavgmax")
    assert built.global_pool.pool_type == "catavgmax" and built.fc.in_features == 128


@pytest.mark.parametrize("overrides, message", [
    (dict(global_pool="gem"), "global_pool must be one of 'avg', 'max', 'avgmax', 'catavgmax' or ''"),
    (dict(global_pool=""), "global_pool='' \\(no pooling\\) needs num_classes=0"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0"),
    (dict(out_indices=(1,)), "add features_only=True"),
    (dict(features_only=True, num_classes=10), "has no classifier"),
    (dict(drop_path_rate=0.1, stochastic_depth=0.5), "not both"),
    (dict(drop_path_rate=1.0), "drop_path_rate is the last block's drop probability, in \\[0, 1\\)"),
])
def test_unsupported_options_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        create_model("resnet20", **overrides)
    assert "\n" not in str(error.value)


def test_fractalnet_refuses_drop_path_rate_naming_its_own_drop_path():
    with pytest.raises(ValueError, match="local_drop_path= and global_drop_path="):
        create_model("fractalnet20", channels=(8, 8, 8, 8, 8), drop_path_rate=0.1)


# ---------------------------------------------------------------------------------------------
# Feature maps: feature_info, forward_intermediates, features_only

@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_feature_info_names_the_module_whose_output_each_map_is(name):
    model = tiny_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    info = model.feature_info
    modules = dict(model.named_modules())
    hooked = {}
    for entry in info:
        modules[entry["module"]].register_forward_hook(lambda m, i, o, key=entry["module"]: hooked.setdefault(key, o.clone()))
    model.forward_features(x)  # the plain forward pass: each named module's output is one map
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == len(info) == len(hooked)
    for entry, fmap in zip(info, maps):
        assert fmap.shape == (2, entry["num_chs"], 32 // entry["reduction"], 32 // entry["reduction"]), entry
        assert torch.allclose(hooked[entry["module"]], fmap, atol=1e-6), entry
    final, _ = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)


def test_forward_intermediates_takes_timms_indices():
    model = create_model("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    every = model.forward_intermediates(x, intermediates_only=True)
    for indices, taken in [(None, [0, 1, 2, 3]), (2, [2, 3]), ([0, -1], [0, 3]), ((1,), [1])]:
        maps = model.forward_intermediates(x, indices, intermediates_only=True)
        assert [m.shape for m in maps] == [every[i].shape for i in taken]
        assert all(torch.equal(m, every[i]) for m, i in zip(maps, taken))
    last, maps = model.forward_intermediates(x, [1], stop_early=True)
    assert torch.equal(last, every[1]) and len(maps) == 1
    for bad, message in [(5, "last 5 of 4"), ([4], "feature index 4 is out of range"), ([], "empty")]:
        with pytest.raises(ValueError, match=message):
            model.forward_intermediates(x, bad)
    with pytest.raises(ValueError, match="NCHW maps only"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match="no final norm"):
        model.forward_intermediates(x, norm=True)


def test_norm_applies_the_final_bn_of_pre_activation_nets():
    model = randomise_bn(create_model("wrn", depth=10, widen_factor=1))
    x = torch.randn(2, 3, 32, 32)
    raw = model.forward_intermediates(x, [-1], intermediates_only=True)[0]
    normed = model.forward_intermediates(x, 1, norm=True, intermediates_only=True)[0]
    assert torch.allclose(normed, model.final_bn(raw), atol=1e-6) and not torch.allclose(normed, raw)


def test_features_only_returns_the_maps_at_out_indices_and_drops_the_rest():
    full = create_model("resnet20").eval()
    features = create_model("resnet20", features_only=True, out_indices=(1, 2)).eval()
    features.model.load_state_dict({k: v for k, v in full.state_dict().items() if k.startswith(("conv1", "bn1", "layer1", "layer2"))},
                                   strict=False)
    x = torch.randn(2, 3, 32, 32)
    maps = features(x)
    expected = full.forward_intermediates(x, (1, 2), intermediates_only=True)
    assert len(maps) == 2 and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(maps, expected))
    info = features.feature_info
    assert info.channels() == [16, 32] and info.reduction() == [1, 2] and info.module_name() == ["layer1", "layer2"]
    assert info.channels(0) == 16 and len(info) == 4
    assert isinstance(features.model.layer3, nn.Identity) and isinstance(features.model.fc, nn.Identity)
    assert sum(p.numel() for p in features.parameters()) < sum(p.numel() for p in full.parameters()) / 3
    every = create_model("resnet18", features_only=True)
    assert every.feature_info.reduction() == [2, 4, 8, 16, 32] and every.feature_info.channels() == [64, 64, 128, 256, 512]


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing

@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_grad_checkpointing_keeps_outputs_and_grads(name, monkeypatch):
    plain = tiny_model(name).train()
    checkpointed = tiny_model(name).train()
    checkpointed.set_grad_checkpointing()
    calls = []
    real = features_module.checkpoint
    monkeypatch.setattr(features_module, "checkpoint", lambda fn, *a, **k: calls.append(fn) or real(fn, *a, **k))
    x = torch.randn(2, 3, 32, 32)
    out_plain, out_ckpt = plain(x), checkpointed(x)
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    out_plain.logsumexp(1).sum().backward()
    out_ckpt.logsumexp(1).sum().backward()
    for (key, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), key
    steps = checkpointed.feature_steps()
    assert len(calls) == sum(len(step.blocks) for step in steps) > 0  # one checkpoint per block


# ---------------------------------------------------------------------------------------------
# drop_path_rate (timm) beside stochastic_depth (Huang et al.)

def test_drop_path_rate_follows_timms_schedule():
    model = create_model("resnet20", drop_path_rate=0.2)
    blocks = [b for _, b in residual_blocks(model)]
    drops = [1 - b.drop_path.survival for b in blocks]
    assert drops == pytest.approx(torch.linspace(0, 0.2, 9).tolist(), abs=1e-7)
    assert drops[0] == 0 and all(b.drop_path.mode == "sample" and b.drop_path.scaling == "inverted" for b in blocks)
    paper = create_model("resnet20", stochastic_depth=0.8)
    assert 1 - residual_blocks(paper)[0][1].drop_path.survival == pytest.approx(0.2 / 9)  # the paper's first block drops


def test_drop_path_rate_drops_per_sample_scaled_in_training_and_not_at_test():
    torch.manual_seed(0)
    model = randomise_bn(create_model("resnet20", drop_path_rate=0.5))
    block = model.layer3[2]  # the last block: drop probability 0.5
    x = torch.randn(1, 64, 8, 8).expand(64, -1, -1, -1).contiguous()
    identity, residual = x, block.residual(x)
    kept = F.relu(identity + residual / 0.5)
    dropped = F.relu(identity)
    block.drop_path.train()
    out = block(x)
    is_kept = torch.tensor([torch.allclose(o, kept[0], atol=1e-5) for o in out])
    is_dropped = torch.tensor([torch.allclose(o, dropped[0], atol=1e-5) for o in out])
    assert bool((is_kept | is_dropped).all()) and 0 < int(is_kept.sum()) < 64  # per sample, scaled by 1 / 0.5
    block.drop_path.eval()
    assert torch.allclose(block(x), F.relu(identity + residual), atol=1e-5)  # the identity at test time


# ---------------------------------------------------------------------------------------------
# torch.hub

def test_torch_hub_loads_the_zoo_from_a_local_directory():
    model = torch.hub.load(str(REPO), "resnet56", source="local", num_classes=100)
    assert isinstance(model, ResNet) and len(model.layer1) == 9 and model.fc.out_features == 100
    hubconf = importlib.util.module_from_spec(importlib.util.spec_from_file_location("hubconf", REPO / "hubconf.py"))
    hubconf.__spec__.loader.exec_module(hubconf)
    assert {"resnet20", "resnet56", "dpn92", "wrn28_10"} <= set(dir(hubconf)) and hubconf.dependencies[0] == "torch"
    assert "CIFAR ResNet-56" in hubconf.resnet56.__doc__


def test_torch_hub_and_timms_idioms_take_reslabs_trained_weights(weights_dir):
    """On a weights folder of D's test (an untrained ResNet-20 shipped by train_zoo.py add)."""
    reference = create_model("resnet20", pretrained=True)
    model = torch.hub.load(str(REPO), "resnet20", pretrained=True, source="local")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
    x = torch.randn(2, 3, 32, 32)
    backbone = create_model("resnet20", pretrained=True, num_classes=0)
    assert torch.allclose(backbone(x), reference.forward_head(reference.forward_features(x), pre_logits=True), atol=1e-6)
    maps = create_model("resnet20", pretrained=True, features_only=True, out_indices=[-1]).eval()(x)
    assert torch.allclose(maps[0], reference.forward_intermediates(x, [-1], intermediates_only=True)[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Foreign checkpoints. First the layouts, re-implemented from each repository's model file.

class BNAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: a BatchNorm2d (same keys) followed by an activation."""

    def __init__(self, channels: int, eps: float = 1e-5, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(channels, eps=eps)
        self.act = act()

    def forward(self, x):
        return self.act(super().forward(x))


class TimmBnActConv(nn.Module):
    def __init__(self, cin, cout, k, stride=1, groups=1):
        super().__init__()
        self.bn = BNAct(cin, eps=1e-3)
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)

    def forward(self, x):
        return self.conv(self.bn(x))


class TimmDualPathBlock(nn.Module):
    """timm dpn.py DualPathBlock (not the 'b' variant): tuple (residual, dense) in and out."""

    def __init__(self, cin, a, b, c, inc, groups, block_type):
        super().__init__()
        self.c, self.stride = c, 2 if block_type == "down" else 1
        if block_type == "proj":
            self.c1x1_w_s1 = TimmBnActConv(cin, c + 2 * inc, 1)
        if block_type == "down":
            self.c1x1_w_s2 = TimmBnActConv(cin, c + 2 * inc, 1, stride=2)
        self.projects = block_type != "normal"
        self.c1x1_a = TimmBnActConv(cin, a, 1)
        self.c3x3_b = TimmBnActConv(a, b, 3, self.stride, groups)
        self.c1x1_c = TimmBnActConv(b, c + inc, 1)

    def forward(self, x):
        x_in = torch.cat(x, 1) if isinstance(x, tuple) else x
        if self.projects:
            proj = (self.c1x1_w_s1 if self.stride == 1 else self.c1x1_w_s2)(x_in)
            x_s1, x_s2 = proj[:, :self.c], proj[:, self.c:]
        else:
            x_s1, x_s2 = x
        out = self.c1x1_c(self.c3x3_b(self.c1x1_a(x_in)))
        return x_s1 + out[:, :self.c], torch.cat([x_s2, out[:, self.c:]], 1)


class TimmDPN(nn.Module):
    """timm dpn.py DPN: features.conv1_1 (conv, BN-ReLU), conv1_pool, convS_J blocks, conv5_bn_ac
    (concat, BN-ELU), global average pool, classifier (1x1 conv with bias), flatten."""

    def __init__(self, small, init, k_r, groups, k_sec, inc_sec, num_classes):
        super().__init__()
        factor = 1 if small else 4
        blocks = OrderedDict()
        stem = nn.Module()
        stem.conv = nn.Conv2d(3, init, 3 if small else 7, 2, 1 if small else 3, bias=False)
        stem.bn = BNAct(init, eps=1e-3)
        stem.forward = lambda x: stem.bn(stem.conv(x))
        blocks["conv1_1"] = stem
        blocks["conv1_pool"] = nn.MaxPool2d(3, 2, 1)
        chans = init
        for s, (depth, inc) in enumerate(zip(k_sec, inc_sec)):
            bw = 64 * factor * 2**s
            r = (k_r * bw) // (64 * factor)
            blocks[f"conv{s + 2}_1"] = TimmDualPathBlock(chans, r, r, bw, inc, groups, "proj" if s == 0 else "down")
            chans = bw + 3 * inc
            for j in range(2, depth + 1):
                blocks[f"conv{s + 2}_{j}"] = TimmDualPathBlock(chans, r, r, bw, inc, groups, "normal")
                chans += inc
        final = BNAct(chans, eps=1e-3, act=nn.ELU)
        blocks["conv5_bn_ac"] = nn.Module()
        blocks["conv5_bn_ac"].bn = final
        blocks["conv5_bn_ac"].forward = lambda x: final(torch.cat(x, 1))
        self.features = nn.Sequential(blocks)
        self.classifier = nn.Conv2d(chans, num_classes, 1, bias=True)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3), keepdim=True)).flatten(1)


class TimmPreActBlock(nn.Module):
    """timm resnetv2.py PreActBottleneck / PreActBasic with BatchNormAct2d and plain convs."""

    def __init__(self, cin, cout, stride, bottleneck, project):
        super().__init__()
        mid = cout // 4 if bottleneck else cout
        self.bottleneck = bottleneck
        if project:
            self.downsample = nn.Module()
            self.downsample.conv = nn.Conv2d(cin, cout, 1, stride, bias=False)
        else:
            self.downsample = None
        self.norm1 = BNAct(cin)
        if bottleneck:
            self.conv1, self.norm2 = nn.Conv2d(cin, mid, 1, bias=False), BNAct(mid)
            self.conv2, self.norm3 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False), BNAct(mid)
            self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        else:
            self.conv1, self.norm2 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False), BNAct(mid)
            self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)

    def forward(self, x):
        pre = self.norm1(x)
        shortcut = x if self.downsample is None else self.downsample.conv(pre)
        out = self.conv2(self.norm2(self.conv1(pre)))
        if self.bottleneck:
            out = self.conv3(self.norm3(out))
        return out + shortcut


class TimmResNetV2(nn.Module):
    """timm resnetv2.py ResNetV2 (preact, stem_type ''): stem.conv 7x7/2 + stem.pool, stages.S.blocks.J,
    norm (BN-ReLU), head.fc (1x1 conv with bias) after average pooling."""

    def __init__(self, layers, channels, stem_chs, bottleneck, num_classes):
        super().__init__()
        self.stem = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, stem_chs, 7, 2, 3, bias=False),
                                              pool=nn.MaxPool2d(3, 2, 1)))
        self.stages = nn.Sequential()
        cin = stem_chs
        for s, (depth, cout) in enumerate(zip(layers, channels)):
            stage = nn.Module()
            stage.blocks = nn.Sequential(*[
                TimmPreActBlock(cin if j == 0 else cout, cout, (1 if s == 0 else 2) if j == 0 else 1, bottleneck,
                                project=j == 0 and (bottleneck or cin != cout or s > 0)) for j in range(depth)])
            stage.forward = stage.blocks.forward
            self.stages.add_module(str(s), stage)
            cin = cout
        self.norm = BNAct(cin)
        self.head = nn.Module()
        self.head.fc = nn.Conv2d(cin, num_classes, 1, bias=True)

    def forward(self, x):
        x = self.norm(self.stages(self.stem(x)))
        return self.head.fc(x.mean((2, 3), keepdim=True)).flatten(1)


class AkamasterBlock(nn.Module):
    """akamaster resnet.py BasicBlock, option A: x[:, :, ::2, ::2] padded with planes // 4 zero channels on both sides."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pads = stride != 1 or cin != planes
        self.planes = planes

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.planes // 4, self.planes // 4)) if self.pads else x
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """Both repositories' network: conv3x3(16)-BN-ReLU, three stages of n blocks (16/32/64 planes,
    stride 2 at the start of the second and third), average pooling and a linear layer, named
    ``linear`` (akamaster) or ``fc`` (chenyaofo)."""

    def __init__(self, block, n, head, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for s, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, 2 if s and not j else 1))
                cin = planes
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.head = head
        setattr(self, head, nn.Linear(64, num_classes))

    def forward(self, x):
        out = self.layer3(self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x))))))
        return getattr(self, self.head)(out.mean((2, 3)))


class ChenyaofoBlock(nn.Module):
    """chenyaofo resnet.py BasicBlock: torchvision's, with a 1x1 conv + BN downsample where the shape changes."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if stride != 1 or cin != planes else None)

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def foreign(reference: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    return randomise_bn(reference)


def outputs_agree(a: nn.Module, b: nn.Module, size: int = 32) -> bool:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6, rtol=1e-5)


# --- timm DPN

def tiny_timm_dpn() -> TimmDPN:
    return foreign(TimmDPN(small=True, init=10, k_r=16, groups=4, k_sec=(1, 2, 1, 2), inc_sec=(4, 8, 8, 4), num_classes=7))


def tiny_reslab_dpn(final_activation: str = "elu") -> DPN:
    return DPN((1, 2, 1, 2), (4, 8, 8, 4), 16, 4, (64, 128, 256, 512), stem="imagenet_small", stem_width=10,
               num_classes=7, final_activation=final_activation)


def test_timm_dpn_weights_load_with_equal_outputs_and_export_back(tmp_path):
    reference = tiny_timm_dpn()
    state = reference.state_dict()
    assert detect_flavour(state) == "timm-dpn"
    model = load_foreign_state_dict(tiny_reslab_dpn(), state)
    assert outputs_agree(model, reference, 64)
    path = export_state_dict(model, tmp_path / "dpn.pth", "timm-dpn")
    exported = torch.load(path, weights_only=True)
    assert set(exported) == set(state) and all(exported[k].shape == v.shape for k, v in state.items())
    back = TimmDPN(small=True, init=10, k_r=16, groups=4, k_sec=(1, 2, 1, 2), inc_sec=(4, 8, 8, 4), num_classes=7)
    back.load_state_dict(exported, strict=True)
    assert outputs_agree(back, reference, 64)


def test_timm_dpn_weights_are_refused_by_a_dpn_ending_in_relu():
    with pytest.raises(CheckpointError, match="final_activation='elu'"):
        load_foreign_state_dict(tiny_reslab_dpn("relu"), tiny_timm_dpn().state_dict())


def test_timm_dpn_names_its_reslab_model_from_the_blocks_per_stage():
    state = to_reslab(TimmDPN(small=True, init=10, k_r=8, groups=4, k_sec=(3, 4, 12, 3), inc_sec=(4, 4, 4, 4),
                              num_classes=1000).state_dict(), "timm-dpn")
    assert foreign_model_spec(state, "timm-dpn") == ("dpn68", {"num_classes": 1000, "final_activation": "elu"})


# --- timm ResNetV2

@pytest.mark.parametrize("bottleneck", [True, False])
def test_timm_resnetv2_weights_load_with_equal_outputs(bottleneck, tmp_path):
    channels = (16, 32, 32, 64) if bottleneck else (8, 16, 16, 32)
    reference = foreign(TimmResNetV2([1, 2, 1, 1], channels, 8, bottleneck, num_classes=5))
    block = PreActBottleneck if bottleneck else PreActBasicBlock
    planes = [c // block.expansion for c in channels]
    model = ResNet(block, [1, 2, 1, 1], planes, stem_width=8, stem_bn=False, num_classes=5)
    assert detect_flavour(reference.state_dict()) == "timm-resnetv2"
    load_foreign_state_dict(model, reference.state_dict())
    assert outputs_agree(model, reference, 64)
    assert from_reslab(model.state_dict(), "timm-resnetv2").keys() == reference.state_dict().keys()
    with_stem_bn = ResNet(block, [1, 2, 1, 1], planes, stem_width=8, num_classes=5)
    with pytest.raises(CheckpointError, match="stem_bn=False"):
        load_foreign_state_dict(with_stem_bn, reference.state_dict())


def test_timm_resnetv2_names_a_preact_resnet_without_stem_bn():
    state = to_reslab(TimmResNetV2([3, 4, 6, 3], (8, 8, 8, 8), 8, True, num_classes=1000).state_dict(), "timm-resnetv2")
    assert foreign_model_spec(state, "timm-resnetv2") == ("preact_resnet50", {"num_classes": 1000, "stem_bn": False})


# --- CIFAR repositories

def akamaster_file(tmp_path: Path, reference: nn.Module) -> Path:
    """As akamaster's trainer saves: DataParallel's module. prefix under 'state_dict', beside best_prec1."""
    path = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}, "best_prec1": 91.73}, path)
    return path


def test_akamaster_checkpoint_loads_with_its_outputs(tmp_path):
    reference = foreign(CifarResNet(AkamasterBlock, 3, "linear"))
    path = akamaster_file(tmp_path, reference)
    assert detect_flavour(read_state_dict(path)) == "akamaster"
    model = load_foreign_model(path)
    assert outputs_agree(model, reference)
    assert all(m.placement == "both" for m in model.modules() if hasattr(m, "placement"))
    assert outputs_agree(load_foreign_state_dict(create_model("resnet20", zero_pad="both"), path, "akamaster"), reference)


def test_akamaster_checkpoint_that_fits_by_shape_is_refused_where_it_means_something_else(tmp_path):
    reference = foreign(CifarResNet(AkamasterBlock, 3, "linear"))
    path = akamaster_file(tmp_path, reference)
    with pytest.raises(CheckpointError, match="zero_pad='both'"):
        load_foreign_state_dict(create_model("resnet20"), path)  # option A padding at the end
    with pytest.raises(CheckpointError, match="holds a 'akamaster' state dict, not 'torchvision'"):
        load_foreign_state_dict(create_model("resnet20", zero_pad="both"), path, "torchvision")
    # The trap the refusal prevents: renamed by hand, the weights load strictly into the
    # end-padding model and compute something else.
    renamed = to_reslab(read_state_dict(path), "akamaster")
    plain = create_model("resnet20")
    plain.load_state_dict(renamed, strict=True)
    assert not outputs_agree(plain, reference)


def test_chenyaofo_checkpoint_loads_with_its_outputs():
    reference = foreign(CifarResNet(ChenyaofoBlock, 3, "fc"))
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    assert detect_flavour(read_state_dict(state)) == "chenyaofo"
    assert outputs_agree(load_foreign_model(state), reference)
    with pytest.raises(CheckpointError, match="shortcut='B'"):
        load_foreign_state_dict(create_model("resnet20"), state, "chenyaofo")


def test_reslab_own_cifar_layout_is_not_mistaken_for_a_foreign_one():
    state = create_model("resnet20").state_dict()
    assert detect_flavour(state) == "reslab"
    with pytest.raises(CheckpointError, match="reads timm-dpn, timm-resnetv2, akamaster, chenyaofo"):
        load_foreign_model(state)
    with pytest.raises(ValueError, match="zero_pad='both' places option A's zero channels"):
        create_model("resnet20", shortcut="B", zero_pad="both")
