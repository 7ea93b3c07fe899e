"""Which library wrote a state dict (its *flavour*), and its key names in reslab's.

Flavours and how each is recognised from the keys and shapes alone:

* ``torchvision`` / ``timm`` (ResNet, ResNeXt, Wide ResNet): reslab's own names, a 7x7 ``conv1``
  (:mod:`reslab.inference.interop`).
* ``timm-dpn``: timm's ``DPN`` (``features.conv1_1.conv.weight``; blocks ``features.convS_J``
  with ``c1x1_w_s1``/``c1x1_w_s2`` projections and ``c1x1_a, c3x3_b, c1x1_c``; final
  ``features.conv5_bn_ac``; ``classifier`` a 1x1 convolution).
* ``timm-resnetv2``: timm's pre-activation ``ResNetV2`` with BatchNorm (``stem.conv.weight``,
  ``stages.S.blocks.J.norm1``...; ``norm``; ``head.fc`` a 1x1 convolution).
* ``akamaster``: akamaster/pytorch_resnet_cifar10 (``linear.weight``, 3x3 ``conv1`` of 16
  channels, no shortcut weights: option A, zeros padded on *both* sides).
* ``chenyaofo``: chenyaofo/pytorch-cifar-models' ResNets (torchvision's names on a 3x3 ``conv1``
  of 16 channels, ``fc``, and 1x1 projection shortcuts ``downsample.0/.1``: option B).

A state dict with a 16-channel 3x3 ``conv1``, ``fc`` and no shortcut weights is reslab's own
CIFAR option-A layout (``reslab``): nothing in its keys or shapes tells it apart from an
akamaster file whose ``linear`` someone renamed to ``fc``, so such a file must say where it
comes from (reslab's own files carry their model card).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor

FOREIGN_FLAVOURS = ("timm-dpn", "timm-resnetv2", "akamaster", "chenyaofo")
CIFAR_STEM_SHAPE = (16, 3, 3, 3)


def detect_flavour(state: Mapping[str, Tensor]) -> str:
    """The flavour of ``state`` (module docstring), or ``ValueError`` naming a few of its keys."""
    if "features.conv1_1.conv.weight" in state:
        return "timm-dpn"
    if "stem.conv.weight" in state and any(k.startswith("stages.") for k in state):
        return "timm-resnetv2"
    stem = state.get("conv1.weight")
    if stem is not None and tuple(stem.shape) == CIFAR_STEM_SHAPE:
        if "linear.weight" in state:
            return "akamaster"
        if "fc.weight" in state:
            return "chenyaofo" if any(".downsample." in k for k in state) else "reslab"
    if stem is not None and tuple(stem.shape[-2:]) == (7, 7) and "fc.weight" in state:
        return "torchvision"
    raise ValueError(f"cannot tell which library wrote this state dict (keys {', '.join(list(state)[:4])}, ...); "
                     f"reslab reads torchvision, timm (ResNet, DPN, ResNetV2), akamaster and chenyaofo files")


# Renaming rules, reslab -> foreign, applied in order (first match); each rule is
# (reslab pattern, foreign replacement, foreign pattern, reslab replacement).
Rule = tuple[str, Callable[[re.Match], str], str, Callable[[re.Match], str]]

_DPN_BRANCH = {"conv1": "c1x1_a", "conv2": "c3x3_b", "conv3": "c1x1_c"}
_DPN_BRANCH_BACK = {v: k for k, v in _DPN_BRANCH.items()}
DPN_RULES: list[Rule] = [
    (r"conv1\.weight", lambda m: "features.conv1_1.conv.weight",
     r"features\.conv1_1\.conv\.weight", lambda m: "conv1.weight"),
    (r"bn1\.(.+)", lambda m: f"features.conv1_1.bn.{m[1]}",
     r"features\.conv1_1\.bn\.(.+)", lambda m: f"bn1.{m[1]}"),
    # A stage's first block projects: stride 1 in the first stage (c1x1_w_s1), 2 after (c1x1_w_s2).
    (r"layer(\d)\.(\d+)\.downsample\.(.+)",
     lambda m: f"features.conv{int(m[1]) + 1}_{int(m[2]) + 1}.c1x1_w_s{1 if m[1] == '1' else 2}.{m[3]}",
     r"features\.conv(\d)_(\d+)\.c1x1_w_s[12]\.(.+)",
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.downsample.{m[3]}"),
    (r"layer(\d)\.(\d+)\.(conv[123])\.(.+)",
     lambda m: f"features.conv{int(m[1]) + 1}_{int(m[2]) + 1}.{_DPN_BRANCH[m[3]]}.{m[4]}",
     r"features\.conv(\d)_(\d+)\.(c1x1_a|c3x3_b|c1x1_c)\.(.+)",
     lambda m: f"layer{int(m[1]) - 1}.{int(m[2]) - 1}.{_DPN_BRANCH_BACK[m[3]]}.{m[4]}"),
    (r"final_bn\.0\.(.+)", lambda m: f"features.conv5_bn_ac.bn.{m[1]}",
     r"features\.conv5_bn_ac\.bn\.(.+)", lambda m: f"final_bn.0.{m[1]}"),
    (r"fc\.(weight|bias)", lambda m: f"classifier.{m[1]}", r"classifier\.(weight|bias)", lambda m: f"fc.{m[1]}"),
]

# Pre-activation units: reslab's bnK follows convK, timm's normK+1 does (norm1 is the unit's
# pre-activation, reslab's preact.0).
RESNETV2_RULES: list[Rule] = [
    (r"conv1\.weight", lambda m: "stem.conv.weight", r"stem\.conv\.weight", lambda m: "conv1.weight"),
    (r"layer(\d)\.(\d+)\.preact\.0\.(.+)", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.norm1.{m[3]}",
     r"stages\.(\d)\.blocks\.(\d+)\.norm1\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.preact.0.{m[3]}"),
    (r"layer(\d)\.(\d+)\.bn(\d)\.(.+)", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.norm{int(m[3]) + 1}.{m[4]}",
     r"stages\.(\d)\.blocks\.(\d+)\.norm(\d)\.(.+)", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) - 1}.{m[4]}"),
    (r"layer(\d)\.(\d+)\.(conv\d)\.weight", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{m[3]}.weight",
     r"stages\.(\d)\.blocks\.(\d+)\.(conv\d)\.weight", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.{m[3]}.weight"),
    (r"layer(\d)\.(\d+)\.downsample\.0\.weight", lambda m: f"stages.{int(m[1]) - 1}.blocks.{m[2]}.downsample.conv.weight",
     r"stages\.(\d)\.blocks\.(\d+)\.downsample\.conv\.weight", lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0.weight"),
    (r"final_bn\.0\.(.+)", lambda m: f"norm.{m[1]}", r"norm\.(.+)", lambda m: f"final_bn.0.{m[1]}"),
    (r"fc\.(weight|bias)", lambda m: f"head.fc.{m[1]}", r"head\.fc\.(weight|bias)", lambda m: f"fc.{m[1]}"),
]

AKAMASTER_RULES: list[Rule] = [
    (r"fc\.(weight|bias)", lambda m: f"linear.{m[1]}", r"linear\.(weight|bias)", lambda m: f"fc.{m[1]}"),
    (r"(.+)", lambda m: m[1], r"(.+)", lambda m: m[1]),
]

IDENTITY_RULES: list[Rule] = [(r"(.+)", lambda m: m[1], r"(.+)", lambda m: m[1])]

RULES = {"timm-dpn": DPN_RULES, "timm-resnetv2": RESNETV2_RULES, "akamaster": AKAMASTER_RULES,
         "chenyaofo": IDENTITY_RULES}
# Classifiers that are 1x1 convolutions in the foreign layout (a Linear in reslab).
CONV_CLASSIFIERS = {"timm-dpn": "classifier.weight", "timm-resnetv2": "head.fc.weight"}


def _rename(key: str, rules: list[Rule], to_reslab: bool) -> str:
    for reslab_pattern, to_foreign, foreign_pattern, to_ours in rules:
        match = re.fullmatch(foreign_pattern if to_reslab else reslab_pattern, key)
        if match:
            return (to_ours if to_reslab else to_foreign)(match)
    raise ValueError(f"key {key!r} has no counterpart in the other layout")


def to_reslab(state: Mapping[str, Tensor], flavour: str) -> dict[str, Tensor]:
    """``state`` (in ``flavour``'s names) in reslab's names and shapes."""
    conv_classifier = CONV_CLASSIFIERS.get(flavour)
    renamed = {}
    for key, value in state.items():
        if key == conv_classifier:
            value = value.flatten(1)
        renamed[_rename(key, RULES[flavour], to_reslab=True)] = value
    return renamed


def from_reslab(state: Mapping[str, Tensor], flavour: str) -> dict[str, Tensor]:
    """reslab's ``state`` in ``flavour``'s names and shapes (the inverse of :func:`to_reslab`)."""
    conv_classifier = CONV_CLASSIFIERS.get(flavour)
    renamed = {}
    for key, value in state.items():
        name = _rename(key, RULES[flavour], to_reslab=False)
        renamed[name] = value[:, :, None, None] if name == conv_classifier else value
    return renamed
