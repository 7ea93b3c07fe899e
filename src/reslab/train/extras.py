"""Moved: the training extras are extensions now (:mod:`reslab.train.extensions`) and the
test-time views belong to evaluation (:mod:`reslab.inference.views`). Kept so that imports
written for earlier releases keep working."""

from reslab.inference.views import check_tta_translate, tta_logits, views_label
from reslab.train.extensions import ModelEma, mix_batch, mixed_loss

__all__ = ["ModelEma", "check_tta_translate", "mix_batch", "mixed_loss", "tta_logits", "views_label"]
