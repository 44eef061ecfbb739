"""TracIn against brute-force per-sample autograd, projection statistics and mislabel finding."""

import numpy as np
import pytest
import torch
from models import LSTMClassifier
from sklearn.metrics import roc_auc_score
from torch import nn

from skrep import TracIn
from skrep.demo import load_digits_data, make_mlp, train_classifier


def _brute_force(model, states, rates, X, y, Xt, yt, select):
    """sum_k eta_k <g_i, g_t> with per-sample gradients from plain autograd, one sample at a time."""
    work = type(model)() if not isinstance(model, nn.Sequential) else model
    out = np.zeros((len(Xt), len(X)))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for state, eta in zip(states, rates, strict=True):
            work.load_state_dict(state)
            work.eval()

            def grads(A, b):
                rows = []
                for j in range(len(A)):
                    work.zero_grad()
                    nn.functional.cross_entropy(work(A[j : j + 1]), b[j : j + 1]).backward()
                    rows.append(torch.cat([p.grad.flatten() for n, p in work.named_parameters() if select(n)]))
                return torch.stack(rows).double()

            out += eta * (grads(Xt, yt) @ grads(X, y).T).numpy()
    finally:
        model.load_state_dict(original)
    return out


def _states(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    states = []
    for _ in range(n):
        states.append(
            {
                k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                for k, v in model.state_dict().items()
            }
        )
    return states


@pytest.mark.parametrize(
    "params,select",
    [("head", lambda n: n.startswith("2.")), ("all", lambda n: True), (["0"], lambda n: n.startswith("0."))],
)
def test_mlp_equals_brute_force(params, select):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    X, y = torch.randn(25, 5), torch.randint(0, 3, (25,))
    states, rates = _states(net), [0.3, 0.1, 0.05]
    E = TracIn(net, states, rates, params=params).fit(X, y).explain(X[:6], y[:6])
    ref = _brute_force(net, states, rates, X, y, X[:6], y[:6], select)
    np.testing.assert_allclose(E.values, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_conv_and_lstm_parameters_through_torch_func():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    X, y = torch.randn(12, 1, 6, 6), torch.randint(0, 4, (12,))
    states = _states(cnn, 2)
    E = TracIn(cnn, states, [0.1, 0.2], params="all").fit(X, y).explain(X[:3], y[:3])
    ref = _brute_force(cnn, states, [0.1, 0.2], X, y, X[:3], y[:3], lambda n: True)
    np.testing.assert_allclose(E.values, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())

    lstm = LSTMClassifier()
    tokens, labels = torch.randint(0, 20, (10, 7)), torch.randint(0, 3, (10,))
    states = _states(lstm, 1)
    E = TracIn(lstm, states, 0.5, params="all").fit(tokens, labels).explain(tokens[:3], labels[:3])
    work = LSTMClassifier()
    ref = _brute_force(work, states, [0.5], tokens, labels, tokens[:3], labels[:3], lambda n: True)
    np.testing.assert_allclose(E.values, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_explains_predicted_label_by_default():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3))
    X, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    tr = TracIn(net, [net.state_dict()], 1.0).fit(X, y)
    pred = net(X[:5]).argmax(1)
    np.testing.assert_allclose(tr.explain(X[:5]).values, tr.explain(X[:5], pred).values)
    assert not np.allclose(tr.explain(X[:5], (pred + 1) % 3).values, tr.explain(X[:5]).values)


@pytest.fixture(scope="module")
def flipped_run():
    data = load_digits_data(flip_fraction=0.1, random_state=0)
    ckpts: list = []
    torch.manual_seed(0)
    model = train_classifier(
        make_mlp(),
        data.X_train,
        data.y_train,
        epochs=15,
        lr=0.1,
        batch_size=32,
        optimizer="sgd",
        checkpoints=ckpts,
        checkpoint_every=5,
    )
    return data, model, ckpts


def test_gaussian_projection_is_unbiased_and_close(flipped_run):
    data, model, ckpts = flipped_run
    X, y, Xt = data.X_train[:300], data.y_train[:300], data.X_test[:4]
    exact = TracIn(model, ckpts, 0.1, params="all").fit(X, y).explain(Xt).values
    runs = np.stack(
        [
            TracIn(model, ckpts, 0.1, params="all", projection_dim=64, random_state=s).fit(X, y).explain(Xt).values
            for s in range(50)
        ]
    )
    se = runs.std(0, ddof=1) / np.sqrt(len(runs))
    z = np.abs(runs.mean(0) - exact) / se
    assert np.mean(z < 3) >= 0.97  # 3 standard errors, allowing the expected handful of 3-sigma events
    big = TracIn(model, ckpts, 0.1, params="all", projection_dim=512, random_state=0).fit(X, y).explain(Xt).values
    assert np.corrcoef(big.ravel(), exact.ravel())[0, 1] >= 0.9
    # a projection is fixed at fit: the same training sketches serve every explain call
    tr = TracIn(model, ckpts, 0.1, params="all", projection_dim=64, random_state=3).fit(X, y)
    np.testing.assert_array_equal(tr.explain(Xt).values, tr.explain(Xt).values)


def test_fc_fast_projection_mean_and_variance():
    """(G1 a . G1 c)(G2 b . G2 e) with independent N(0, 1/s) matrices: unbiased for <a,c><b,e>,
    each factor with variance (<a,c>^2 + |a|^2 |c|^2) / s."""
    g = torch.Generator().manual_seed(0)
    a, c = torch.randn(2, 30, generator=g, dtype=torch.float64)
    b, e = torch.randn(2, 50, generator=g, dtype=torch.float64)
    s, reps = 16, 4000
    est = []
    for _ in range(reps):
        G1 = torch.randn(30, s, generator=g, dtype=torch.float64) / s**0.5
        G2 = torch.randn(50, s, generator=g, dtype=torch.float64) / s**0.5
        est.append(float(((a @ G1) @ (c @ G1)) * ((b @ G2) @ (e @ G2))))
    est = np.array(est)
    mx, my = float(a @ c), float(b @ e)
    vx = (mx**2 + float(a @ a) * float(c @ c)) / s
    vy = (my**2 + float(b @ b) * float(e @ e)) / s
    var = (vx + mx**2) * (vy + my**2) - mx**2 * my**2
    assert abs(est.mean() - mx * my) < 3 * np.sqrt(var / reps)
    assert 0.85 < est.var() / var < 1.15


def test_fc_fast_projection_in_tracin(flipped_run):
    data, model, ckpts = flipped_run
    X, y, Xt = data.X_train[:300], data.y_train[:300], data.X_test[:10]
    exact = TracIn(model, ckpts, 0.1, params="all").fit(X, y).explain(Xt).values
    # each Linear layer gets sqrt(D) x sqrt(D) factors: the variance is that of a sqrt(D)-dim sketch
    fast = (
        TracIn(model, ckpts, 0.1, params="all", projection="fc-fast", projection_dim=4096, random_state=0)
        .fit(X, y)
        .explain(Xt)
        .values
    )
    assert np.corrcoef(fast.ravel(), exact.ravel())[0, 1] >= 0.9


@pytest.mark.parametrize("backend", ["hnsw", "faiss"])
def test_index_top10_recall(flipped_run, backend):
    pytest.importorskip({"hnsw": "hnswlib", "faiss": "faiss"}[backend])  # optional extra 'index'
    data, model, ckpts = flipped_run
    exact = TracIn(model, ckpts, 0.1, params="head").fit(data.X_train, data.y_train)
    fast = TracIn(model, ckpts, 0.1, params="head", index=backend, random_state=0).fit(data.X_train, data.y_train)
    Et, Ei = exact.explain(data.X_test, top_k=10), fast.explain(data.X_test, top_k=10)
    for which in ("proponents", "opponents"):
        ref, got = getattr(Et, which)(10)[0], getattr(Ei, which)(10)[0]
        recall = np.mean([len(set(ref[t]) & set(got[t])) / 10 for t in range(len(ref))])
        assert recall >= 0.95, (which, recall)
    np.testing.assert_allclose(Ei.proponents(1)[1], Et.proponents(1)[1], rtol=1e-4, atol=1e-6)


def test_self_influence_finds_flipped_labels(flipped_run, capsys):
    data, model, ckpts = flipped_run
    si = TracIn(model, ckpts, 0.1, params="all").fit(data.X_train, data.y_train).self_influence()
    order = np.argsort(-si)
    found = data.flipped[order[: len(si) // 10]].sum() / data.flipped.sum()
    auc = roc_auc_score(data.flipped, si)
    with capsys.disabled():
        print(f"\n[TracIn self-influence, digits MLP, 10% flipped] found at 10% checked {found:.3f}, AUC {auc:.3f}")
    assert found >= 0.5 and auc >= 0.85


def test_checkpoint_errors_name_the_file_and_parameter(tmp_path):
    net = nn.Sequential(nn.Linear(4, 3))
    X, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        TracIn(net, [str(tmp_path / "nope.pt")]).fit(X, y)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        TracIn(net, [str(bad)]).fit(X, y)
    other = tmp_path / "other.pt"
    torch.save(nn.Sequential(nn.Linear(5, 3)).state_dict(), other)
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(3, 5\)"):
        TracIn(net, [str(other)]).fit(X, y)
    good = tmp_path / "good.pt"
    torch.save(net.state_dict(), good)
    assert TracIn(net, [str(good), net.state_dict()], [0.1, 0.2]).fit(X, y).explain(X).values.shape == (5, 5)
    with pytest.raises(ValueError, match="learning_rates"):
        TracIn(net, [net.state_dict()], [0.1, 0.2]).fit(X, y)
    with pytest.raises(ValueError, match="checkpoints"):
        TracIn(net, []).fit(X, y)


@pytest.mark.parametrize("projection", ["gaussian", "fc-fast"])
def test_float64_model_with_projection(projection):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X, y = torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    tr = TracIn(net, [net.state_dict()], 0.1, params="all", projection=projection, projection_dim=16, random_state=0)
    assert np.isfinite(tr.fit(X, y).explain(X[:2], y[:2]).values).all()
