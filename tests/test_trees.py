"""Tree ensembles: exact leaf heads for XGBoost and sklearn gradient boosting, and every head method on them.

The references are the models' own outputs (predict(output_margin=True), decision_function) and the
same explainers run on the leaf indicators as a *dense* matrix, which exercises none of the sparse code.
"""

import json
import warnings

import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
)

from skrep import InfluenceFunctions, RepresenterLJE, RepresenterPoints
from skrep.adapters import GradientBoostingAdapter, XGBoostAdapter, make_adapter
from skrep.kernels.leaves import LeafMatrix, to_dense
from tests.tabular import binary, regression, three, with_nan


def _assert_reconstructs(model, X, reference):
    adapter = make_adapter(model)
    phi, margin = adapter.forward(X)
    assert isinstance(phi, LeafMatrix)
    recon = (phi.double() @ adapter.weight + adapter.bias).numpy()
    ref = np.asarray(reference, dtype=np.float64).reshape(len(X), -1)
    np.testing.assert_allclose(recon, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    np.testing.assert_allclose(margin.numpy(), ref, atol=1e-6 * max(1.0, np.abs(ref).max()))
    return adapter


XGB_CASES = {
    "binary, estimated base": lambda: (xgb.XGBClassifier(n_estimators=40, max_depth=4), *binary()),
    "binary, base_score set": lambda: (xgb.XGBClassifier(n_estimators=40, max_depth=4, base_score=0.3), *binary()),
    "binary, the pre-2.0 default 0.5": lambda: (xgb.XGBClassifier(n_estimators=40, base_score=0.5), *binary()),
    "binary, NaN in X": lambda: (
        xgb.XGBClassifier(n_estimators=40, max_depth=4),
        with_nan(binary()[0]),
        binary()[1],
    ),
    "binary logitraw": lambda: (xgb.XGBClassifier(n_estimators=20, objective="binary:logitraw"), *binary()),
    "3 classes": lambda: (xgb.XGBClassifier(n_estimators=30, max_depth=4), *three()),
    "3 classes, softmax, NaN": lambda: (
        xgb.XGBClassifier(n_estimators=30, max_depth=4, objective="multi:softmax"),
        with_nan(three()[0]),
        three()[1],
    ),
    "regression, estimated base": lambda: (xgb.XGBRegressor(n_estimators=40, max_depth=4), *regression()),
    "regression, base_score set": lambda: (xgb.XGBRegressor(n_estimators=40, base_score=7.0), *regression()),
    "300 trees of depth 6": lambda: (xgb.XGBClassifier(n_estimators=300, max_depth=6), *binary(600)),
    "random forest in each round": lambda: (xgb.XGBRegressor(n_estimators=5, num_parallel_tree=4), *regression()),
}


@pytest.mark.parametrize("case", list(XGB_CASES))
def test_xgboost_head_reproduces_the_margin(case):
    model, X, y = XGB_CASES[case]()
    model.fit(X, y)
    adapter = _assert_reconstructs(model, X, model.predict(X, output_margin=True))
    trees = json.loads(model.get_booster().save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    assert adapter.n_trees_ == len(trees)


def test_xgboost_base_margin_is_read_not_assumed():
    X, y = regression()
    model = xgb.XGBRegressor(n_estimators=3).fit(X, y)
    assert abs(float(XGBoostAdapter(model).bias[0]) - float(np.mean(y))) < 5.0  # estimated near the mean, not 0


def test_xgboost_booster_and_early_stopping():
    X, y = binary(400)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(X, y), num_boost_round=25)
    _assert_reconstructs(booster, X, booster.predict(xgb.DMatrix(X), output_margin=True))
    model = xgb.XGBClassifier(n_estimators=200, max_depth=3, early_stopping_rounds=3, learning_rate=0.5)
    model.fit(X[:300], y[:300], eval_set=[(X[300:], y[300:])], verbose=False)
    assert model.best_iteration + 1 < 200
    adapter = _assert_reconstructs(model, X, model.predict(X, output_margin=True))
    assert adapter.n_trees_ == model.best_iteration + 1


GB_CASES = {
    "binary": lambda: (GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0), *binary()),
    "3 classes": lambda: (GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0), *three()),
    "regression": lambda: (GradientBoostingRegressor(n_estimators=30, random_state=0), *regression()),
    "regression, init zero": lambda: (GradientBoostingRegressor(n_estimators=30, init="zero"), *regression()),
}


@pytest.mark.parametrize("case", list(GB_CASES))
def test_gradient_boosting_head_reproduces_the_output(case):
    model, X, y = GB_CASES[case]()
    model.fit(X, y)
    ref = model.predict(X) if isinstance(model, GradientBoostingRegressor) else model.decision_function(X)
    adapter = _assert_reconstructs(model, X, ref)
    assert isinstance(adapter, GradientBoostingAdapter)


class DenseLeaves:
    """The same head with the leaf indicators as a dense tensor: a reference that skips the sparse code."""

    def __init__(self, adapter):
        self.a = adapter
        for name in ("weight", "bias", "has_bias", "mask", "loss", "classes_"):
            setattr(self, name, getattr(adapter, name))
        self.dtype = torch.float64

    def forward(self, X, return_labels=False):
        phi, out = self.a.forward(X)
        phi = to_dense(phi).double()
        return (phi, out, None) if return_labels else (phi, out)

    def features(self, X):
        return self.forward(X)[0]

    def logits(self, X):
        return self.forward(X)[1]

    def penalty_l2(self, n):
        return self.a.penalty_l2(n)


# each sparse method, and the dense-feature reference it must equal (solved another way where it can be)
EXPLAINERS = {
    "rps": (lambda m: RepresenterPoints(m, lam=1e-3), lambda m: RepresenterPoints(m, lam=1e-3)),
    "lje-cg": (
        lambda m: RepresenterLJE(m, solver="cg", damping=1e-3, cg_tol=1e-10),
        lambda m: RepresenterLJE(m, solver="explicit", damping=1e-3),
    ),
    "lje-explicit": (
        lambda m: RepresenterLJE(m, solver="explicit"),
        lambda m: RepresenterLJE(m, solver="explicit"),
    ),
    "if-cg": (
        lambda m: InfluenceFunctions(m, solver="cg", damping=1e-3, cg_tol=1e-10),
        lambda m: InfluenceFunctions(m, solver="exact", damping=1e-3),
    ),
}


@pytest.mark.parametrize("kind", ["binary", "3 classes", "regression"])
@pytest.mark.parametrize("method", list(EXPLAINERS))
def test_sparse_leaf_path_equals_dense_features(kind, method):
    X, y = {"binary": binary, "3 classes": three, "regression": regression}[kind](200)
    model = (xgb.XGBRegressor if kind == "regression" else xgb.XGBClassifier)(n_estimators=15, max_depth=3).fit(X, y)
    make_sparse, make_dense = EXPLAINERS[method]
    sparse = make_sparse(model).fit(X, y)
    dense = make_dense(DenseLeaves(XGBoostAdapter(model))).fit(X, y)
    Xt, yt = X[:7], y[:7]
    a, b = sparse.explain(Xt, yt), dense.explain(Xt, yt)
    scale = np.abs(b.values).max()
    np.testing.assert_allclose(a.values, b.values, atol=1e-5 * scale)
    np.testing.assert_allclose(sparse.self_influence(), dense.self_influence(), atol=1e-5 * scale, rtol=1e-4)
    if b.reconstruction is not None:
        np.testing.assert_allclose(a.reconstruction, b.reconstruction, atol=1e-5 * np.abs(b.output).max())


def test_rps_on_xgboost_is_the_refit_head():
    X, y = three(250)
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(X, y)
    rps = RepresenterPoints(model, lam=1e-3).fit(X, y)
    E = rps.explain(X[:10])
    f = to_dense(make_adapter(model).features(X[:10])).double()
    refit_logits = torch.cat([f, torch.ones(10, 1, dtype=torch.float64)], 1) @ rps.head_
    chosen = refit_logits.numpy()[np.arange(10), E.target]
    np.testing.assert_allclose(E.values.sum(1), chosen, atol=1e-6 * np.abs(chosen).max())
    assert rps.score(X) > 0.99


def test_lje_fidelity_on_xgboost_binary():
    # LJE's values add up to the margin as far as the ensemble is a stationary point of its
    # training loss: a boosted model trained to convergence is, an early-stopped one less so
    X, y = binary(600, seed=3)
    model = xgb.XGBClassifier(n_estimators=100, max_depth=4, learning_rate=0.3).fit(X, y)
    lje = RepresenterLJE(model).fit(X, y)
    assert lje.solver_ == "explicit" and lje.l2_ == 0.0
    E = lje.explain(X[:100])
    r = np.corrcoef(E.reconstruction, E.output)[0, 1]
    assert r >= 0.99, r


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda X, y: xgb.XGBClassifier(n_estimators=3, booster="dart").fit(X, y), "dart"),
        (lambda X, y: xgb.XGBClassifier(n_estimators=3, booster="gblinear").fit(X, y), "gblinear"),
        (lambda X, y: xgb.XGBRegressor(n_estimators=3, objective="count:poisson").fit(X, np.abs(y)), "count:poisson"),
        (lambda X, y: xgb.XGBClassifier(n_estimators=3), "not fitted"),
        (lambda X, y: GradientBoostingClassifier(n_estimators=3, loss="exponential").fit(X, y), "exponential"),
        (lambda X, y: HistGradientBoostingClassifier(max_iter=3).fit(X, y), "HistGradientBoosting"),
    ],
)
def test_unsupported_models_are_refused_by_name(make, match):
    X, y = binary(100)
    with pytest.raises((ValueError, TypeError), match=match):
        RepresenterPoints(make(X, y)).fit(X, y)


def test_bad_inputs_to_tree_explainers():
    X, y = binary(150)
    model = xgb.XGBClassifier(n_estimators=5).fit(X, y)
    rps = RepresenterPoints(model).fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        rps.explain(X[:, :5])
    with pytest.raises(ValueError, match="features"):
        RepresenterPoints(model).fit(X[:, :5], y)
    with pytest.raises(ValueError, match="labels the model does not know"):
        RepresenterPoints(model).fit(X, np.where(y == 1, "yes", "no"))
    with pytest.raises(ValueError, match="infinity"):
        rps.explain(np.where(X > 2.0, np.inf, X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(rps.explain(with_nan(X)[:5]).values).all()  # NaN is valid input for trees


def test_lje_refuses_a_singular_tree_hessian_for_cg():
    X, y = binary(150)
    model = xgb.XGBClassifier(n_estimators=5).fit(X, y)
    with pytest.raises(ValueError, match="damping"):
        RepresenterLJE(model, solver="cg").fit(X, y)
    assert RepresenterLJE(model, solver="cg", damping=1e-4).fit(X, y).score(X) > 0.9
