"""skrep.parallel: chunked scoring gives the same bits on one thread, n_jobs threads, joblib
backends and a Dask cluster, including one that loses a worker mid-explain."""

import os
import signal
import threading
import time

import joblib
import numpy as np
import pytest
import torch

from skrep import InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn
from skrep.kernels import Dense, Factored, Sum
from skrep.kernels.embeddings import norm_bound
from skrep.parallel import all_scores, chunk_bounds, topk_scores

distributed = pytest.importorskip("distributed")

BLOCK = 2**10  # tiny blocks: many chunks even for the small digits set


def _all_results(ex, X, y, **kw):
    top = ex.explain(X, y, top_k=6, **kw)
    return [ex.explain(X, y, **kw).values, *top.top.values()]


def _assert_identical(a, b):
    for u, v in zip(a, b, strict=True):
        assert u.dtype == v.dtype and np.array_equal(u, v)


def _assert_same_up_to_rounding(a, b):
    """Other processes may run torch with another number of threads, and BLAS may then sum in
    another order: the same top-k indices, values equal to float32 rounding."""
    for u, v in zip(a, b, strict=True):
        if u.dtype.kind == "i":
            assert np.array_equal(u, v)
        else:
            np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6 * np.abs(u).max())


@pytest.fixture(scope="module")
def explainers(digits, digits_mlp):
    X, y = digits.X_train[:400], digits.y_train[:400]
    ckpt = {k: v.clone() for k, v in digits_mlp.state_dict().items()}
    made = {
        "rps": RepresenterPoints(digits_mlp, block_bytes=BLOCK),
        "lje": RepresenterLJE(digits_mlp, block_bytes=BLOCK),
        "if": InfluenceFunctions(digits_mlp, solver="cg", damping=1e-3, block_bytes=BLOCK),
        "tracin-head": TracIn(digits_mlp, [ckpt, ckpt], [0.1, 0.05], block_bytes=BLOCK),
        "tracin-all": TracIn(digits_mlp, [ckpt], 0.1, params="all", block_bytes=BLOCK),
    }
    return {name: ex.fit(X, y) for name, ex in made.items()}


@pytest.fixture(scope="module")
def test_points(digits):
    return digits.X_test[:40], digits.y_test[:40]


def _random_embedding(kind, n, gen):
    if kind == "factored":
        return Factored(torch.randn(n, 3, generator=gen), torch.randn(n, 16, generator=gen))
    if kind == "dense":
        return Dense(torch.randn(n, 3, 16, generator=gen))
    return Sum((Factored(torch.randn(n, 2, generator=gen), torch.randn(n, 5, generator=gen)),))


@pytest.mark.parametrize("kind", ["factored", "dense", "sum"])
def test_chunked_topk_is_the_exact_topk(kind):
    gen = torch.Generator().manual_seed(0)
    test, train = _random_embedding(kind, 30, gen), _random_embedding(kind, 5000, gen)
    block = 2**12
    assert len(chunk_bounds(test, train, block, 8)) > 5
    full = all_scores(test, train, block_bytes=block, max_dense_bytes=2**30)
    # an independent dense computation
    if kind == "factored":
        ref = (test.a @ train.a.T) * (test.b @ train.b.T)
    elif kind == "dense":
        ref = test.u.flatten(1) @ train.u.flatten(1).T
    else:
        ref = (test.terms[0].a @ train.terms[0].a.T) * (test.terms[0].b @ train.terms[0].b.T)
    torch.testing.assert_close(full, ref, rtol=1e-5, atol=1e-5)
    tk = topk_scores(test, train, 8, block_bytes=block, n_jobs=2)
    for largest, index, value in ((True, tk.pro_index, tk.pro_value), (False, tk.opp_index, tk.opp_value)):
        want_v, want_i = torch.topk(full, 8, dim=1, largest=largest)
        assert torch.equal(index, want_i)
        if kind == "dense":  # full rows: the blocks' own values
            assert torch.equal(value, want_v)
        else:  # rank-1 rows: the chosen pairs computed again one by one in float64, rounded once
            exact = torch.gather(_exact(kind, test, train), 1, index)
            torch.testing.assert_close(value, exact.float(), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("kind", ["factored", "dense", "sum"])
def test_norm_bound_holds_for_every_pair(kind):
    gen = torch.Generator().manual_seed(1)
    test, train = _random_embedding(kind, 20, gen), _random_embedding(kind, 300, gen)
    s, w = norm_bound(test, train)
    scores = _exact(kind, test, train).abs()
    # norms in the embeddings' float32: the bound holds up to their rounding (searches add a 1e-3 margin)
    assert bool((scores <= s[:, None] * w[None, :] * (1 + 1e-5)).all())
    # Cauchy-Schwarz is attained by a row paired with itself (Factored, Sum: rank-1 rows)
    if kind != "dense":
        s_self, w_self = norm_bound(train, train)
        torch.testing.assert_close(torch.diagonal(_exact(kind, train, train)), s_self * w_self, rtol=1e-5, atol=0)


def test_pruned_topk_scores_fewer_rows_and_finds_the_same():
    import skrep.parallel as par

    gen = torch.Generator().manual_seed(2)
    n = 20_000
    # a few training rows carry most of the norm, as mislabelled points' loss gradients do
    scale = torch.where(torch.rand(n, generator=gen) < 0.05, 10.0, 0.01)
    # head influence's shapes: rank-1 training gradients, full (k x d) test rows H^-1 g_t
    train = Factored(torch.randn(n, 3, generator=gen) * scale[:, None], torch.randn(n, 16, generator=gen))
    test = Dense(torch.randn(50, 3, 16, generator=gen))
    scored = []
    real = par._topk

    def counting(test_part, train_part, *args):
        scored.append(len(test_part) * len(train_part))
        return real(test_part, train_part, *args)

    par._topk = counting
    try:
        tk = topk_scores(test, train, 10, block_bytes=2**16)
    finally:
        par._topk = real
    assert sum(scored) < 0.2 * 50 * n, sum(scored) / (50 * n)  # most rows were never scored
    full = torch.einsum("mcd,nc,nd->mn", test.u.double(), train.a.double(), train.b.double())
    for largest, index in ((True, tk.pro_index), (False, tk.opp_index)):
        assert torch.equal(index, torch.topk(full, 10, dim=1, largest=largest).indices)


def _exact(kind, test, train):
    """The dense scores in float64."""
    if kind == "dense":
        return test.u.double().flatten(1) @ train.u.double().flatten(1).T
    test, train = (e if kind == "factored" else e.terms[0] for e in (test, train))
    return (test.a.double() @ train.a.double().T) * (test.b.double() @ train.b.double().T)


@pytest.mark.parametrize("name", ["rps", "lje", "if", "tracin-head", "tracin-all"])
def test_n_jobs_and_joblib_backends_give_identical_bits(name, explainers, test_points):
    ex = explainers[name]
    want = _all_results(ex.set_params(n_jobs=None), *test_points)
    _assert_identical(want, _all_results(ex.set_params(n_jobs=2), *test_points))
    _assert_identical(want, _all_results(ex.set_params(n_jobs=-1), *test_points))
    with joblib.parallel_backend("loky", n_jobs=2):  # processes: chunks are pickled there and back
        _assert_same_up_to_rounding(want, _all_results(ex.set_params(n_jobs=None), *test_points))
    ex.set_params(n_jobs=None)


def test_bad_n_jobs_and_client(explainers, test_points):
    with pytest.raises(ValueError, match="n_jobs must be None, -1 or a non-zero integer"):
        RepresenterPoints(explainers["rps"].model, n_jobs=0).fit(*test_points)
    with pytest.raises(TypeError, match="client must be a dask.distributed.Client"):
        explainers["rps"].explain(test_points[0], top_k=3, client="localhost:8786")


@pytest.fixture(scope="module")
def cluster():
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=40
        ) as lc,
        distributed.Client(lc) as client,
    ):
        yield client


@pytest.mark.parametrize("name", ["rps", "tracin-head"])
def test_dask_local_cluster_equals_single_process(name, explainers, test_points, cluster):
    ex = explainers[name]
    want = _all_results(ex, *test_points)
    _assert_same_up_to_rounding(want, _all_results(ex, *test_points, client=cluster))
    # the training chunks were scattered on the first call and are reused, not sent again
    held = set(cluster.who_has())
    with joblib.parallel_backend("dask"):
        _assert_same_up_to_rounding(want, _all_results(ex, *test_points))
    assert held <= set(cluster.who_has())


def test_dask_worker_killed_mid_explain_gives_the_exact_result(explainers):
    gen = torch.Generator().manual_seed(1)
    train = Factored(torch.randn(300_000, 4, generator=gen), torch.randn(300_000, 48, generator=gen))
    test = Factored(torch.randn(400, 4, generator=gen), torch.randn(400, 48, generator=gen))
    want = topk_scores(test, train, 10, block_bytes=2**20)
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", silence_logs=50
        ) as lc,
        distributed.Client(lc) as client,
    ):
        box = {}
        worker = threading.Thread(
            target=lambda: box.update(got=topk_scores(test, train, 10, block_bytes=2**20, client=client))
        )
        worker.start()
        deadline = time.monotonic() + 60
        while not any(client.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.005)
        pids = client.run(os.getpid)
        busy = max(client.processing().items(), key=lambda kv: len(kv[1]))[0]
        os.kill(pids[busy], signal.SIGKILL)
        killed_while_running = worker.is_alive()
        worker.join(timeout=120)
        assert not worker.is_alive(), "explain did not finish within 120 s after a worker was killed"
        assert killed_while_running
        # the chunks held by the killed worker are gone: a later call sends them again
        pids = client.run(os.getpid)
        os.kill(next(iter(pids.values())), signal.SIGKILL)
        time.sleep(2)  # for the nanny to report the death (a call in between waits on the dead worker)
        again = topk_scores(test, train, 10, block_bytes=2**20, client=client)
    fields = ("pro_index", "pro_value", "opp_index", "opp_value")
    for got in (box["got"], again):
        _assert_same_up_to_rounding(*([getattr(t, f).numpy() for f in fields] for t in (want, got)))
