"""torch.hub entry points: every model of reslab's zoo by its registered name.

    model = torch.hub.load("/path/to/reslab", "resnet56", source="local")
    model = torch.hub.load("/path/to/reslab", "resnet20", pretrained=True, source="local")

Each entry is ``reslab.create_model(name, pretrained=..., **kwargs)``: the same options
(``num_classes``, ``global_pool``, ``drop_path_rate``, ``features_only``...), and the weights of
:mod:`reslab.pretrained`. The checkout's own ``src/`` comes first on the import path, so the code
loaded is the code of the folder given.
"""

import sys
from pathlib import Path

dependencies = ["torch", "safetensors"]

_SOURCE = str(Path(__file__).resolve().parent / "src")
if _SOURCE not in sys.path:
    sys.path.insert(0, _SOURCE)

from reslab.registry import create_model as _create_model  # noqa: E402
from reslab.registry import list_models as _list_models  # noqa: E402
from reslab.registry import model_info as _model_info  # noqa: E402


def _entry(name: str):
    def build(pretrained: bool = False, **kwargs):
        return _create_model(name, pretrained=pretrained, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{_model_info(name).description}\n\n"
                     f"reslab.create_model({name!r}, pretrained=..., **kwargs); see docs/model-api.md.")
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
