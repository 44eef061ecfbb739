"""Influence functions against leave-one-out retraining, an explicit float64 Hessian and each other."""

import copy
import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from skrep import InfluenceFunctions
from skrep.demo import load_digits_data, train_mlp
from skrep.metrics import loo_correlation


@pytest.fixture(scope="module")
def digits64():
    d = load_digits_data()
    return d.X_train.astype(np.float64), d.y_train, d.X_test.astype(np.float64), d.y_test


def _warm_retrain(model, X, y):
    def retrain(keep):
        m = copy.deepcopy(model)
        m.set_params(warm_start=True, solver="lbfgs", tol=1e-10, max_iter=5000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return m.fit(X[keep], y[keep])

    return retrain


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "multiclass"])
def test_logistic_regression_matches_leave_one_out(digits64, binary, capsys):
    X, y, Xt, yt = digits64
    if binary:
        y, yt = (y == 3).astype(int), (yt == 3).astype(int)
        Xt, yt = np.vstack([Xt[yt == 1][:3], Xt[yt == 0][:2]]), np.array([1, 1, 1, 0, 0])
    else:
        Xt, yt = Xt[:5], yt[:5]
    model = LogisticRegression(C=0.1, tol=1e-12, solver="newton-cholesky", max_iter=1000).fit(X, y)
    inf = InfluenceFunctions(model).fit(X, y)
    # the 40 training points with the largest estimated effect on these test points
    idx = np.argsort(-np.abs(inf.explain(Xt, yt).values).sum(0))[:40]
    r = loo_correlation(inf, Xt, yt, idx, _warm_retrain(model, X, y))
    with capsys.disabled():
        print(
            f"\n[IF LOO, LogisticRegression {'binary' if binary else 'multiclass'}] Pearson {r['pearson']:.4f}, "
            f"Spearman {r['spearman']:.4f}"
        )
    assert r["pearson"] >= 0.98
    # sign: the estimate and the real change agree in sign where the change is not tiny
    big = np.abs(r["actual"]) > 0.1 * np.abs(r["actual"]).max()
    assert np.mean(np.sign(r["predicted"][big]) == np.sign(r["actual"][big])) >= 0.95


def _train_full_batch(model, X, y, wd, iters):
    opt = torch.optim.LBFGS(
        model.parameters(),
        max_iter=iters,
        tolerance_grad=1e-10,
        tolerance_change=0,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y) + 0.5 * wd * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


def test_mlp_all_parameters_match_leave_one_out(capsys):
    d = load_digits_data()
    X, y = torch.as_tensor(d.X_train[:600]).double(), torch.as_tensor(d.y_train[:600])
    Xt, yt = d.X_test[:5].astype(np.float64), d.y_test[:5]
    wd = 1e-2  # the MLP is trained to a stationary point of mean CE + wd/2 ||params||^2
    torch.manual_seed(0)
    net = _train_full_batch(nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).double(), X, y, wd, 2000)
    inf = InfluenceFunctions(net, params="all", l2=wd).fit(X, y)
    idx = np.argsort(-np.abs(inf.explain(Xt, yt).values).sum(0))[:20]
    r = loo_correlation(inf, Xt, yt, idx, lambda keep: _train_full_batch(copy.deepcopy(net), X[keep], y[keep], wd, 500))
    with capsys.disabled():
        print(
            f"\n[IF LOO, MLP all parameters, weight decay {wd}] Pearson {r['pearson']:.4f}, "
            f"Spearman {r['spearman']:.4f}"
        )
    assert r["pearson"] >= 0.8


def test_exact_all_parameters_equals_hand_built_hessian():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3)).double()  # 111 parameters
    rng = np.random.default_rng(0)
    X, y = torch.as_tensor(rng.normal(size=(40, 5))), torch.as_tensor(rng.integers(0, 3, 40))
    Xt, yt = torch.as_tensor(rng.normal(size=(4, 5))), torch.as_tensor(rng.integers(0, 3, 4))
    damping, l2 = 0.05, 0.01
    net = _train_full_batch(net, X, y, l2, 300)  # near a minimum, so H + damping is positive definite
    explainer = InfluenceFunctions(net, params="all", damping=damping, l2=l2).fit(X, y)
    values = explainer.explain(Xt, yt).values
    # a Hessian product of a transposed (strided) block: the layout must not change the numbers
    block = torch.randn(explainer.n_params_, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    matvec = explainer._operators()[0]
    torch.testing.assert_close(matvec(block.T), matvec(block.T.contiguous()), rtol=1e-12, atol=1e-12)

    params = [p.detach().clone() for p in net.parameters()]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.reshape(-1) for p in params])

    def unflat(v):
        out, s = [], 0
        for sh in shapes:
            n = int(np.prod(sh))
            out.append(v[s : s + n].reshape(sh))
            s += n
        return out

    def forward(v, x):
        w1, b1, w2, b2 = unflat(v)
        return torch.tanh(x @ w1.T + b1) @ w2.T + b2

    def objective(v):
        return nn.functional.cross_entropy(forward(v, X), y) + 0.5 * l2 * (v**2).sum()

    H = torch.autograd.functional.hessian(objective, flat0) + damping * torch.eye(len(flat0), dtype=torch.float64)

    def grads(A, b):
        return torch.stack(
            [
                torch.autograd.grad(nn.functional.cross_entropy(forward(v, A[j : j + 1]), b[j : j + 1]), v)[0]
                for j in range(len(A))
                for v in [flat0.clone().requires_grad_(True)]
            ]
        )

    ref = grads(Xt, yt) @ torch.linalg.solve(H, grads(X, y).T) / len(X)
    np.testing.assert_allclose(values, ref.numpy(), rtol=1e-6, atol=1e-9 * np.abs(ref.numpy()).max())


@pytest.fixture(scope="module")
def mlp_head_reference(digits64):
    d = load_digits_data()
    net = train_mlp(d.X_train, d.y_train, weight_decay=1e-4)
    kw = dict(l2=1e-4, penalize_bias=True, damping=1e-3, random_state=0)
    ref = InfluenceFunctions(net, solver="exact", **kw).fit(d.X_train, d.y_train)
    return d, net, kw, ref.explain(d.X_test[:20], d.y_test[:20]).values


@pytest.mark.parametrize("solver,threshold", [("cg", 0.999), ("arnoldi", 0.95), ("lissa", 0.95)])
def test_solvers_agree_with_exact_on_mlp_head(mlp_head_reference, solver, threshold, capsys):
    d, net, kw, ref = mlp_head_reference
    values = (
        InfluenceFunctions(net, solver=solver, **kw)
        .fit(d.X_train, d.y_train)
        .explain(d.X_test[:20], d.y_test[:20])
        .values
    )
    r = np.corrcoef(values.ravel(), ref.ravel())[0, 1]
    noise = np.random.default_rng(0).normal(size=ref.shape) * ref.std()
    with capsys.disabled():
        print(f"\n[IF {solver} vs exact, digits MLP head] Pearson {r:.4f}")
    assert r >= threshold
    assert np.corrcoef(noise.ravel(), ref.ravel())[0, 1] < threshold  # the check tells a solver from noise


def test_sketch_agrees_with_exact_on_small_head():
    d = load_digits_data()
    X, y = d.X_train.astype(np.float64), (d.y_train == 3).astype(int)
    model = LogisticRegression(C=0.1, tol=1e-12, solver="newton-cholesky").fit(X, y)
    ref = InfluenceFunctions(model).fit(X, y).explain(X[:20], y[:20]).values
    values = (
        InfluenceFunctions(model, solver="sketch", sketch_steps=300, random_state=0)
        .fit(X, y)
        .explain(X[:20], y[:20])
        .values
    )
    assert np.corrcoef(values.ravel(), ref.ravel())[0, 1] >= 0.9


@pytest.mark.slow
def test_sketch_agrees_with_exact_on_mlp_head(capsys):
    d = load_digits_data()
    net = train_mlp(d.X_train, d.y_train, weight_decay=1e-4, hidden=32)
    kw = dict(l2=1e-4, penalize_bias=True, damping=1e-3, random_state=0)
    ref = InfluenceFunctions(net, **kw).fit(d.X_train, d.y_train).explain(d.X_test[:20], d.y_test[:20]).values
    values = (
        InfluenceFunctions(net, solver="sketch", stochastic_batch_size=512, **kw)
        .fit(d.X_train, d.y_train)
        .explain(d.X_test[:20], d.y_test[:20])
        .values
    )
    r = np.corrcoef(values.ravel(), ref.ravel())[0, 1]
    with capsys.disabled():
        print(f"\n[IF sketch vs exact, digits MLP (hidden 32) head] Pearson {r:.4f}")
    assert r >= 0.9


def test_lissa_refuses_a_scale_below_the_top_eigenvalue(mlp_head_reference):
    d, net, kw, _ = mlp_head_reference
    with pytest.raises(ValueError, match="lissa_scale"):
        InfluenceFunctions(net, solver="lissa", lissa_scale=1e-6, **kw).fit(d.X_train, d.y_train)


def _lissa_on_logistic_regression(depth):
    from sklearn.datasets import make_classification

    X, y = make_classification(200, 5, n_redundant=0, random_state=0)
    model = LogisticRegression(C=1.0, tol=1e-12, solver="newton-cholesky").fit(X, y)
    ref = InfluenceFunctions(model).fit(X, y).explain(X[:4], y[:4]).values
    # one minibatch of all 200 points: the recursion is deterministic, its settling depth known
    inf = InfluenceFunctions(model, solver="lissa", lissa_depth=depth, stochastic_batch_size=200, random_state=0)
    return inf.fit(X, y).explain(X[:4], y[:4]).values, ref


def test_lissa_warns_when_it_has_not_settled():
    from sklearn.exceptions import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="LiSSA has not settled after 2 steps.*lissa_depth"):
        values, ref = _lissa_on_logistic_regression(depth=2)
    assert np.abs(values - ref).max() > 0.1 * np.abs(ref).max()  # the warning was deserved


def test_lissa_settled_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, ref = _lissa_on_logistic_regression(depth=150)
    np.testing.assert_allclose(values, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_self_influence_is_the_diagonal(digits64):
    X, y, _, _ = digits64
    model = LogisticRegression(C=0.1, tol=1e-12, solver="newton-cholesky").fit(X[:300], y[:300])
    inf = InfluenceFunctions(model).fit(X[:300], y[:300])
    np.testing.assert_allclose(inf.self_influence(), np.diag(inf.explain(X[:300], y[:300]).values), rtol=1e-4)


def test_group_influence_second_order_at_least_as_good(digits64, capsys):
    X, y, Xt, yt = digits64
    model = LogisticRegression(C=0.1, tol=1e-12, solver="newton-cholesky").fit(X, y)
    inf = InfluenceFunctions(model).fit(X, y)
    rng = np.random.default_rng(0)
    groups = [rng.choice(len(X), int(0.05 * len(X)), replace=False) for _ in range(10)]
    Xs, ys = Xt[:5], yt[:5]
    first, second = inf.explain_group(Xs, ys, groups, order=1), inf.explain_group(Xs, ys, groups, order=2)
    from skrep.metrics import _test_losses

    base = _test_losses(model, Xs, ys)
    retrain = _warm_retrain(model, X, y)
    actual = np.stack([_test_losses(retrain(~np.isin(np.arange(len(X)), g)), Xs, ys) - base for g in groups], 1)
    r1 = np.corrcoef(first.ravel(), actual.ravel())[0, 1]
    r2 = np.corrcoef(second.ravel(), actual.ravel())[0, 1]
    with capsys.disabled():
        print(f"\n[IF group influence, 10 groups of 5%] Pearson order 1 {r1:.4f}, order 2 {r2:.4f}")
    assert r2 >= r1 - 1e-3 and r2 > 0.9


def test_bad_parameters(digits64):
    X, y, _, _ = digits64
    model = LogisticRegression().fit(X[:100], y[:100])
    for kw in ({"solver": "newton"}, {"damping": -1}, {"rank": 0}, {"params": "all"}, {"lissa_scale": 0}):
        with pytest.raises((ValueError, TypeError), match=next(iter(kw))):
            InfluenceFunctions(model, **kw).fit(X[:100], y[:100])


def test_ridge_regression_matches_leave_one_out():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4))
    y = X @ rng.normal(size=4) + 0.3 * rng.normal(size=100)
    model = Ridge(alpha=1.0).fit(X, y)
    inf = InfluenceFunctions(model).fit(X, y)
    with pytest.raises(ValueError, match="pass y"):
        inf.explain(X[:3])
    r = loo_correlation(inf, X[:5], y[:5], np.arange(30), lambda keep: Ridge(alpha=1.0).fit(X[keep], y[keep]))
    assert r["pearson"] >= 0.99


def test_network_parameter_subsets_and_conv_layers_match_exact():
    """A subset of parameters (the rest still requiring grad) and a conv layer registered before
    the Linear head: every solver runs and agrees with the exact one."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    rng = np.random.default_rng(0)
    X, y = torch.as_tensor(rng.normal(size=(40, 1, 6, 6))), torch.as_tensor(rng.integers(0, 3, 40))
    for params in ("all", ["3"], ["0", "3.weight"]):
        ref = InfluenceFunctions(cnn, params=params, damping=0.5).fit(X, y).explain(X[:3], y[:3]).values
        for solver in ("cg", "arnoldi"):
            got = InfluenceFunctions(cnn, params=params, damping=0.5, solver=solver, rank=1000).fit(X, y)
            np.testing.assert_allclose(got.explain(X[:3], y[:3]).values, ref, rtol=1e-5, atol=1e-8)


def test_arnoldi_at_full_rank_is_exact_and_counts_damping_once():
    from sklearn.datasets import make_classification

    X, y = make_classification(150, 5, n_redundant=0, random_state=0)
    model = LogisticRegression(C=1.0, tol=1e-12, solver="newton-cholesky").fit(X, y)
    ref = InfluenceFunctions(model, damping=0.3).fit(X, y).explain(X[:4], y[:4]).values
    got = InfluenceFunctions(model, damping=0.3, solver="arnoldi", rank=50).fit(X, y).explain(X[:4], y[:4]).values
    np.testing.assert_allclose(got, ref, rtol=1e-8, atol=1e-12)


def test_float32_head_iterative_solvers_match_exact(mlp_head_reference):
    d, net, kw, ref = mlp_head_reference  # a float32 network
    values = (
        InfluenceFunctions(net, solver="cg", **kw)
        .fit(d.X_train, d.y_train)
        .explain(d.X_test[:20], d.y_test[:20])
        .values
    )
    np.testing.assert_allclose(values, ref, rtol=0, atol=1e-6 * np.abs(ref).max())


def test_group_arguments_are_checked(digits64):
    X, y, _, _ = digits64
    model = LogisticRegression(C=0.1, solver="newton-cholesky").fit(X[:200], y[:200])
    inf = InfluenceFunctions(model).fit(X[:200], y[:200])
    for bad in ([], [np.arange(200)]):
        with pytest.raises(ValueError):
            inf.explain_group(X[:2], y[:2], bad, order=2)
    with pytest.raises(ValueError, match="order"):
        inf.explain_group(X[:2], y[:2], [np.arange(3)], order=True)
    np.testing.assert_allclose(inf.explain_group(X[:2], y[:2], [[0, 0, 1]]), inf.explain_group(X[:2], y[:2], [[0, 1]]))
