"""BoostingTracIn: TracIn over boosting rounds, checked against the models' own training.

References independent of skrep's replay: each round's margins from the model's own staged output
(XGBoost ``iteration_range``, sklearn ``staged_decision_function`` / ``staged_predict``), leaf ids from
``pred_leaf`` / ``apply``, a per-tree loop in numpy; the leaf derivative against XGBoost retrained
with one sample weight lowered; mislabel recall on flipped labels.
"""

import numpy as np
import pytest
import xgboost as xgb
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.exceptions import NotFittedError
from torch import nn

from skrep import BoostingTracIn, RepresenterPoints
from tests.tabular import binary, regression, three, with_nan

CASES = {
    "xgb binary": lambda: (xgb.XGBClassifier(n_estimators=15, max_depth=3), *binary()),
    "xgb binary, base_score, NaN": lambda: (
        xgb.XGBClassifier(n_estimators=15, max_depth=3, base_score=0.3, reg_lambda=3.0, learning_rate=0.2),
        with_nan(binary()[0]),
        binary()[1],
    ),
    "xgb 3 classes": lambda: (xgb.XGBClassifier(n_estimators=10, max_depth=3), *three()),
    "xgb regression": lambda: (xgb.XGBRegressor(n_estimators=15, max_depth=3), *regression()),
    "sklearn binary": lambda: (GradientBoostingClassifier(n_estimators=15, max_depth=3), *binary()),
    "sklearn 3 classes": lambda: (GradientBoostingClassifier(n_estimators=10, max_depth=2), *three()),
    "sklearn regression": lambda: (GradientBoostingRegressor(n_estimators=15, max_depth=3), *regression()),
}


def _rule(model):
    """(learning rate, L2 penalty, Hessian scale) as each library documents its leaf step."""
    if isinstance(model, xgb.XGBModel):
        p = model.get_xgb_params()
        eta = 0.3 if p.get("learning_rate") is None else p["learning_rate"]
        lam = 1.0 if p.get("reg_lambda") is None else p["reg_lambda"]
        return eta, lam, 2.0 if len(getattr(model, "classes_", [])) > 2 else 1.0
    k = len(getattr(model, "classes_", []))
    return model.learning_rate, 0.0, k / (k - 1) if k > 2 else 1.0


def _rounds(model, X):
    """Margins before each round (n, R + 1, k) and leaf ids (n, R, k), from the model's own outputs."""
    if isinstance(model, xgb.XGBModel):
        booster = model.get_booster()
        R = booster.num_boosted_rounds()
        k = max(1, booster.predict(xgb.DMatrix(X[:1]), output_margin=True).reshape(1, -1).shape[1])
        zero = xgb.DMatrix(X, base_margin=np.zeros((len(X), k)) if k > 1 else np.zeros(len(X)))
        trees = [np.zeros((len(X), k))] + [
            booster.predict(zero, output_margin=True, iteration_range=(0, r)).reshape(len(X), k)
            for r in range(1, R + 1)
        ]
        base = booster.predict(xgb.DMatrix(X), output_margin=True).reshape(len(X), k) - trees[-1]
        margins = np.stack(trees, 1) + base[:, None, :]
        leaves = booster.predict(xgb.DMatrix(X), pred_leaf=True).reshape(len(X), R, k)
        return margins.astype(np.float64), leaves
    staged = model.staged_decision_function if hasattr(model, "staged_decision_function") else model.staged_predict
    after = np.stack([np.asarray(s, dtype=np.float64).reshape(len(X), -1) for s in staged(X)], 1)
    first = np.stack([model.learning_rate * t.predict(X) for t in model.estimators_[0]], 1)
    margins = np.concatenate([(after[:, 0] - first)[:, None], after], 1)
    return margins, model.apply(X).reshape(len(X), after.shape[1], -1)


def _derivatives(model, margins, y, classification):
    k = margins.shape[2]
    if not classification:
        g = margins - y.reshape(-1, 1, 1)
        return g, np.ones_like(g)
    if k == 1:
        p = 1 / (1 + np.exp(-margins))
        t = y.reshape(-1, 1, 1)
    else:
        p = np.exp(margins - margins.max(2, keepdims=True))
        p /= p.sum(2, keepdims=True)
        t = np.eye(k)[y][:, None, :]
    return p - t, np.maximum(_rule(model)[2] * p * (1 - p), 1e-16)


def _reference(model, X, y, X_test, y_test):
    """Dense (n_test, n_train) TracIn-over-rounds values by a loop over trees, and the model's leaf step check."""
    lr, lam, _ = _rule(model)
    classification = hasattr(model, "classes_")
    m, leaves = _rounds(model, X)
    mt, leaves_t = _rounds(model, X_test)
    g, h = _derivatives(model, m[:, :-1], y, classification)
    gt, _ = _derivatives(model, mt[:, :-1], y_test, classification)
    v = m[:, 1:] - m[:, :-1]  # each sample's leaf value in each round and column
    out = np.zeros((len(X_test), len(X)))
    R, k = leaves.shape[1:]
    for r in range(R):
        for c in range(k):
            ids = leaves[:, r, c]
            for leaf in np.unique(ids):
                rows = ids == leaf
                G, H = g[rows, r, c].sum(), h[rows, r, c].sum()
                np.testing.assert_allclose(v[rows, r, c], -lr * G / (H + lam), rtol=1e-4, atol=1e-6)
                d = (lr * g[rows, r, c] + v[rows, r, c] * h[rows, r, c]) / (H + lam)
                same = leaves_t[:, r, c] == leaf
                out[np.ix_(same, rows)] += gt[same, r, c][:, None] * d[None, :]
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_values_equal_a_loop_over_the_models_own_rounds(case):
    model, X, y = CASES[case]()
    model.fit(X, y)
    X_test, y_test = X[:7], y[::-1][:7]  # labels other than the training ones: the test loss at y_test
    bt = BoostingTracIn(model).fit(X, y)
    assert bt.replay_error_ < 1e-5
    ref = _reference(model, X, y, X_test, y_test)
    E = bt.explain(X_test, y_test)
    np.testing.assert_allclose(E.values, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # self-influence: the diagonal at the training labels
    diag = np.diag(bt.explain(X[:20], y[:20]).values[:, :20])
    np.testing.assert_allclose(bt.self_influence()[:20], diag, rtol=1e-5, atol=1e-7 * np.abs(diag).max())
    # top-k streams the same values
    top = bt.explain(X_test, y_test, top_k=3)
    np.testing.assert_allclose(top.top["pro_value"], -np.sort(-ref, 1)[:, :3], rtol=1e-4, atol=1e-6)


def test_leaf_derivative_matches_retraining_with_a_lowered_weight():
    # the first round's leaves depend on the training rows only through the leaf rule: lowering
    # point i's weight by eps moves its leaf by eps times the derivative (to first order)
    X, y = binary(400, seed=2)
    params = dict(n_estimators=1, max_depth=2, learning_rate=0.5, reg_lambda=2.0, tree_method="exact")
    model = xgb.XGBClassifier(**params).fit(X, y)
    bt = BoostingTracIn(model).fit(X, y)
    d = bt.train_embedding_.b.values.double().numpy()[:, 0]  # (n,) with one tree
    eps = 1e-3
    for i in (0, 5, 17):
        w = np.ones(len(X))
        w[i] -= eps
        # the base margin fixed to the first fit's, so that only the leaves move
        moved = xgb.XGBClassifier(**params, base_score=_base_score(model)).fit(X, y, sample_weight=w)
        dm = xgb.DMatrix(X[i : i + 1])
        before = model.get_booster().predict(dm, output_margin=True)
        delta = moved.get_booster().predict(dm, output_margin=True) - before
        # removing eps of i moves its leaf by -eps * dv/dw = eps * d_i
        np.testing.assert_allclose(delta[0], eps * d[i], rtol=2e-2, atol=1e-7)


def _base_score(model):
    import json

    stated = json.loads(model.get_booster().save_config())["learner"]["learner_model_param"]["base_score"]
    return float(np.ravel(json.loads(stated.replace("E", "e")))[0])


def test_self_influence_finds_flipped_labels_better_than_the_final_leaves():
    X, y = make_classification(3000, 20, n_informative=10, random_state=0)
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y), 300, replace=False)
    y = y.copy()
    y[flipped] = 1 - y[flipped]
    model = xgb.XGBClassifier(n_estimators=100, max_depth=6, random_state=0).fit(X, y)

    def found(scores):
        return np.isin(np.argsort(-scores, kind="stable")[:300], flipped).mean()

    ours = found(BoostingTracIn(model).fit(X, y).self_influence())
    final = found(RepresenterPoints(model, lam=1e-3, refit_on="labels").fit(X, y).self_influence())
    assert ours >= 0.6 and ours > final + 0.05, (ours, final)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: xgb.XGBClassifier(n_estimators=3, subsample=0.5), "subsample=0.5"),
        (lambda: xgb.XGBClassifier(n_estimators=3, max_delta_step=1.0), "max_delta_step=1"),
        (lambda: xgb.XGBClassifier(n_estimators=3, reg_alpha=0.5), "reg_alpha=0.5"),
        (lambda: xgb.XGBClassifier(n_estimators=3, scale_pos_weight=2.0), "scale_pos_weight=2"),
        (lambda: xgb.XGBClassifier(n_estimators=3, num_parallel_tree=2), "num_parallel_tree=2"),
        (lambda: GradientBoostingClassifier(n_estimators=3, subsample=0.7), "subsample=0.7"),
        (lambda: xgb.XGBClassifier(n_estimators=3, booster="dart"), "dart"),
    ],
)
def test_models_whose_rounds_cannot_be_replayed_are_refused(make, match):
    X, y = binary(120)
    with pytest.raises(ValueError, match=match):
        BoostingTracIn(make().fit(X, y)).fit(X, y)


def test_other_training_data_is_refused():
    X, y = binary(200)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=3).fit(X, y)
    with pytest.raises(ValueError, match="exactly the rows and labels"):
        BoostingTracIn(model).fit(X, 1 - y)
    with pytest.raises(ValueError, match="exactly the rows and labels"):
        BoostingTracIn(model).fit(X[:150], y[:150])
    weighted = xgb.XGBClassifier(n_estimators=5, max_depth=3).fit(X, y, sample_weight=np.linspace(0.2, 2, len(y)))
    with pytest.raises(ValueError, match="without sample weights"):
        BoostingTracIn(weighted).fit(X, y)


def test_bad_inputs():
    X, y = binary(150)
    model = xgb.XGBClassifier(n_estimators=5).fit(X, y)
    with pytest.raises(TypeError, match="gradient-boosted tree ensembles"):
        BoostingTracIn(nn.Linear(8, 2)).fit(X, y)
    with pytest.raises(NotFittedError):
        BoostingTracIn(model).explain(X[:3])
    with pytest.raises(NotFittedError):
        BoostingTracIn(model).self_influence()
    with pytest.raises(ValueError, match="replay_tol"):
        BoostingTracIn(model, replay_tol=-1.0).fit(X, y)
    bt = BoostingTracIn(model).fit(X, y)
    with pytest.raises(ValueError, match="features"):
        bt.explain(X[:3, :5])
    with pytest.raises(ValueError, match="one label per test point"):
        bt.explain(X[:3], y[:2])
    assert np.isfinite(bt.explain(with_nan(X)[:5]).values).all()
