"""Explainers: each a BaseExplainer with fit(X, y) / explain(X) / self_influence() / score(X)."""

from .base import BaseExplainer
from .boosting_tracin import BoostingTracIn
from .influence import InfluenceFunctions
from .lje import RepresenterLJE
from .representer import RepresenterPoints
from .tracin import TracIn

__all__ = ["BaseExplainer", "BoostingTracIn", "InfluenceFunctions", "RepresenterLJE", "RepresenterPoints", "TracIn"]
