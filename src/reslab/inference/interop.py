"""Load torchvision and timm checkpoints into reslab models, and write reslab weights for them.

reslab's ``ResNet`` keeps torchvision's module names (``conv1, bn1, layer1..layer4,
blocks' conv1..conv3/bn1..bn3, downsample.0/.1, fc``). timm's ResNet (``timm/models/resnet.py``,
default stem and ``downsample_conv`` shortcut) uses the same names and shapes; its extra
modules (``act1``, ``aa``, ``drop_block``, ``global_pool``) hold no weights. So for resnet18..152,
resnext50_32x4d, resnext101_32x4d/32x8d/64x4d and wide_resnet50_2/101_2 the state dicts of all
three libraries have identical keys and no renaming is needed, in either direction. (timm's
``-d``/``-t``/``-s`` variants, with a deep stem or average-pool shortcuts, are other
architectures and are refused with the keys that differ.)

What does need handling is how files wrap the weights: ``{"state_dict": ...}``, ``{"model": ...}``,
``"module."`` prefixes (DistributedDataParallel) and ``"_orig_mod."`` (torch.compile), and old
torchvision files without BN's ``num_batches_tracked`` (PyTorch < 0.4.1), filled with 0 as
``BatchNorm`` itself does. Files are read without running code: safetensors, or
``torch.load(weights_only=True)``.

Other layouts (:mod:`reslab.inference.flavours`, which also says how each is recognised) are
renamed on the way in and out: timm's DPN (``'timm-dpn'``) and pre-activation ResNetV2
(``'timm-resnetv2'``), and the CIFAR ResNets of akamaster/pytorch_resnet_cifar10
(``'akamaster'``) and chenyaofo/pytorch-cifar-models (``'chenyaofo'``). Where a file fits a model
by its shapes but not by what the model computes (an akamaster file in a model whose option-A
shortcut pads zeros at the end, a timm DPN file in a DPN ending in ReLU instead of timm's ELU),
loading is refused with the option that makes them agree; :func:`load_foreign_model` builds the
right model from the file itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from reslab.checkpoint import (atomic_torch_save, atomic_write_bytes, is_safetensors, load_torch_file, load_weights,
                               read_checkpoint, unwrap)
from reslab.errors import CheckpointError
from reslab.inference.flavours import FOREIGN_FLAVOURS, detect_flavour, from_reslab, to_reslab

PathLike = Union[str, os.PathLike]
StateSource = Union[PathLike, Mapping[str, Tensor]]
FLAVOURS = ("torchvision", "timm", *FOREIGN_FLAVOURS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation torchvision's and timm's ResNet weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(source: StateSource) -> dict[str, Tensor]:
    """The state dict in a file (.safetensors, .pth, .pt, .bin) or mapping, unwrapped.

    Wrappers (``{"state_dict": ...}``, ``{"model": ...}``, nested) and ``module.`` /
    ``_orig_mod.`` prefixes are removed.
    """
    if isinstance(source, Mapping):
        name, obj = "state dict", source
    else:
        name = str(source)
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"no checkpoint file at {path}")
        obj = read_checkpoint(path)[0] if is_safetensors(path) else load_torch_file(path)
    return _strip_prefixes(_unwrap(obj, name))


def _unwrap(obj: Any, name: str) -> dict[str, Tensor]:
    for _ in range(4):  # wrappers nest at most a few levels deep
        if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else type(obj).__name__
    raise CheckpointError(f"{name} holds no state dict (a mapping of names to tensors, possibly under one of "
                          f"{', '.join(WRAPPER_KEYS)}); found: {found}")


def _strip_prefixes(state: dict[str, Tensor]) -> dict[str, Tensor]:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def _fill_num_batches_tracked(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Add BN's step counter where a file predates it (as ``BatchNorm`` does for such files)."""
    filled = dict(state)
    for key, value in unwrap(model).state_dict().items():
        if key.endswith(".num_batches_tracked") and key not in filled and key.replace("num_batches_tracked", "running_mean") in filled:
            filled[key] = torch.zeros_like(value)
    return filled


def load_foreign_state_dict(model: nn.Module, source: StateSource, flavour: str = "auto") -> nn.Module:
    """Load a ``flavour`` state dict (one of ``FLAVOURS``, or ``'auto'`` to recognise it) into
    ``model``, strictly; an error names missing, unexpected and reshaped keys, a file of another
    flavour than the one given, and a model that would compute something else with it."""
    if flavour not in (*FLAVOURS, "auto"):
        raise ValueError(f"flavour must be 'auto' or one of {', '.join(FLAVOURS)}; got {flavour!r}")
    state = read_state_dict(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else f"the {flavour} state dict"
    found = _detected(state)
    if flavour == "auto":
        flavour = found or "torchvision"
    elif found in FOREIGN_FLAVOURS and found != flavour:
        raise CheckpointError(f"{name} holds a {found!r} state dict, not {flavour!r}: pass flavour={found!r} (or 'auto')")
    if flavour in FOREIGN_FLAVOURS:
        check_meaning(model, flavour)
        state = to_reslab(state, flavour)
    return load_weights(model, _fill_num_batches_tracked(model, state), name)


def _detected(state: Mapping[str, Tensor]) -> Optional[str]:
    try:
        return detect_flavour(state)
    except ValueError:
        return None


def check_meaning(model: nn.Module, flavour: str) -> None:
    """Raise ``CheckpointError`` where ``model`` takes ``flavour``'s weights by shape but would
    compute something else with them, naming the option that makes it compute the same."""
    from reslab.models.dpn import DPN
    from reslab.models.layers import ZeroPadShortcut

    model = unwrap(model)
    if flavour == "akamaster":
        pads = [m for m in model.modules() if isinstance(m, ZeroPadShortcut)]
        if not pads or any(m.placement != "both" or m.pool != "subsample" for m in pads):
            raise CheckpointError("akamaster's option-A shortcuts pad the new channels with zeros on both sides; build the "
                                  "model with shortcut='A', zero_pad='both' (or use load_foreign_model)")
    if flavour == "chenyaofo" and any(isinstance(m, ZeroPadShortcut) for m in model.modules()):
        raise CheckpointError("chenyaofo's CIFAR ResNets project with 1x1 conv + BN where the shape changes; build the "
                              "model with shortcut='B' (or use load_foreign_model)")
    if flavour == "timm-resnetv2" and not isinstance(getattr(model, "bn1", None), nn.Identity):
        raise CheckpointError("timm's resnetv2 stem is conv + max-pool without BN; build the pre-activation model with "
                              "stem_bn=False (or use load_foreign_model)")
    if flavour == "timm-dpn" and not (isinstance(model, DPN) and isinstance(model.final_bn[1], nn.ELU)):
        raise CheckpointError("timm's DPN ends in BN-ELU (the authors' code in BN-ReLU); build the DPN with "
                              "final_activation='elu' (or use load_foreign_model)")


def load_foreign_model(source: StateSource, flavour: str = "auto") -> nn.Module:
    """Build the reslab model that ``source`` (a timm DPN or ResNetV2, akamaster or chenyaofo
    CIFAR ResNet state dict) fits, with the options that make it compute what its library did
    (:func:`foreign_model_spec`), and load it; in eval mode."""
    from reslab.registry import create_model

    state = read_state_dict(source)
    flavour = (_detected(state) or "unknown") if flavour == "auto" else flavour
    if flavour not in FOREIGN_FLAVOURS:
        raise CheckpointError(f"load_foreign_model reads {', '.join(FOREIGN_FLAVOURS)} state dicts, not {flavour}; "
                              "load torchvision/timm ResNets into create_model(name) with load_foreign_state_dict")
    renamed = to_reslab(state, flavour)
    name, options = foreign_model_spec(renamed, flavour)
    model = create_model(name, **options)
    source_name = str(source) if isinstance(source, (str, os.PathLike)) else f"the {flavour} state dict"
    return load_weights(model, _fill_num_batches_tracked(model, renamed), source_name).eval()


def foreign_model_spec(state: Mapping[str, Tensor], flavour: str) -> tuple[str, dict[str, Any]]:
    """The registered model and options that take ``state`` (already in reslab's names) of
    ``flavour``: the depth from the blocks per stage, the classes from ``fc``, and the options
    that make reslab compute what the library did."""
    from reslab.models.dpn import IMAGENET_CONFIGS

    stages = _blocks_per_stage(state)
    options: dict[str, Any] = {"num_classes": int(state["fc.weight"].shape[0])}
    if flavour in ("akamaster", "chenyaofo"):
        options.update({"zero_pad": "both"} if flavour == "akamaster" else {"shortcut": "B"})
        return f"resnet{6 * stages[0] + 2}", options
    if flavour == "timm-dpn":
        name = next((n for n, config in IMAGENET_CONFIGS.items() if tuple(config[3]) == tuple(stages)), None)
        if name is None:
            raise CheckpointError(f"no DPN of reslab has {stages} blocks per stage (dpn68/92/98/107/131 have "
                                  f"{', '.join(str(c[3]) for c in IMAGENET_CONFIGS.values())})")
        return name, {**options, "final_activation": "elu"}
    bottleneck = "layer1.0.conv3.weight" in state
    depth = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50 if bottleneck else 34, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152,
             (3, 24, 36, 3): 200}.get(tuple(stages))
    if depth is None:
        raise CheckpointError(f"no pre-activation ResNet of reslab has {stages} blocks per stage")
    return f"preact_resnet{depth}", {**options, "stem_bn": False}


def _blocks_per_stage(state: Mapping[str, Tensor]) -> list[int]:
    """Blocks per stage ``layerN`` of a state dict in reslab's names."""
    blocks: dict[int, set[int]] = {}
    for key in state:
        parts = key.split(".")
        if parts[0].startswith("layer") and len(parts) > 1 and parts[1].isdigit():
            blocks.setdefault(int(parts[0][5:]), set()).add(int(parts[1]))
    return [len(blocks[i]) for i in sorted(blocks)]


def load_torchvision_state_dict(model: nn.Module, source: StateSource) -> nn.Module:
    """Load torchvision weights (e.g. ``resnet50-11ad3fa6.pth``) into the same reslab model."""
    return load_foreign_state_dict(model, source, "torchvision")


def load_timm_state_dict(model: nn.Module, source: StateSource) -> nn.Module:
    """Load timm weights (``pytorch_model.bin``, ``model.safetensors``, training checkpoints)."""
    return load_foreign_state_dict(model, source, "timm")


def import_weights(source: StateSource, model_name: str, path: PathLike, flavour: str = "torchvision",
                   class_names: Optional[list[str]] = None, **overrides: Any) -> Path:
    """Write torchvision/timm weights as a reslab model file (card: ``model_name``, ImageNet
    normalisation, the registry's input size), so that ``reslab predict``/``export``/``bench``
    take it like any reslab checkpoint."""
    from reslab.checkpoint import make_card, save_model
    from reslab.registry import create_model, model_info

    model = load_foreign_state_dict(create_model(model_name, **overrides), source, flavour)
    card = make_card(model_info(model_name).name, model, overrides=overrides, class_names=class_names,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=model_info(model_name).input_size,
                     config={"imported_from": str(source) if not isinstance(source, Mapping) else flavour})
    save_model(path, model, card)
    return Path(path)


def check_standard_layout(model: nn.Module) -> None:
    """Raise ``ValueError`` unless ``model`` has the torchvision/timm ResNet layout: 7x7 stem of
    width 64 with max-pool, four stages of post-activation basic or bottleneck blocks, and
    1x1-conv+BN projections exactly where a block changes shape (shortcut option B)."""
    from reslab.models.resnet import BasicBlock, Bottleneck, ResNet

    model = unwrap(model)
    problems = []
    if not isinstance(model, ResNet):
        raise ValueError(f"only reslab ResNet/ResNeXt/Wide ResNet models have a torchvision/timm layout, not {type(model).__name__}")
    if not (isinstance(model.conv1, nn.Conv2d) and model.conv1.kernel_size == (7, 7) and model.conv1.in_channels == 3
            and model.conv1.out_channels == 64 and isinstance(model.maxpool, nn.MaxPool2d)):
        problems.append("the stem is not the 3-channel 7x7/2 conv of width 64 with max-pool (stem='imagenet')")
    if len(model.stage_names) != 4 or not isinstance(model.final_bn, nn.Identity):
        problems.append("the model needs four stages and no final BN")
    for name, block in ((n, m) for stage in model.stage_names for n, m in getattr(model, stage).named_children()):
        if type(block) not in (BasicBlock, Bottleneck):
            problems.append(f"{type(block).__name__} blocks are not torchvision's BasicBlock/Bottleneck")
            break
        last_bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        changes_shape = block.conv1.in_channels != last_bn.num_features or max(block.conv1.stride + block.conv2.stride) > 1
        projection = isinstance(block.downsample, nn.Sequential) and len(block.downsample) == 2
        if changes_shape != projection or (block.downsample is not None and not projection):
            problems.append("shortcuts are not option B (1x1 conv + BN projections only where the shape changes)")
            break
    if problems:
        raise ValueError("cannot write torchvision/timm weights: " + "; ".join(problems))


def export_state_dict(model: nn.Module, path: PathLike, flavour: str = "torchvision") -> Path:
    """Write ``model``'s weights with ``flavour``'s key names (one of ``FLAVOURS``; 'torchvision'
    and 'timm' are the same names, see the module docstring): a ``.safetensors`` file, or a
    ``torch.save`` file (``.pth``) that the library's ``load_state_dict`` takes as it is."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}; got {flavour!r}")
    if flavour in FOREIGN_FLAVOURS:
        check_meaning(model, flavour)
    else:
        check_standard_layout(model)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    if flavour in FOREIGN_FLAVOURS:
        state = from_reslab(state, flavour)
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write_bytes(path, save(state, metadata={"format": "pt"}))
    else:
        atomic_torch_save(state, path)
    return path
