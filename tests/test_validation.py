"""Bad input gets an sklearn-style error that says what to do, never a torch traceback or a NaN."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from skrep import Explanation, RepresenterPoints


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = rng.integers(0, 3, 60)
    return net, X, y


def test_explain_before_fit(small):
    net, X, _ = small
    with pytest.raises(NotFittedError, match="fit"):
        RepresenterPoints(net).explain(X)
    with pytest.raises(NotFittedError):
        RepresenterPoints(net).self_influence()


def test_mismatched_feature_count(small):
    net, X, y = small
    rps = RepresenterPoints(net).fit(X, y)
    with pytest.raises(ValueError, match="shape"):
        rps.explain(X[:, :4])
    with pytest.raises(ValueError, match="could not be applied"):
        RepresenterPoints(net).fit(X[:, :4], y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_are_refused(small, bad):
    net, X, y = small
    Xb = X.copy()
    Xb[3, 2] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        RepresenterPoints(net).fit(Xb, y)
    rps = RepresenterPoints(net).fit(X, y)
    with pytest.raises(ValueError, match="NaN or infinity"):
        rps.explain(Xb)


def test_y_of_wrong_length_or_unknown_labels(small):
    net, X, y = small
    with pytest.raises(ValueError, match="one label per training sample"):
        RepresenterPoints(net).fit(X, y[:-1])
    with pytest.raises(ValueError, match="does not know: 7"):
        RepresenterPoints(net).fit(X, np.where(y == 0, 7, y))
    with pytest.raises(ValueError, match="needs y"):
        RepresenterPoints(net).fit(X)


def test_model_without_final_linear():
    net = nn.Sequential(nn.Linear(5, 3), nn.Tanh())
    with pytest.raises(ValueError, match="not produced by an nn.Linear"):
        RepresenterPoints(net).fit(np.zeros((4, 5), np.float32), [0, 1, 2, 0])
    with pytest.raises(TypeError, match="cannot explain"):
        RepresenterPoints(object()).fit(np.zeros((4, 5)), [0, 1, 2, 0])


@pytest.mark.parametrize(
    "param,value",
    [
        ("lam", 0),
        ("lam", -1.0),
        ("lam", "big"),
        ("max_iter", 0),
        ("refit_on", "both"),
        ("batch_size", 0),
        ("tol", 0.0),
        ("device", "tpu"),
    ],
)
def test_bad_parameters_are_named(small, param, value):
    net, X, y = small
    with pytest.raises((ValueError, TypeError), match=param):
        RepresenterPoints(net, **{param: value}).fit(X, y)


def test_bad_top_k_and_target(small):
    net, X, y = small
    rps = RepresenterPoints(net).fit(X, y)
    for k in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            rps.explain(X[:2], top_k=k)
    with pytest.raises(ValueError, match="does not know"):
        rps.explain(X[:2], target=5)
    with pytest.raises(ValueError, match="one per test point"):
        rps.explain(X[:2], target=[0, 1, 2])


def test_bad_dtypes(small):
    net, X, y = small
    with pytest.raises(TypeError, match="numeric"):
        RepresenterPoints(net).fit(X.astype(object), y)
    with pytest.raises(TypeError, match="numeric"):
        RepresenterPoints(net).fit(X > 0, y)
    with pytest.raises(ValueError, match="at least one sample"):
        RepresenterPoints(net).fit(X[:0], y[:0])


def test_dense_refused_with_advice(small):
    net, X, y = small
    rps = RepresenterPoints(net, max_dense_bytes=100).fit(X, y)
    with pytest.raises(ValueError, match="top_k"):
        rps.explain(X)
    assert rps.explain(X, top_k=2).k == 2


def test_explanation_checks_k():
    e = Explanation(
        top={
            "pro_index": np.zeros((1, 2), int),
            "pro_value": np.ones((1, 2)),
            "opp_index": np.zeros((1, 2), int),
            "opp_value": -np.ones((1, 2)),
        },
        n_train=5,
        target=np.array([0]),
    )
    with pytest.raises(ValueError, match="top_k=3"):
        e.proponents(3)
    with pytest.raises(ValueError, match="positive integer"):
        e.opponents(0)


def test_clone_keeps_the_model_object_and_params(small):
    net, X, y = small
    rps = RepresenterPoints(net, lam=0.1)
    c = clone(rps)
    assert c.model is net and c.lam == 0.1
    fitted = clone(rps).fit(X, y)
    assert clone(fitted).model is net and not hasattr(clone(fitted), "alpha_")


def test_failed_refit_leaves_previous_state(small):
    net, X, y = small
    rps = RepresenterPoints(net).fit(X, y)
    before = rps.explain(X[:3]).values
    other = nn.Sequential(nn.Linear(5, 3))
    rps.set_params(model=other)
    with pytest.raises(ValueError):
        rps.fit(X, y[:-1])
    assert rps.adapter_.module is net
    np.testing.assert_array_equal(rps.explain(X[:3]).values, before)


def test_shuffling_dataloader_is_refused(small):
    from torch.utils.data import DataLoader, TensorDataset

    net, X, y = small
    loader = DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(y)), batch_size=8, shuffle=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        RepresenterPoints(net).fit(loader)


def test_y_given_to_explain_is_checked(small):
    net, X, y = small
    rps = RepresenterPoints(net).fit(X, y)
    with pytest.raises(ValueError, match="keyword"):
        rps.explain(X[:4], 5)


def test_explanation_reports_class_labels():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = np.where(X[:, 0] > 0, "cat", "dog")
    E = RepresenterPoints(LogisticRegression().fit(X, y)).fit(X, y).explain(X[:4])
    assert set(E.target) <= {"cat", "dog"}


def test_regression_labels_must_match_outputs():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    Y = X @ rng.normal(size=(3, 2))
    model = Ridge().fit(X, Y)
    with pytest.raises(ValueError, match="2 outputs"):
        RepresenterPoints(model).fit(X, Y[:, 0])
    rps = RepresenterPoints(model, target=1).fit(X, Y)
    single = RepresenterPoints(Ridge().fit(X, Y[:, 0])).fit(X, Y[:, 0])
    assert np.isfinite(single.score(X)) and single.score(X) > 0.99
    assert np.isfinite(rps.explain(X[:3]).values).all()
