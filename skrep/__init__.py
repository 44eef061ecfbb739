"""skrep: explain a trained model's predictions by the training points and neurons behind them.

Every explainer has scikit-learn's estimator shape: ``fit`` on the training set, ``explain``
on test points, ``score`` for model selection. See shared/DESIGN.md for the architecture.
"""

from ._version import __version__
from .adapters import LinearAdapter, TorchAdapter, make_adapter
from .explainers import BaseExplainer, InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn
from .explanation import Explanation

__all__ = [
    "BaseExplainer",
    "Explanation",
    "InfluenceFunctions",
    "LinearAdapter",
    "RepresenterLJE",
    "RepresenterPoints",
    "TorchAdapter",
    "TracIn",
    "__version__",
    "make_adapter",
]
