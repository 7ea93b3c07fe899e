"""reslab: residual networks, their training on CIFAR, and the experiments that explain them."""

__version__ = "0.1.0"

from reslab.checkpoint import ModelCard, load_model, load_weights, read_checkpoint, save_model
from reslab.complexity import count_macs, count_parameters
from reslab.inference.fold import fold_bn
from reslab.models.layers import (ResidualBlock, StochasticDepth, residual_blocks, set_drop_path_rate,
                                  set_stochastic_depth)
from reslab.registry import create_model, list_models, model_info, register_model

__all__ = [
    "ModelCard", "ResidualBlock", "StochasticDepth", "__version__", "count_macs", "count_parameters",
    "create_model", "fold_bn", "list_models", "load_model", "load_weights", "model_info", "read_checkpoint",
    "register_model", "residual_blocks", "save_model", "set_drop_path_rate", "set_stochastic_depth",
]
