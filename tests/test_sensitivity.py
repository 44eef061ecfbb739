"""Sensitivity-map decomposition (Yeh et al. 2018, 4.4): the maps add up to the decomposed logit's gradient."""

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression

from skrep import RepresenterLJE, RepresenterPoints
from skrep.demo import train_classifier
from skrep.neurons import ClassQoI, GaussianDoI, NeuronInfluence, Slice
from tests.models import SmallResNet


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def small64(digits):
    """A small tanh MLP in float64 on 500 training digits: finite differences of a decomposition exact to ~1e-9."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).double()
    X, y = digits.X_train[:500].astype(np.float64), digits.y_train[:500]
    return train_classifier(net, X, y, epochs=10), X, y, digits.X_test[:3].astype(np.float64)


@pytest.fixture(scope="module")
def rps(digits, digits_mlp):
    return RepresenterPoints(digits_mlp).fit(digits.X_train, digits.y_train)


def _finite_difference(f, X, eps=1e-6):
    """Central differences of f: (n, d) -> (n,), per input coordinate: (n, d)."""
    n, d = X.shape
    steps = eps * np.eye(d)
    plus = f((X[:, None] + steps[None]).reshape(-1, d)).reshape(n, d)
    minus = f((X[:, None] - steps[None]).reshape(-1, d)).reshape(n, d)
    return (plus - minus) / (2 * eps)


@pytest.mark.parametrize(
    "make",
    [lambda m: RepresenterPoints(m), lambda m: RepresenterLJE(m, l2=0.0)],
    ids=["rps", "lje"],
)
def test_maps_sum_to_the_gradient_of_the_decomposed_logit(make, small64):
    net, X_train, y_train, X = small64
    expl = make(net).fit(X_train, y_train)
    c = expl.explain(X).target
    maps = expl.sensitivity_maps(X, np.arange(len(X_train)))
    assert maps.shape == (len(X), len(X_train), X.shape[1])

    def decomposed(Z):  # the decomposed logit of the class explained at each test point, by reconstruct()
        return expl.reconstruct(Z)[0][np.arange(len(Z)), np.repeat(c, X.shape[1])]

    assert _rel(maps.sum(1), _finite_difference(decomposed, X)) < 1e-4


def test_lje_maps_leave_out_the_prior(small64):
    """With a penalty the prior belongs to no training point: the maps add up to the gradient of sum_i values."""
    net, X_train, y_train, X = small64
    lje = RepresenterLJE(net, l2=1e-3, penalize_bias=True).fit(X_train, y_train)
    c = lje.explain(X).target
    maps = lje.sensitivity_maps(X, np.arange(len(X_train)))

    def values_sum(Z):
        return lje.explain(Z, target=np.repeat(c, X.shape[1])).values.sum(1)

    assert _rel(maps.sum(1), _finite_difference(values_sum, X)) < 1e-4
    assert np.abs(lje.explain(X).prior).max() > 0


def test_float32_maps_against_autograd_of_the_refit_head(digits, digits_mlp, rps):
    X = digits.X_test[:4]
    c = rps.explain(X).target
    x = torch.as_tensor(X).requires_grad_(True)
    head = rps.head_.float()
    decomposed = (torch.cat([digits_mlp[1](digits_mlp[0](x)), torch.ones(len(X), 1)], 1) @ head)[np.arange(4), c]
    (grad,) = torch.autograd.grad(decomposed.sum(), x)
    maps = rps.sensitivity_maps(X, np.arange(rps.n_train_))
    assert _rel(maps.astype(np.float64).sum(1), grad.numpy()) < 1e-4
    # chosen points per test input (the top proponents) are rows of the full decomposition
    top = rps.explain(X, top_k=4).proponents(4)[0]
    np.testing.assert_allclose(
        rps.sensitivity_maps(X, top), np.take_along_axis(maps, top[:, :, None], 1), rtol=1e-5, atol=1e-7
    )
    single = rps.sensitivity_maps(X[0], top[0])
    np.testing.assert_allclose(single, maps[0, top[0]], rtol=1e-5, atol=1e-7)
    # each map of a training point i is alpha_ic J^T phi_i, by hand
    i = int(top[0, 0])
    (own,) = torch.autograd.grad((digits_mlp[1](digits_mlp[0](x[:1])) @ rps.train_features_[i, :-1]).sum(), x)
    np.testing.assert_allclose(single[0], float(rps.alpha_[i, c[0]]) * own[0].numpy(), rtol=1e-4, atol=1e-7)


def test_smoothgrad_maps_sum_to_the_smoothgrad_of_the_decomposed_logit(digits, digits_mlp, rps):
    x = digits.X_test[5]
    c = int(rps.explain(x[None]).target[0])
    doi = GaussianDoI(0.3, n_samples=16, random_state=0)
    maps = rps.sensitivity_maps(x, np.arange(rps.n_train_), smoothgrad=doi)
    # the decomposed logit is the MLP with its head replaced by the refit head
    refit = torch.nn.Linear(128, 10)
    refit.weight.data, refit.bias.data = rps.head_[:-1].T.float(), rps.head_[-1].float()
    decomposed = torch.nn.Sequential(digits_mlp[0], digits_mlp[1], refit)
    smoothgrad = NeuronInfluence(decomposed, Slice(None), ClassQoI(c), doi).fit(x[None]).explain(x[None])[0]
    assert _rel(maps.astype(np.float64).sum(0), smoothgrad) < 1e-4
    assert _rel(maps.sum(0), rps.sensitivity_maps(x, np.arange(rps.n_train_)).sum(0)) > 1e-3


def test_lje_cg_solver_gives_the_explicit_maps(digits):
    """A small float64 network: with the CG solver every explained class costs d + 1 CG solves."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 10)).double()
    X_train, y_train, X = digits.X_train[:300].astype(np.float64), digits.y_train[:300], digits.X_test[:2]
    explicit = RepresenterLJE(net, l2=1e-3).fit(X_train, y_train)
    cg = RepresenterLJE(net, l2=1e-3, solver="cg", cg_tol=1e-8).fit(X_train, y_train)
    idx = explicit.explain(X, top_k=4).proponents(4)[0]
    assert _rel(cg.sensitivity_maps(X, idx), explicit.sensitivity_maps(X, idx)) < 1e-4


def test_conv_net_maps_sum_to_the_input_gradient():
    torch.manual_seed(0)
    net = SmallResNet(in_ch=1, c=4, n_classes=3).eval()
    X = torch.randn(40, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    rps = RepresenterPoints(net, lam=1e-2).fit(X, np.arange(40) % 3)
    x = X[:2].clone().requires_grad_(True)
    c = rps.explain(X[:2]).target
    phi = net.pool(net.blocks(net.stem(x))).flatten(1)
    decomposed = (torch.cat([phi, torch.ones(2, 1)], 1) @ rps.head_.float())[np.arange(2), c]
    (grad,) = torch.autograd.grad(decomposed.sum(), x)
    maps = rps.sensitivity_maps(X[:2], np.arange(40))
    assert maps.shape == (2, 40, 1, 6, 6)
    assert _rel(maps.astype(np.float64).sum(1), grad.numpy()) < 1e-4


def test_bad_inputs_give_clear_errors(digits, digits_mlp, rps):
    with pytest.raises(NotFittedError):
        RepresenterPoints(digits_mlp).sensitivity_maps(digits.X_test[0], [0])
    with pytest.raises(TypeError, match="GaussianDoI"):
        rps.sensitivity_maps(digits.X_test[0], [0], smoothgrad=0.1)
    with pytest.raises(ValueError, match=r"\[0, 1437\)"):
        rps.sensitivity_maps(digits.X_test[0], [5000])
    with pytest.raises(ValueError, match="training-point indices"):
        rps.sensitivity_maps(digits.X_test[:2], np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="training-point indices"):
        rps.sensitivity_maps(digits.X_test[0], [0.5])
    with pytest.raises(ValueError, match="shape"):
        rps.sensitivity_maps(digits.X_test[:2, :10], [0])
    X, y = digits.X_train[:200], digits.y_train[:200]
    linear = RepresenterPoints(LogisticRegression(max_iter=200).fit(X, y)).fit(X, y)
    with pytest.raises(TypeError, match="torch model"):
        linear.sensitivity_maps(digits.X_test[0], [0])
