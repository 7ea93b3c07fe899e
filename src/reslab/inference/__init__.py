"""Using a trained model: predict on image files, fold BN, export (ONNX, TorchScript,
torchvision/timm state dicts), load torchvision and timm weights, and benchmark speed.

One module per job: :mod:`~reslab.inference.preprocess` (images to tensors),
:mod:`~reslab.inference.predict` (top-k classes), :mod:`~reslab.inference.fold` (BN folding),
:mod:`~reslab.inference.export` (ONNX, TorchScript), :mod:`~reslab.inference.interop`
(torchvision/timm weights) and :mod:`~reslab.inference.bench` (speed and memory).
"""

from reslab.inference.fold import fold_bn
from reslab.inference.interop import export_state_dict, load_timm_state_dict, load_torchvision_state_dict
from reslab.inference.predict import Prediction, Predictor, predict_images
from reslab.inference.preprocess import Preprocess, find_images, load_image

__all__ = [
    "Prediction", "Predictor", "Preprocess", "export_state_dict", "find_images", "fold_bn", "load_image",
    "load_timm_state_dict", "load_torchvision_state_dict", "predict_images",
]
