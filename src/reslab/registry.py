"""One registry for every model of the zoo: ``create_model(name, **overrides)`` and
``list_models(pattern)``, as in timm.

A model family registers each named variant with :func:`register_model`, a decorator on a
short builder ``def resnet20(**overrides) -> ResNet``. The builder's return annotation names
the class it builds; the keyword arguments of that class (and of the builder) are the
overrides a user may pass, so a misspelt override is caught before anything is built.
Stochastic depth applies to every model with residual blocks and is handled here, once.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

# Overrides that create_model handles itself for every model.
STOCHASTIC_DEPTH_OVERRIDES = ("stochastic_depth", "drop_mode", "drop_scaling", "drop_path_rate")
# timm's features_only models (reslab.models.features), also handled here for every model.
FEATURE_OVERRIDES = ("features_only", "out_indices")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model before building it."""

    name: str
    family: str
    paper: str
    input_size: int
    published_params: Optional[float]
    builder: Callable[..., nn.Module] = field(repr=False)
    aliases: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        return (inspect.getdoc(self.builder) or "").split("\n")[0]

    def accepted_overrides(self) -> set[str]:
        """Keyword arguments the builder accepts: its own, and the built class's with defaults."""
        names = {p.name for p in inspect.signature(self.builder).parameters.values()
                 if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        built = typing.get_type_hints(self.builder).get("return")
        if isinstance(built, type):
            names |= {p.name for p in inspect.signature(built.__init__).parameters.values()
                      if p.default is not p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
        return names | set(STOCHASTIC_DEPTH_OVERRIDES) | set(FEATURE_OVERRIDES)


_REGISTRY: dict[str, ModelInfo] = {}
_ALIASES: dict[str, str] = {}


def register_model(name: str, *, family: str, paper: str, input_size: int,
                   published_params: Optional[float] = None, aliases: tuple[str, ...] = ()) -> Callable:
    """Decorator that registers a builder under ``name`` (and ``aliases``)."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        for key in (name, *aliases):
            if key in _REGISTRY or key in _ALIASES:
                raise ValueError(f"model name {key!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, family, paper, input_size, published_params, builder, tuple(aliases))
        _ALIASES.update({alias: name for alias in aliases})
        return builder

    return decorate


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


def list_models(pattern: str = "*", family: Optional[str] = None, pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern`` (e.g. ``'resnet*'``), in
    natural order (resnet20 before resnet110); ``pretrained=True``: the names that have trained
    weights, tagged ones included (``'resnet56.sdepth'``, as timm lists ``'resnet50.a1_in1k'``)."""
    _load_families()
    if pretrained:
        from reslab.pretrained import pretrained_names

        return [n for n in pretrained_names()
                if fnmatch.fnmatchcase(n, pattern) and (family is None or model_info(n).family == family)]
    names = [n for n, info in _REGISTRY.items()
             if fnmatch.fnmatchcase(n, pattern) and (family is None or info.family == family)]
    return sorted(names, key=_natural_key)


def split_tag(name: str) -> tuple[str, Optional[str]]:
    """timm's ``architecture.tag`` names: ``'resnet56.sdepth'`` -> ``('resnet56', 'sdepth')``. The
    tag names one set of trained weights of the architecture; a name without one has ``None``."""
    architecture, _, tag = name.partition(".")
    return architecture, tag or None


def pretrained_name(name: str) -> str:
    """The name under which ``name``'s weights are listed: the registered architecture (an alias
    resolved) with the tag kept, e.g. ``'ResNet56.sdepth'`` -> ``'resnet56.sdepth'``."""
    architecture, tag = split_tag(name)
    registered = model_info(architecture).name
    return f"{registered}.{tag}" if tag else registered


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name`` or an alias of it (a weights tag, ``'.sdepth'``, is
    ignored); a close-match error otherwise."""
    _load_families()
    key = split_tag(name.strip())[0].lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        candidates = list(_REGISTRY) + list(_ALIASES)
        close = difflib.get_close_matches(key, candidates, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (`reslab models` lists all {len(_REGISTRY)})")
    return _REGISTRY[key]


def create_model(name: str, num_classes: Optional[int] = None, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model.

    ``pretrained=True`` returns it with reslab's trained CIFAR-10 weights, in eval mode, its card
    in ``model.pretrained_cfg`` (:mod:`reslab.pretrained`); it takes no other options. A tag picks
    one of several trained versions, as in timm: ``create_model("resnet56.sdepth", pretrained=True)``
    (trained with stochastic depth, rebuilt with it); without ``pretrained`` the tag is ignored and
    the architecture is built.

    ``num_classes`` defaults to the model's own (10 for CIFAR nets, 1000 for ImageNet nets).
    ``stochastic_depth=p_L`` gives every residual block the survival p_l = 1 - (l/L)(1 - p_L)
    (Huang et al. 2016); ``drop_mode`` is ``'batch'`` (the paper) or ``'sample'`` (timm),
    ``drop_scaling`` is ``'paper'`` or ``'inverted'``. Other overrides go to the model's
    constructor; an unknown one raises an error listing the close matches.

    timm's options: ``drop_path_rate=r`` (per-sample drop rising linearly from 0 at the first block
    to r at the last; not with ``stochastic_depth``), ``global_pool``, ``num_classes=0`` (no
    classifier: pooled features), ``features_only=True`` with ``out_indices`` (a
    :class:`~reslab.models.features.FeatureExtractor`). See docs/model-api.md.
    """
    from reslab.models.layers import set_drop_path_rate, set_stochastic_depth

    info = model_info(name)
    weights_name = pretrained_name(name) if pretrained else info.name
    if any(key in overrides for key in FEATURE_OVERRIDES):
        return _feature_extractor(weights_name, num_classes, pretrained, overrides)
    if pretrained and num_classes == 0:  # timm's idiom for a trained backbone: its pooled features
        model = create_model(weights_name, None, True, **overrides)
        model.reset_classifier(0)
        return model
    if pretrained:
        from reslab.pretrained import load_pretrained

        if num_classes is not None or overrides:
            given = ", ".join([*(["num_classes"] if num_classes is not None else []), *overrides])
            raise ValueError(f"pretrained=True builds {weights_name} as it was trained; drop {given}, or build it "
                             "without pretrained=True")
        return load_pretrained(weights_name)
    accepted = info.accepted_overrides()
    for key in overrides:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{info.name} has no option {key!r}{hint} (options: {', '.join(sorted(accepted))})")
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    sd = {k: overrides.pop(k) for k in STOCHASTIC_DEPTH_OVERRIDES if k in overrides}
    if sd.get("drop_path_rate") is not None and (sd.get("stochastic_depth") is not None or set(sd) & {"drop_mode", "drop_scaling"}):
        raise ValueError("give drop_path_rate (timm's, per sample) or stochastic_depth (Huang et al.'s p_L), not both: "
                         "drop_path_rate=r is stochastic_depth=1-r with drop_mode='sample', drop_scaling='inverted' "
                         "on a schedule starting at 0")
    model = info.builder(**overrides)
    if sd.get("drop_path_rate") is not None:
        set_drop_path_rate(model, sd["drop_path_rate"])
    elif sd.get("stochastic_depth") is not None:
        set_stochastic_depth(model, sd["stochastic_depth"], sd.get("drop_mode", "batch"), sd.get("drop_scaling", "paper"))
    elif set(sd) & {"drop_mode", "drop_scaling"}:
        raise ValueError("drop_mode and drop_scaling need stochastic_depth=p_L (e.g. 0.5)")
    return model


def _feature_extractor(name: str, num_classes: Optional[int], pretrained: bool, overrides: dict[str, Any]) -> nn.Module:
    """``create_model(name, features_only=True, out_indices=...)``: the model's feature maps (timm)."""
    from reslab.models.features import FeatureExtractor

    overrides = dict(overrides)
    features_only = overrides.pop("features_only", False)
    out_indices = overrides.pop("out_indices", None)
    if not features_only:
        if out_indices is not None:
            raise ValueError("out_indices chooses the feature maps of features_only=True; add features_only=True")
        return create_model(name, num_classes, pretrained, **overrides)
    if num_classes:
        raise ValueError(f"features_only=True returns feature maps and has no classifier; drop num_classes={num_classes}")
    model = create_model(name, None, pretrained, **overrides)
    return FeatureExtractor(model, out_indices)


_FAMILIES_LOADED = False


def _load_families() -> None:
    """Import the model modules, which register their variants (once, lazily)."""
    global _FAMILIES_LOADED
    if not _FAMILIES_LOADED:
        _FAMILIES_LOADED = True
        import reslab.models  # noqa: F401
