"""Training on CIFAR: named recipes of the papers and a fast CPU recipe, stepped per
iteration, resumable bit-exactly, distributed with torchrun; extensions through a small hook
interface (:mod:`reslab.train.extensions`; docs/training.md).

    from reslab.train import TrainConfig, train
    config = TrainConfig.from_recipe("fast", model="resnet20", data="cifar10", out="runs/r20")
    result = train(config)            # result["test_error"]: the final epoch's test error, single view
    init_from(model, "resnet18.pth")  # fine-tuning: trained weights into a model, a new classifier if needed
"""

from reslab.train.config import RECIPES, TrainConfig
from reslab.train.extensions import Extension
from reslab.train.init import InitReport, init_from
from reslab.train.schedules import LowLrStart, Schedule
from reslab.train.seeds import train_seeds
from reslab.train.trainer import TrainingInterrupted, train

__all__ = ["RECIPES", "Extension", "InitReport", "LowLrStart", "Schedule", "TrainConfig", "TrainingInterrupted",
           "init_from", "train", "train_seeds"]
