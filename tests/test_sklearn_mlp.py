"""SKLearnMLPAdapter against an independent numpy forward pass and sklearn's own objective."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris, make_classification
from sklearn.exceptions import NotFittedError
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from skrep import RepresenterLJE
from skrep.adapters import SKLearnMLPAdapter, make_adapter


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small models: BLAS's thread pool costs more than it gives on a shared 2-core machine
    with threadpool_limits(1):
        yield


_ACT = {
    "relu": lambda a: np.maximum(a, 0),
    "tanh": np.tanh,
    "logistic": lambda a: 1 / (1 + np.exp(-a)),
    "identity": lambda a: a,
}


def _numpy_forward(mlp, X):
    """Last hidden layer and pre-activation output, written out from the documented attributes."""
    a = np.asarray(X, dtype=np.float64)
    for W, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1], strict=True):
        a = _ACT[mlp.activation](a @ W + b)
    return a, a @ mlp.coefs_[-1] + mlp.intercepts_[-1]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_reconstruction_equals_model_output(activation, n_classes):
    X, y = make_classification(120, 6, n_informative=4, n_classes=n_classes, random_state=0)
    mlp = MLPClassifier((7, 5), activation=activation, max_iter=60, random_state=0).fit(X, y)
    adapter = make_adapter(mlp)
    assert isinstance(adapter, SKLearnMLPAdapter)
    phi, logits = adapter.forward(X)
    phi_np, out_np = _numpy_forward(mlp, X)
    np.testing.assert_allclose(phi.numpy(), phi_np, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(logits.numpy(), out_np, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose((adapter.features(X) @ adapter.weight + adapter.bias).numpy(), logits.numpy())
    proba = mlp.predict_proba(X)
    if n_classes == 2:
        assert adapter.loss.name == "logistic" and logits.shape == (120, 1)
        np.testing.assert_allclose(torch.sigmoid(logits[:, 0]).numpy(), proba[:, 1], atol=1e-6)
    else:
        assert adapter.loss.name == "softmax" and logits.shape == (120, 3)
        np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), proba, atol=1e-6)
    np.testing.assert_array_equal(adapter.classes_, mlp.classes_)


def test_pipeline_and_string_labels():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    pipe = make_pipeline(StandardScaler(), MLPClassifier((6,), max_iter=2000, random_state=0)).fit(X, names)
    adapter = make_adapter(pipe)
    _, out_np = _numpy_forward(pipe[-1], pipe[0].transform(X))
    np.testing.assert_allclose(adapter.logits(X).numpy(), out_np, rtol=1e-6)
    np.testing.assert_array_equal(adapter.classes_, ["setosa", "versicolor", "virginica"])


def _last_layer_gradient(mlp, X, y, l2):
    """d/dW_last of mean cross-entropy + l2/2 ||W_last||^2, in numpy."""
    phi, z = _numpy_forward(mlp, X)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(p.shape[1])[np.searchsorted(mlp.classes_, y)]
    return phi.T @ (p - onehot) / len(X) + l2 * mlp.coefs_[-1]


@pytest.fixture(scope="module")
def converged():
    """An MLP at a minimum of sklearn's objective, with a penalty strong enough to matter."""
    X, y = make_classification(150, 5, n_informative=4, n_redundant=0, n_classes=3, random_state=1)
    mlp = MLPClassifier((6,), alpha=1.0, solver="lbfgs", tol=1e-12, max_iter=1000, random_state=0).fit(X, y)
    return mlp, X, y


def test_penalty_is_sklearns_objective(converged):
    # at the minimum the last layer's gradient vanishes with l2 = alpha / n, and not with l2 = alpha
    # (the scaling a reader of sklearn's docs might assume)
    mlp, X, y = converged
    l2 = make_adapter(mlp).penalty_l2(len(X))
    assert l2 == pytest.approx(1.0 / 150)
    assert np.abs(_last_layer_gradient(mlp, X, y, l2)).max() < 2e-3
    assert np.abs(_last_layer_gradient(mlp, X, y, 1.0)).max() > 1.0
    # stochastic solvers add alpha / (2 m) ||W||^2 to every batch of m samples
    adam = MLPClassifier((6,), alpha=0.5, max_iter=5, random_state=0)
    with pytest.warns(Warning):
        adam.fit(X, y)
    assert make_adapter(adam).penalty_l2(len(X)) == pytest.approx(0.5 / 150)  # batch_size='auto': min(200, n)
    adam.set_params(batch_size=32)
    assert make_adapter(adam).penalty_l2(len(X)) == pytest.approx(0.5 / 32)


def test_lje_with_the_models_penalty_reconstructs_it(converged):
    mlp, X, y = converged
    errors = {}
    for l2 in ("auto", 1.0, 0.0):
        recon, logits = RepresenterLJE(mlp, l2=l2).fit(X, y).reconstruct(X[:20])
        _, out = _numpy_forward(mlp, X[:20])
        np.testing.assert_allclose(logits, out, rtol=1e-9)
        # softmax logits are defined up to a shift per row
        recon, out = recon - recon.mean(1, keepdims=True), out - out.mean(1, keepdims=True)
        errors[l2] = np.abs(recon - out).max() / np.abs(out).max()
    assert errors["auto"] < 0.02
    assert errors[1.0] > 0.3 and errors[0.0] > 0.3


def test_refusals():
    X, y = make_classification(60, 4, random_state=0)
    with pytest.raises(NotFittedError, match="fit it before explaining"):
        SKLearnMLPAdapter(MLPClassifier())
    multilabel = MLPClassifier((3,), max_iter=20, random_state=0)
    with pytest.warns(Warning):
        multilabel.fit(X, np.stack([y, 1 - y], 1))
    with pytest.raises(ValueError, match="multilabel"):
        make_adapter(multilabel)
    mlp = MLPClassifier((3,), solver="lbfgs", max_iter=500, random_state=0).fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features but the model was fitted with 4"):
        make_adapter(mlp).features(X[:, :3])
    with pytest.raises(TypeError, match="no options"):
        make_adapter(mlp, batch_size=3)
