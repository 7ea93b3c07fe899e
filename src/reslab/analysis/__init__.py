"""The experiments that explain residual networks, each a function and a ``reslab`` command.

* :mod:`~reslab.analysis.evaluate`: accuracy, per-class accuracy, confusion matrix (``reslab eval``).
* :mod:`~reslab.analysis.lesion`: deleting and reordering blocks at test time (Veit et al. 2016, Fig. 3, 5).
* :mod:`~reslab.analysis.paths`: path lengths and the gradient they carry (Veit et al. 2016, Fig. 6).
* :mod:`~reslab.analysis.responses`: std of the residual responses (He et al. 2015, Fig. 7).
* :mod:`~reslab.analysis.degradation`: plain vs residual nets of two depths (He et al. 2015, Fig. 1, 6).
* :mod:`~reslab.analysis.sdepth`: stochastic depth's gradients, depth and time (Huang et al. 2016, Fig. 8).
* :mod:`~reslab.analysis.report`: every figure and table of a results folder on one page.

Analyses reach blocks only through :class:`~reslab.models.layers.ResidualBlock`'s attributes
(``branch_enabled``, ``gradient_route``, ``drop_path``) and by walking the model, so they work on
every residual model of the zoo. Each writes PNG figures and a JSON table into a folder.
"""

from reslab.analysis.degradation import degradation_experiment, degradation_verdict
from reslab.analysis.evaluate import Evaluation, accuracy, confusion_matrix, eval_batches, evaluate
from reslab.analysis.lesion import find_units, lesion_study, lesioned, reordered
from reslab.analysis.paths import path_counts, path_study, smallest_window
from reslab.analysis.report import build_report
from reslab.analysis.responses import response_stds, responses_study
from reslab.analysis.sdepth import DepthProbe, sdepth_experiment

__all__ = [
    "DepthProbe", "Evaluation", "accuracy", "build_report", "confusion_matrix", "degradation_experiment",
    "degradation_verdict", "eval_batches", "evaluate", "find_units", "lesion_study", "lesioned", "path_counts",
    "path_study", "reordered", "response_stds", "responses_study", "sdepth_experiment", "smallest_window",
]
