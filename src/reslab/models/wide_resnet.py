"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis 2016).

WRN-d-k is a pre-activation ResNet of basic units (:class:`PreActBasicBlock`) made k times
wider and shallower: a conv3x3(16) stem, 3 stages of n = (d - 4) / 6 units of widths
16k / 32k / 64k, a 1x1 projection where the shape changes, and dropout between the unit's two
convolutions (``dropout``; the paper's 0.3, default 0 here as in its Table 4) (sec. 2, Table 1).
The ImageNet Wide ResNets (``wide_resnet50_2``, ``wide_resnet101_2``) are in :mod:`resnet`.
"""

from __future__ import annotations

from reslab.models.preact_resnet import PreActBasicBlock
from reslab.models.resnet import WRN2016, ResNet
from reslab.registry import register_model

CIFAR_WIDTHS = (16, 32, 64)


def wide_resnet(depth: int, widen_factor: int, **kwargs) -> ResNet:
    """WRN-``depth``-``widen_factor`` for CIFAR (Zagoruyko & Komodakis 2016, Table 1)."""
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"a Wide ResNet has depth 6n+4 (10, 16, 22, 28, 40, ...), got {depth!r}")
    if not isinstance(widen_factor, int) or widen_factor < 1:
        raise ValueError(f"widen_factor k must be an integer >= 1 (stage widths 16k/32k/64k), got {widen_factor!r}")
    kwargs.setdefault("num_classes", 10)
    return ResNet(PreActBasicBlock, [(depth - 4) // 6] * 3, [w * widen_factor for w in CIFAR_WIDTHS],
                  stem="cifar", stem_width=CIFAR_WIDTHS[0], **kwargs)


@register_model("wrn", family="wide-resnet-cifar", paper=WRN2016, input_size=32)
def wrn(depth: int = 28, widen_factor: int = 10, **kwargs) -> ResNet:
    """WRN-d-k for any depth d = 6n+4 and widen factor k (default WRN-28-10)."""
    return wide_resnet(depth, widen_factor, **kwargs)


def _register(depth: int, widen_factor: int, params: float) -> None:
    @register_model(f"wrn{depth}_{widen_factor}", family="wide-resnet-cifar", paper=WRN2016, input_size=32,
                    published_params=params,
                    aliases=(f"wrn_{depth}_{widen_factor}", f"wide_resnet{depth}_{widen_factor}"))
    def build(**kwargs) -> ResNet:
        return wide_resnet(depth, widen_factor, **kwargs)

    build.__doc__ = f"WRN-{depth}-{widen_factor} for CIFAR (Zagoruyko & Komodakis 2016, Tables 4-5)."


for _depth, _k, _params in [(16, 4, 2.7e6), (16, 8, 11.0e6), (28, 10, 36.5e6), (40, 4, 8.9e6)]:
    _register(_depth, _k, _params)
