"""RepresenterLJE against an independent float64 implementation, the model's own logits, and RPS-L2."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from skrep import RepresenterLJE, RepresenterPoints


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_binary_head_l2_zero_matches_original_algorithm():
    """The paper's algorithm by hand in numpy float64: anchor step, explicit inverse, W_i."""
    rng = np.random.default_rng(0)
    n, d, eta = 80, 5, 1e-2
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + 0.8 * rng.normal(size=n) > 0).astype(int)
    torch.manual_seed(0)
    head = torch.nn.Linear(d, 1).double()
    lje = RepresenterLJE(head, eta=eta, l2=0.0).fit(X, y)

    F = np.hstack([X, np.ones((n, 1))])
    theta = np.concatenate([head.weight.detach().numpy()[0], head.bias.detach().numpy()])
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    anchor = theta + eta * F.T @ (sig(F @ theta) - y) / n
    p = sig(F @ anchor)
    H = (F * (p * (1 - p))[:, None]).T @ F / n
    G = F * (p - y)[:, None]
    W = (anchor[None, :] - np.linalg.solve(H, G.T).T) / n  # (n, d + 1)
    Xt = rng.normal(size=(7, d))
    Ft = np.hstack([Xt, np.ones((7, 1))])
    E = lje.explain(Xt, target=1)
    np.testing.assert_allclose(E.values, Ft @ W.T, rtol=1e-6, atol=1e-12 * np.abs(Ft @ W.T).max())
    np.testing.assert_allclose(lje.anchor_.numpy()[:, 0], anchor, rtol=1e-10)
    assert np.all(E.prior == 0)
    # class 0 is the negated margin
    np.testing.assert_allclose(lje.explain(Xt, target=0).values, -E.values, rtol=1e-12)


@pytest.mark.parametrize("C", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_faithful_to_penalized_logistic_regression(C, n_classes):
    X, y = make_classification(400, 10, n_informative=6, n_classes=n_classes, flip_y=0.05, random_state=0)
    model = LogisticRegression(C=C, tol=1e-10, max_iter=10000, solver="newton-cholesky").fit(X, y)
    logits = model.decision_function(X[:100]).reshape(100, -1)
    lje = RepresenterLJE(model).fit(X, y)
    assert lje.l2_ == pytest.approx(1 / (C * len(X)))
    recon_all, own = lje.reconstruct(X[:100])
    assert _rel(recon_all, logits) <= 1e-4
    E = lje.explain(X[:100])
    np.testing.assert_allclose(
        E.values.astype(np.float64).sum(1) + E.prior, E.output, rtol=0, atol=1e-4 * np.abs(E.output).max()
    )
    # the paper's l2=0 ignores the penalty and misses the logits by far more
    paper = RepresenterLJE(model, l2=0.0).fit(X, y).explain(X[:100])
    assert _rel(paper.values.sum(1), paper.output) > 100 * _rel(E.values.sum(1) + E.prior, E.output)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_faithful_to_unpenalized_model_without_prior(n_classes):
    # flipped labels keep the data non-separable, so the unpenalized optimum is finite
    X, y = make_classification(400, 6, n_informative=4, n_redundant=0, n_classes=n_classes, flip_y=0.2, random_state=1)
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10000, solver="newton-cholesky").fit(X, y)
    E = RepresenterLJE(model, l2=0.0).fit(X, y).explain(X[:80])
    np.testing.assert_allclose(E.values.astype(np.float64).sum(1), E.output, rtol=0, atol=1e-4 * np.abs(E.output).max())


def _centered_error(explainer, X):
    recon, logits = explainer.reconstruct(X)
    recon = recon - recon.mean(1, keepdims=True)
    logits = logits - logits.mean(1, keepdims=True)
    return np.linalg.norm(recon - logits) / np.linalg.norm(logits)


def _mean_jaccard(P):
    return np.mean(
        [len(set(P[a]) & set(P[b])) / len(set(P[a]) | set(P[b])) for a in range(len(P)) for b in range(a + 1, len(P))]
    )


def test_digits_mlp_faithful_and_instance_level(digits, digits_mlp, capsys):
    # digits_mlp is trained by Adam with (coupled) weight decay 1e-4 on every parameter
    lje = RepresenterLJE(digits_mlp, l2=1e-4, penalize_bias=True).fit(digits.X_train, digits.y_train)
    rps = RepresenterPoints(digits_mlp).fit(digits.X_train, digits.y_train)
    E = lje.explain(digits.X_test)
    total = E.values.astype(np.float64).sum(1) + E.prior
    pearson = np.corrcoef(total, E.output)[0, 1]
    err_lje, err_rps = _centered_error(lje, digits.X_test), _centered_error(rps, digits.X_test)
    Ep = rps.explain(digits.X_test)
    jac_lje = np.mean([_mean_jaccard(E.proponents(10)[0][E.target == c]) for c in range(10)])
    jac_rps = np.mean([_mean_jaccard(Ep.proponents(10)[0][Ep.target == c]) for c in range(10)])
    with capsys.disabled():
        print(
            f"\n[LJE digits MLP] Pearson with the model's logits {pearson:.4f}; relative error of all "
            f"(centered) logits LJE {err_lje:.3f} vs RPS-L2 {err_rps:.3f}; mean top-10 Jaccard within a "
            f"predicted class LJE {jac_lje:.3f} vs RPS-L2 {jac_rps:.3f}"
        )
    assert pearson >= 0.99
    assert err_lje < err_rps
    assert jac_lje < jac_rps


def test_stable_across_eta(digits, digits_mlp):
    tops = [
        RepresenterLJE(digits_mlp, l2=1e-4, penalize_bias=True, eta=eta)
        .fit(digits.X_train, digits.y_train)
        .explain(digits.X_test, top_k=5)
        .proponents(5)[0]
        for eta in (1e-4, 1e-3, 1e-2)
    ]
    for a, b in [(0, 1), (1, 2), (0, 2)]:
        jac = np.mean(
            [
                len(set(tops[a][t]) & set(tops[b][t])) / len(set(tops[a][t]) | set(tops[b][t]))
                for t in range(len(tops[a]))
            ]
        )
        assert jac >= 0.8


@pytest.mark.parametrize("n_classes", [2, 4])
def test_cg_path_equals_explicit_path(n_classes):
    X, y = make_classification(300, 8, n_informative=5, n_classes=n_classes, random_state=0)
    model = LogisticRegression(C=0.5, tol=1e-10, solver="newton-cholesky").fit(X, y)
    ex = RepresenterLJE(model, solver="explicit").fit(X, y)
    cg = RepresenterLJE(model, solver="cg", cg_tol=1e-10).fit(X, y)
    Ee, Ec = ex.explain(X[:30]), cg.explain(X[:30])
    np.testing.assert_allclose(Ec.values, Ee.values, rtol=0, atol=1e-4 * np.abs(Ee.values).max())
    np.testing.assert_allclose(Ec.prior, Ee.prior, rtol=0, atol=1e-6 * np.abs(Ee.output).max())
    np.testing.assert_allclose(cg.self_influence(), ex.self_influence(), rtol=1e-4, atol=1e-10)
    top_e, top_c = ex.explain(X[:30], top_k=5), cg.explain(X[:30], top_k=5)
    np.testing.assert_array_equal(top_c.proponents(5)[0], top_e.proponents(5)[0])


def test_softmax_and_dead_features_null_directions_are_dropped_silently(digits, digits_mlp):
    # an unpenalized softmax head is singular along v (x) 1 for every v, and ReLU units that never
    # fire add more null directions: none carries gradient, so no warning and exact values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lje = RepresenterLJE(digits_mlp, l2=0.0).fit(digits.X_train, digits.y_train)
    assert lje.dropped_ >= digits_mlp[2].in_features + 1  # the shift v (x) 1 for every feature and the bias
    assert np.isfinite(lje.explain(digits.X_test[:5]).values).all()


def test_saturated_head_warns_and_stays_finite():
    # huge weights saturate the sigmoid: points with p == 1 in float64 have zero curvature but a
    # nonzero gradient when mislabelled, so H is singular where gradients live
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(int)
    y[:3] = 1 - y[:3]
    head = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[900.0, 0.0, 0.0]], dtype=torch.float64))
        head.bias.zero_()
    with pytest.warns(RuntimeWarning, match="damping"):
        lje = RepresenterLJE(head, l2=0.0).fit(X, y)
    assert np.isfinite(lje.explain(X[:5]).values).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        damped = RepresenterLJE(head, l2=0.0, damping=1e-3).fit(X, y)
    assert np.isfinite(damped.explain(X[:5]).values).all() and damped.dropped_ == 0


def test_bad_parameters():
    X, y = make_classification(50, 4, random_state=0)
    model = LogisticRegression().fit(X, y)
    for kw in ({"eta": -1}, {"l2": "model"}, {"l2": -0.1}, {"damping": "big"}, {"solver": "lu"}):
        with pytest.raises((ValueError, TypeError), match=next(iter(kw))):
            RepresenterLJE(model, **kw).fit(X, y)


def test_cg_on_wide_unpenalized_softmax_head_with_dead_unit():
    """The softmax shift and a unit dead on every training point make H singular; the CG path
    must solve on its range, agree with the explicit path, and stay finite on a test point
    where the dead unit fires."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.ReLU(), torch.nn.Linear(40, 5)).double()
    with torch.no_grad():
        net[0].weight[3] = 0.0
        net[0].bias[3] = -1.0  # unit 3 never fires on the training inputs
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 6)), rng.integers(0, 5, 200)
    ex = RepresenterLJE(net, l2=0.0, solver="explicit").fit(X, y)
    cg = RepresenterLJE(net, l2=0.0, solver="cg", cg_tol=1e-10).fit(X, y)
    Xt = rng.normal(size=(4, 6))
    with torch.no_grad():
        net_alive = net[0].bias[3].item()
    assert net_alive == -1.0
    Ee, Ec = ex.explain(Xt), cg.explain(Xt)
    np.testing.assert_allclose(Ec.values, Ee.values, rtol=0, atol=1e-5 * np.abs(Ee.values).max())
    assert np.isfinite(Ec.values).all()


def test_cg_explainer_pickles():
    import pickle

    X, y = make_classification(120, 5, n_informative=3, n_redundant=0, n_classes=3, random_state=0)
    model = LogisticRegression(C=1.0, solver="newton-cholesky").fit(X, y)
    lje = RepresenterLJE(model, solver="cg").fit(X, y)
    again = pickle.loads(pickle.dumps(lje))
    np.testing.assert_array_equal(again.explain(X[:5]).values, lje.explain(X[:5]).values)


def test_auto_l2_refuses_objectives_it_cannot_express():
    X, y = make_classification(100, 5, random_state=0)
    for model in (LogisticRegression(class_weight="balanced"), LogisticRegression(solver="liblinear")):
        with pytest.raises(ValueError, match="l2="):
            RepresenterLJE(model.fit(X, y)).fit(X, y)
    RepresenterLJE(LogisticRegression(class_weight="balanced").fit(X, y), l2=0.01).fit(X, y)
