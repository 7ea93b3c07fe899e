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

PathLike = Union[str, os.PathLike]
StateSource = Union[PathLike, Mapping[str, Tensor]]
FLAVOURS = ("torchvision", "timm")
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


def load_foreign_state_dict(model: nn.Module, source: StateSource, flavour: str) -> nn.Module:
    """Load a ``flavour`` ('torchvision' or 'timm') state dict into ``model``, strictly; an error
    names missing, unexpected and reshaped keys."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    state = _fill_num_batches_tracked(model, read_state_dict(source))
    name = str(source) if isinstance(source, (str, os.PathLike)) else f"the {flavour} state dict"
    return load_weights(model, state, name)


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
    """Write ``model``'s weights with ``flavour``'s key names ('torchvision' or 'timm'; the same
    names, see the module docstring): a ``.safetensors`` file, or a ``torch.save`` file
    (``.pth``) that both libraries' ``load_state_dict`` take as it is."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}, got {flavour!r}")
    check_standard_layout(model)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        atomic_write_bytes(path, save(state, metadata={"format": "pt"}))
    else:
        atomic_torch_save(state, path)
    return path
