"""Explainers: each a BaseExplainer with fit(X, y) / explain(X) / self_influence() / score(X)."""

from .base import BaseExplainer
from .representer import RepresenterPoints

__all__ = ["BaseExplainer", "RepresenterPoints"]
