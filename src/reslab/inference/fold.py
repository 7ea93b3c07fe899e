"""Fold batch normalisation into the convolution before it, for inference.

In eval mode a BN layer is the affine map y = gamma (x - mu) / sqrt(var + eps) + beta with
fixed statistics (Ioffe & Szegedy 2015, Alg. 2), so BN(conv(x)) is one convolution with
weights W gamma / sqrt(var + eps) and bias (b - mu) gamma / sqrt(var + eps) + beta.

What is folded: every BN whose only input is a convolution's output (eval-mode identities such
as dropout in between are looked through), where that output feeds nothing else; found on the
model's traced graph (:mod:`torch.fx`), so it holds for any family. Post-activation nets (ResNet,
plain, ResNeXt, ImageNet Wide ResNets, DFN, DMRNet, FractalNet's conv-dropout-BN) lose every BN.
Pre-activation blocks (He et al. 2016; the CIFAR Wide ResNets, DPN) put BN-ReLU *before* each
convolution: only the BNs that follow a conv inside a branch fold (e.g. 9 of preact_resnet18's
18); a block's first BN, the final BN and any BN whose input also feeds a shortcut stay. A BN is
never folded into the *following* conv: a ReLU sits between them, and even without one the
conv's zero padding at the borders would make it inexact.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd


# Modules that are the identity in eval mode: a BN after conv -> dropout still folds.
EVAL_IDENTITIES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv, BN) module names where BN(conv(x)) can be folded exactly in eval mode, in
    network order. Eval-mode identities (dropout) between the two are looked through."""
    if model.training:
        model = copy.deepcopy(model).eval()
    try:
        graph = _LayerTracer().trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError...
        raise ValueError(f"cannot fold BN in {type(model).__name__}: its forward cannot be traced by torch.fx ({exc})") from None
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm) or len(node.args) != 1:
            continue
        source = node.args[0]
        while _is_call_of(source, modules, EVAL_IDENTITIES) and len(source.users) == 1 and len(source.args) == 1:
            source = source.args[0]
        if not (_is_call_of(source, modules, _ConvNd) and len(source.users) == 1):
            continue
        conv, bn = modules[source.target], modules[node.target]
        if (not conv.transposed and bn.track_running_stats
                and conv.out_channels == bn.num_features and calls[source.target] == 1 and calls[node.target] == 1):
            pairs.append((source.target, node.target))
    return pairs


class _LayerTracer(fx.Tracer):
    """torch.fx's tracer, keeping subclasses of conv and BN layers (such as the trainer's
    ``MomentBatchNorm2d``) as single calls instead of tracing into their forward."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (_ConvNd, _BatchNorm)) or super().is_leaf_module(module, qualified_name)


def _is_call_of(node: object, modules: dict[str, nn.Module], kinds: type | tuple[type, ...]) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules.get(node.target), kinds)


@torch.no_grad()
def fold_conv_bn(conv: _ConvNd, bn: _BatchNorm) -> None:
    """Fold ``bn``'s eval-mode affine map into ``conv``'s weight and bias, in place (the
    per-channel factors are computed in float64, then applied in the weight's dtype)."""
    scale = (bn.running_var.double() + bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    new_bias = (bias - bn.running_mean.double()) * scale + shift
    conv.weight.mul_(scale.to(conv.weight.dtype).view((-1,) + (1,) * (conv.weight.dim() - 1)))
    conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)


def fold_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every foldable conv+BN pair folded into the conv and
    the BN replaced by ``nn.Identity`` (module names stay; the original is untouched).

    The outputs equal the original's in eval mode up to float rounding. The copy is for
    inference: training it would train convolutions without BN.
    """
    folded = copy.deepcopy(model).eval()
    for conv_name, bn_name in foldable_pairs(folded):
        fold_conv_bn(folded.get_submodule(conv_name), folded.get_submodule(bn_name))
        parent_name, _, child = bn_name.rpartition(".")
        setattr(folded.get_submodule(parent_name), child, nn.Identity())
    return folded


def folded_for_evaluation(model: nn.Module) -> nn.Module:
    """:func:`fold_bn`'s eval-mode copy of ``model`` (the same logits to rounding, one pass fewer
    over each activation), or ``model`` itself, put in eval mode, where torch.fx cannot trace it;
    what ``reslab train`` and ``reslab eval`` evaluate."""
    try:
        return fold_bn(model)
    except ValueError:
        return model.eval()


def count_batchnorms(model: nn.Module) -> int:
    """BN layers left in ``model`` (for reporting what :func:`fold_bn` folded)."""
    return sum(isinstance(m, _BatchNorm) for m in model.modules())
