"""RepresenterSelector against the dense value matrix, and as a prototype / coreset selector."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import skrep.selection
from skrep import InfluenceFunctions, RepresenterPoints
from skrep.demo import load_digits_data
from skrep.selection import RepresenterSelector, _stratified_top

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def noisy_digits():
    d = load_digits_data(0.1, random_state=0)
    return d.X_train[:600], d.y_train[:600], d.flipped[:600], d.X_test, d.y_test


def _logreg():
    return LogisticRegression(max_iter=2000)


def test_proponent_scores_are_net_column_sums(noisy_digits, monkeypatch):
    X, y, *_ = noisy_digits
    monkeypatch.setattr(skrep.selection, "_BLOCK_VALUES", 600 * 70)  # 9 blocks of 70 rows
    selector = RepresenterSelector(RepresenterPoints(None), estimator=_logreg(), n_points=50).fit(X, y)
    V = RepresenterPoints(_logreg().fit(X, y)).fit(X, y).explain(X).values.astype(np.float64)
    np.fill_diagonal(V, 0.0)
    np.testing.assert_allclose(selector.scores_, V.sum(0), rtol=1e-5, atol=1e-8 * np.abs(V).sum(0).max())
    # per class, the best-scoring points of that class
    chosen = selector.sample_indices_
    assert len(chosen) == 50 and len(set(chosen)) == 50
    for c in range(10):
        members = np.flatnonzero(y == c)
        mine = np.intersect1d(chosen, members)
        assert set(mine) == set(members[np.argsort(-selector.scores_[members])[: len(mine)]])


def test_prototypes_avoid_wrong_labels_and_make_a_better_coreset(noisy_digits):
    X, y, wrong, X_test, y_test = noisy_digits
    explainer = InfluenceFunctions(None, damping=1e-3)
    protos = RepresenterSelector(explainer, estimator=_logreg(), n_points=60)
    X_p, y_p = protos.fit_resample(X, y)
    np.testing.assert_array_equal(X_p, X[protos.sample_indices_])
    suspicious = RepresenterSelector(explainer, estimator=_logreg(), n_points=60, strategy="self_influence").fit(X, y)
    # a tenth of the labels are wrong: the prototypes hold fewer, the most suspicious points mostly wrong ones
    assert wrong[protos.sample_indices_].sum() <= 2
    assert wrong[suspicious.sample_indices_].mean() > 0.5
    # each class's share is its size / 10, rounded one way or the other
    assert np.abs(np.bincount(y_p, minlength=10) - np.bincount(y, minlength=10) / 10).max() < 1
    # a model trained on the 60 prototypes beats one trained on 60 random points (6 per class)
    rng = np.random.default_rng(0)
    random_acc = []
    for _ in range(5):
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), 6, replace=False) for c in range(10)])
        random_acc.append(_logreg().fit(X[idx], y[idx]).score(X_test, y_test))
    assert _logreg().fit(X_p, y_p).score(X_test, y_test) > max(random_acc)


def test_stratified_shares_by_hand():
    groups = np.array([0] * 6 + [1] * 3 + [2] * 1)
    scores = np.arange(10.0)
    # quotas 3, 1.5, 0.5 -> 3, 1, then class 2 gets its one point
    picked = _stratified_top(scores, groups, 5)
    np.testing.assert_array_equal(np.sort(picked), [3, 4, 5, 8, 9])
    # quotas 1.2, 0.6, 0.2: fewer points than classes, by largest remainder -> one each for classes 0, 1
    np.testing.assert_array_equal(np.sort(_stratified_top(scores, groups, 2)), [5, 8])
    # every class is full: all points
    assert len(_stratified_top(scores, groups, 10)) == 10


def test_unstratified_and_counts(noisy_digits):
    X, y, *_ = noisy_digits
    sel = RepresenterSelector(
        InfluenceFunctions(None, damping=1e-3), estimator=_logreg(), n_points=0.05, strategy="self_influence"
    )
    sel.set_params(stratify=False).fit(X, y)
    np.testing.assert_array_equal(np.sort(sel.sample_indices_), np.sort(np.argsort(-sel.scores_)[:30]))
    with pytest.raises(ValueError, match="n_points=601 is more than the 600 training points"):
        RepresenterSelector(estimator=_logreg(), n_points=601).fit(X, y)
    with pytest.raises(ValueError, match="n_points == 0"):
        RepresenterSelector(estimator=_logreg(), n_points=0.0).fit(X, y)
    with pytest.raises(ValueError, match="strategy must be one of"):
        RepresenterSelector(estimator=_logreg(), strategy="best").fit(X, y)


def test_in_an_imblearn_pipeline(noisy_digits):
    imblearn_pipeline = pytest.importorskip("imblearn.pipeline")
    X, y, *_ = noisy_digits
    pipe = imblearn_pipeline.Pipeline(
        [
            ("select", RepresenterSelector(RepresenterPoints(None), estimator=_logreg(), n_points=100)),
            ("clf", _logreg()),
        ]
    ).fit(X, y)
    rows = pipe[0].sample_indices_
    reference = _logreg().fit(X[rows], y[rows])
    np.testing.assert_allclose(pipe[-1].coef_, reference.coef_, rtol=1e-6, atol=1e-8)
