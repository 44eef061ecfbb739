"""Label cleaning with training-point explanations, as sklearn building blocks.

- :class:`LabelCleaner`: a resampler (``fit_resample``, imbalanced-learn's Pipeline) that drops
  or relabels the training points an explainer finds most suspicious.
- :class:`CleanLabelsClassifier`: a classifier that fits its estimator, explains it, cleans the
  labels and refits, usable in ``Pipeline``, ``cross_val_score`` and ``GridSearchCV``.

How the explainer meets the model. The ``explainer`` parameter is a *template*: an unfitted
explainer whose own parameters (``lam``, ``damping``, ...) are tuned like any nested parameter
(``explainer__lam``). When an ``estimator`` is given, every fit clones the template and sets its
``model`` to the estimator freshly fitted on the data at hand (so the template's ``model`` must
be None); without one, a :class:`LabelCleaner` explains the trained model its explainer already
holds. Cloning an explainer never copies its model (``BaseExplainer.__sklearn_clone__``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.utils import _safe_indexing, check_array
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _num_samples, check_is_fitted, column_or_1d, validate_data

from ._validation import check_choice, check_number
from .explainers import BaseExplainer, InfluenceFunctions

__all__ = ["CleanLabelsClassifier", "LabelCleaner"]

_ACTIONS = ("drop", "relabel")

Scoring = str | Callable[[BaseExplainer, Any, np.ndarray], Any]


class LabelCleaner(BaseEstimator):
    """Drop or relabel the training points that an explainer finds most suspicious.

    Points are ranked by ``scoring`` (by default their self-influence: how much the model leans
    on a point to fit its own label, high for mislabelled points); the top ``fraction`` is
    flagged. ``fit_resample(X, y)`` returns the data without them (``action='drop'``) or with their
    labels replaced by the explained model's prediction (``action='relabel'``), so it is a step
    of imbalanced-learn's ``Pipeline``, applied during fit only.

    Parameters
    ----------
    explainer : BaseExplainer or None, default=None
        An unfitted explainer (never modified: a clone is fitted). Its ``model`` is either the
        trained model to explain, or None when ``estimator`` is given. None:
        ``InfluenceFunctions(None, damping=1e-3)`` (influence through the model's head). With
        ``RepresenterPoints`` pass ``refit_on='labels'``: the default refit imitates the model's
        outputs, so its self-influence hardly sees the labels.
    estimator : estimator or None, default=None
        A model the explainer can explain (e.g. ``LogisticRegression``, ``MLPClassifier``), fitted
        on the data passed to ``fit`` / ``fit_resample``; the fitted copy becomes the
        explainer's model. None: explain the explainer's own model.
    fraction : float in [0, 1), default=0.1
        Share of the points to flag. A class (classification) always keeps at least one point.
    action : {'drop', 'relabel'}, default='drop'
        What happens to flagged points. 'relabel' uses the explained model's prediction, so a
        flagged point that the model predicts with its current label keeps it.
    scoring : 'self_influence' or callable, default='self_influence'
        How suspicious each point is (higher: more). A callable gets
        ``(fitted_explainer, X, y)`` and returns one number per training point.

    Attributes
    ----------
    explainer_ : BaseExplainer
        The fitted explainer.
    scores_ : ndarray of shape (n_samples,)
        Suspicion of each point (higher: more).
    flagged_ : ndarray of bool, shape (n_samples,)
        The points dropped or relabelled.
    sample_indices_ : ndarray of int
        Rows of X that ``fit_resample`` returns (imbalanced-learn's name).
    y_resampled_ : ndarray
        The labels ``fit_resample`` returns.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Column names, where X is a DataFrame.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.linear_model import LogisticRegression
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = X[:300] / 16, y[:300].copy()
    >>> y[:15] = (y[:15] + 1) % 10  # 15 wrong labels
    >>> cleaner = LabelCleaner(estimator=LogisticRegression(max_iter=1000), fraction=0.1)
    >>> X_clean, y_clean = cleaner.fit_resample(X, y)
    >>> X_clean.shape
    (270, 64)
    >>> int(cleaner.flagged_[:15].sum()) >= 10  # most of the 30 flagged are the wrong labels
    True
    """

    def __init__(
        self,
        explainer: BaseExplainer | None = None,
        estimator: Any = None,
        fraction: float = 0.1,
        action: str = "drop",
        scoring: Scoring = "self_influence",
    ):
        self.explainer = explainer
        self.estimator = estimator
        self.fraction = fraction
        self.action = action
        self.scoring = scoring

    def fit(self, X: Any, y: Any) -> LabelCleaner:
        """Explain the model, score and flag the points.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Training inputs, in the layout the model takes.
        y : array-like of shape (n_samples,)
            Training labels.

        Returns
        -------
        self
        """
        _check_cleaning_params(self.fraction, self.action, self.scoring)
        X, y = _check_data(self, X, y)
        cleaned = _clean_once(self.explainer, self.estimator, X, y, self)
        self.explainer_, self.scores_, self.flagged_ = cleaned.explainer, cleaned.scores, cleaned.flagged
        if self.action == "drop":
            self.sample_indices_ = np.flatnonzero(~self.flagged_)
            self.y_resampled_ = y[self.sample_indices_]
        else:
            self.sample_indices_ = np.arange(len(y))
            self.y_resampled_ = cleaned.labels
        return self

    def fit_resample(self, X: Any, y: Any) -> tuple[Any, np.ndarray]:
        """Fit, then return the cleaned data.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,)

        Returns
        -------
        X_resampled : the rows of X that are kept (same container type as X)
        y_resampled : ndarray, their labels after cleaning
        """
        self.fit(X, y)
        return _safe_indexing(X, self.sample_indices_), self.y_resampled_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.input_tags.allow_nan = False
        return tags


def _estimator_has(attr: str) -> Callable[[Any], bool]:
    """Whether the fitted estimator (else the unfitted one) has ``attr``, for ``available_if``."""

    def check(self: Any) -> bool:
        return hasattr(self.estimator_ if hasattr(self, "estimator_") else self.estimator, attr)

    return check


class CleanLabelsClassifier(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """A classifier trained on labels that an explanation of itself has cleaned.

    ``fit`` fits (a clone of) ``estimator``, explains it with a clone of ``explainer`` whose
    model is that fitted estimator, drops or relabels the most suspicious ``fraction`` of the
    training points, and fits a fresh clone on the cleaned data; ``max_rounds > 1`` repeats the
    explain-and-clean step on the cleaned data before the final fit. ``predict``,
    ``predict_proba``, ``decision_function`` and ``score`` are the final estimator's.

    Parameters
    ----------
    estimator : classifier
        A classifier skrep can explain: ``LogisticRegression`` (or ``SGDClassifier(loss='log_loss')``,
        binary), ``MLPClassifier`` (features: the last hidden layer), ``XGBClassifier``, a
        ``Pipeline`` ending in one of the sklearn ones, or skorch's ``NeuralNetClassifier``.
    explainer : BaseExplainer or None, default=None
        Template explainer with ``model=None``, e.g. ``RepresenterPoints(None, lam=1e-3)``. Its
        parameters are tunable as ``explainer__<name>``. None:
        ``InfluenceFunctions(None, damping=1e-3)``, whose exact solver suits heads up to 8,192
        parameters; for a tree ensemble's larger leaf head use e.g.
        ``RepresenterPoints(None, refit_on='labels')`` or ``InfluenceFunctions(None, solver='arnoldi')``.
        ``TracIn`` needs the checkpoints of one particular training run, so it is not a
        template: use it in a :class:`LabelCleaner`.
    fraction : float in [0, 1), default=0.1
        Share of the training points flagged per round (of all points given to ``fit``). 0 fits
        the estimator alone, which makes "no cleaning" one more point of a grid search.
    action : {'drop', 'relabel'}, default='drop'
        Drop flagged points, or give them the label the fitted estimator predicts.
    scoring : 'self_influence' or callable, default='self_influence'
        See :class:`LabelCleaner`.
    max_rounds : int, default=1
        Explain-and-clean rounds before the final fit; stops early when a round changes nothing.

    Attributes
    ----------
    estimator_ : classifier
        The estimator fitted on the cleaned data.
    explainer_ : BaseExplainer or None
        The explainer of the last round (None when ``fraction=0``).
    classes_ : ndarray
    scores_ : ndarray of shape (n_samples,) or None
        Suspicion of each training point in the first round (None when ``fraction=0``).
    flagged_ : ndarray of bool, shape (n_samples,)
        Points dropped or relabelled in any round.
    n_rounds_ : int
        Rounds that changed the data.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Column names, where X is a DataFrame.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skrep import RepresenterPoints
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = CleanLabelsClassifier(
    ...     LogisticRegression(max_iter=1000), RepresenterPoints(None, refit_on="labels"), fraction=0.05
    ... )
    >>> clf.fit(X[:400] / 16, y[:400]).predict(X[400:403] / 16).shape
    (3,)
    >>> clf.get_params()["explainer__lam"]
    0.003
    """

    def __init__(
        self,
        estimator: Any,
        explainer: BaseExplainer | None = None,
        fraction: float = 0.1,
        action: str = "drop",
        scoring: Scoring = "self_influence",
        max_rounds: int = 1,
    ):
        self.estimator = estimator
        self.explainer = explainer
        self.fraction = fraction
        self.action = action
        self.scoring = scoring
        self.max_rounds = max_rounds

    def fit(self, X: Any, y: Any) -> CleanLabelsClassifier:
        """Fit, explain, clean, refit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        _check_cleaning_params(self.fraction, self.action, self.scoring)
        check_number(self.max_rounds, "max_rounds", integer=True)
        if self.estimator is None:
            raise ValueError("estimator is None: pass the classifier to fit, e.g. LogisticRegression().")
        X, y = _check_data(self, X, y)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        keep = np.ones(len(y), dtype=bool)
        labels = y.copy()
        self.flagged_ = np.zeros(len(y), dtype=bool)
        self.explainer_, self.scores_, self.n_rounds_ = None, None, 0
        n_flag = int(round(self.fraction * len(y)))
        for _ in range(self.max_rounds if n_flag else 0):
            rows = np.flatnonzero(keep)
            cleaned = _clean_once(
                self.explainer,
                self.estimator,
                _safe_indexing(X, rows),
                labels[rows],
                self,
                n_flag=n_flag,
                eligible=~self.flagged_[rows],
            )
            self.explainer_ = cleaned.explainer
            if self.scores_ is None:
                self.scores_ = cleaned.scores
            if not cleaned.flagged.any():
                break
            changed = rows[cleaned.flagged]
            self.flagged_[changed] = True
            if self.action == "drop":
                keep[changed] = False
            else:
                labels[changed] = cleaned.labels[cleaned.flagged]
            self.n_rounds_ += 1
        rows = np.flatnonzero(keep)
        self.estimator_ = clone(self.estimator).fit(_safe_indexing(X, rows), labels[rows])
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted class of each sample, by the estimator fitted on the cleaned data."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, (n_samples, n_classes), in the order of ``classes_``."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Log class probabilities, (n_samples, n_classes)."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X: Any) -> np.ndarray:
        """The final estimator's decision function."""
        check_is_fitted(self, "estimator_")
        return self.estimator_.decision_function(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


# ---- shared by LabelCleaner, CleanLabelsClassifier and RepresenterSelector ----------------------------


class _Cleaned:
    """One explain-and-flag step: the fitted explainer, scores, flags and the proposed labels."""

    def __init__(self, explainer: BaseExplainer, scores: np.ndarray, flagged: np.ndarray, labels: np.ndarray):
        self.explainer, self.scores, self.flagged, self.labels = explainer, scores, flagged, labels


def _check_cleaning_params(fraction: Any, action: Any, scoring: Any) -> None:
    check_number(fraction, "fraction", min_val=0, max_val=1, include_boundaries="left")
    check_choice(action, "action", _ACTIONS)
    if not (scoring == "self_influence" or callable(scoring)):
        raise ValueError(
            f"scoring must be 'self_influence' or a callable (explainer, X, y) -> scores; got {scoring!r}."
        )


def _check_data(owner: BaseEstimator, X: Any, y: Any) -> tuple[Any, np.ndarray]:
    """Record the input's width and column names and check the shapes; return X and y.

    A DataFrame is returned as given, since the estimator may need its columns (a Pipeline with
    a ColumnTransformer); other inputs as a checked array. The model validates the values.
    """
    if y is None:
        raise ValueError(
            f"{type(owner).__name__} requires y to be passed, but the target y is None: pass the training labels."
        )
    shape = getattr(X, "shape", None)
    if X is None or (shape is not None and (len(shape) < 2 or shape[0] == 0)):
        raise ValueError(
            f"X must hold one row per sample, at least one; got {'None' if X is None else f'shape {shape}'}. "
            "Pass the training samples (a single feature as X.reshape(-1, 1))."
        )
    if getattr(getattr(X, "dtype", None), "kind", "") == "c":
        raise ValueError("Complex data not supported: X must hold real numbers.")
    validate_data(owner, X, skip_check_array=True)
    # sparse formats that cannot be indexed by row become CSR, and NaN passes: the model says whether it
    # takes them (tree ensembles route NaN, the others refuse it)
    X_checked = check_array(
        X, accept_sparse=("csr", "csc"), dtype=None, allow_nd=True, ensure_all_finite=False, input_name="X"
    )
    values = X_checked.data if sp.issparse(X_checked) else X_checked
    if values.dtype.kind == "f" and np.isinf(values).any():
        raise ValueError("X contains infinity; remove those samples or clip their values first.")
    y = column_or_1d(y, warn=True)
    if _num_samples(X_checked) != len(y):
        raise ValueError(
            f"y has {len(y)} labels but X has {_num_samples(X_checked)} samples; pass one label per sample."
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinity; remove those samples or fill in their labels first.")
    return (X if hasattr(X, "iloc") else X_checked), y


def _template(explainer: BaseExplainer | None) -> BaseExplainer:
    if explainer is None:
        return InfluenceFunctions(None, damping=1e-3)
    if not isinstance(explainer, BaseExplainer):
        raise TypeError(
            f"explainer must be a skrep explainer (RepresenterPoints, RepresenterLJE, InfluenceFunctions, "
            f"TracIn, ...); got {type(explainer).__name__}."
        )
    return explainer


def _fitted_explainer(explainer: BaseExplainer | None, estimator: Any, X: Any, y: np.ndarray) -> BaseExplainer:
    """A clone of the template, fitted on (X, y); with ``estimator``, explaining a fresh fit of it."""
    template = _template(explainer)
    if estimator is not None:
        if template.model is not None:
            raise ValueError(
                f"The explainer already holds a model ({type(template.model).__name__}) and an estimator "
                "was given too: leave the explainer's model None (the estimator fitted here is "
                "explained), or drop estimator= to explain the explainer's model."
            )
        expl = clone(template).set_params(model=clone(estimator).fit(X, y))
    elif template.model is None:
        raise ValueError(
            "There is no model to explain: pass estimator= (fitted on the data here) or an explainer "
            "holding a trained model, e.g. InfluenceFunctions(model)."
        )
    else:
        expl = clone(template)
    return expl.fit(X, y)


def _suspicion(explainer: BaseExplainer, X: Any, y: np.ndarray, scoring: Scoring) -> np.ndarray:
    if scoring == "self_influence":
        scores = explainer.self_influence()
    else:
        assert callable(scoring)
        scores = np.asarray(scoring(explainer, X, y), dtype=np.float64)
    if scores.shape != (len(y),) or not np.all(np.isfinite(scores)):
        raise ValueError(
            f"scoring must give one finite number per training point ({len(y)}); got shape {scores.shape}."
        )
    return scores


def _model_labels(explainer: BaseExplainer, X: Any) -> np.ndarray:
    """The explained model's prediction, as labels (the targets themselves for regression)."""
    adapter = explainer.adapter_
    logits = adapter.logits(X)
    if not adapter.loss.is_classification:
        return logits.double().numpy().reshape(len(logits), -1).squeeze(1)
    index = adapter.loss.predict(logits).numpy()
    return index if adapter.classes_ is None else np.asarray(adapter.classes_)[index]


def _top(scores: np.ndarray, n_top: int, groups: np.ndarray | None, eligible: np.ndarray) -> np.ndarray:
    """Mask of the ``n_top`` highest-scoring eligible points, leaving every group at least one point.

    Ties keep the earlier point first (a stable order).
    """
    chosen = np.zeros(len(scores), dtype=bool)
    order = np.flatnonzero(eligible)[np.argsort(-scores[eligible], kind="stable")]
    if groups is None:
        chosen[order[:n_top]] = True
        return chosen
    codes = np.unique(groups, return_inverse=True)[1]
    room = np.bincount(codes) - 1  # points each group can lose
    for i in order:
        if n_top == 0:
            break
        if room[codes[i]] > 0:
            chosen[i] = True
            room[codes[i]] -= 1
            n_top -= 1
    return chosen


def _clean_once(
    explainer: BaseExplainer | None,
    estimator: Any,
    X: Any,
    y: np.ndarray,
    owner: Any,
    n_flag: int | None = None,
    eligible: np.ndarray | None = None,
) -> _Cleaned:
    """Explain, score and flag the top points; for 'relabel', the labels the model proposes."""
    expl = _fitted_explainer(explainer, estimator, X, y)
    scores = _suspicion(expl, X, y, owner.scoring)
    if n_flag is None:
        n_flag = int(round(owner.fraction * len(y)))
    if eligible is None:
        eligible = np.ones(len(y), dtype=bool)
    groups = y if expl.adapter_.loss.is_classification else None
    flagged = _top(scores, n_flag, groups, eligible)
    labels = y.copy()
    if owner.action == "relabel" and flagged.any():
        rows = np.flatnonzero(flagged)
        predicted = _model_labels(expl, _safe_indexing(X, rows))
        labels = labels.astype(np.result_type(labels, predicted))
        labels[rows] = predicted
    return _Cleaned(expl, scores, flagged, labels)
