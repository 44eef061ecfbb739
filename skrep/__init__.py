"""skrep: explain a trained model's predictions by the training points and neurons behind them.

Every explainer has scikit-learn's estimator shape: ``fit`` on the training set, ``explain``
on test points; representer methods also ``score`` for model selection (influence methods take a
``scoring``). See shared/DESIGN.md for the architecture.
"""

from ._version import __version__
from .adapters import (
    GradientBoostingAdapter,
    LinearAdapter,
    SKLearnMLPAdapter,
    TorchAdapter,
    XGBoostAdapter,
    make_adapter,
)
from .cleaning import CleanLabelsClassifier, LabelCleaner
from .explainers import BaseExplainer, BoostingTracIn, InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn
from .explanation import Explanation
from .neurons import (
    ClassDoI,
    ClassQoI,
    ComparativeQoI,
    GaussianDoI,
    LinearPathDoI,
    NeuronInfluence,
    PointDoI,
    Slice,
)
from .selection import RepresenterSelector

__all__ = [
    "BaseExplainer",
    "BoostingTracIn",
    "ClassDoI",
    "ClassQoI",
    "CleanLabelsClassifier",
    "ComparativeQoI",
    "Explanation",
    "GaussianDoI",
    "GradientBoostingAdapter",
    "InfluenceFunctions",
    "LabelCleaner",
    "LinearAdapter",
    "LinearPathDoI",
    "NeuronInfluence",
    "PointDoI",
    "RepresenterLJE",
    "RepresenterPoints",
    "RepresenterSelector",
    "SKLearnMLPAdapter",
    "Slice",
    "TorchAdapter",
    "TracIn",
    "XGBoostAdapter",
    "__version__",
    "make_adapter",
]
