"""Kernels against explicit float64 computations."""

import pickle
import warnings

import numpy as np
import pytest
import scipy.optimize as scipy_opt
import torch
from sklearn.exceptions import ConvergenceWarning

from skrep.kernels import Dense, Factored, dense_scores, pair_block, pair_rows, stream_topk, total
from skrep.kernels.head import HeadObjective, newton_solve
from skrep.kernels.leaves import LeafMatrix, rowdot
from skrep.kernels.solvers import (
    batched_conjugate_gradient,
    block_conjugate_gradient,
    conjugate_gradient,
    nystrom_preconditioner,
)
from skrep.losses import get_loss


def _factored(n, k, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return Factored(torch.randn(n, k, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype))


def _full(e):
    return (e.u if isinstance(e, Dense) else e.a[:, :, None] * e.b[:, None, :]).reshape(len(e), -1).numpy()


@pytest.mark.parametrize("kind", ["ff", "df", "fd", "dd"])
@pytest.mark.parametrize("selector", [False, True])
def test_pair_block_and_rows_equal_explicit_inner_products(kind, selector):
    k, d = 3, 5
    g = torch.Generator().manual_seed(1)
    fac_t, fac_n = _factored(4, k, d, 2), _factored(6, k, d, 3)
    if selector:  # one class per row, scaled: the class-grouped fast path
        fac_t = Factored(
            torch.nn.functional.one_hot(torch.tensor([2, 0, 2, 1]), k)
            * torch.tensor([[1.5], [-2.0], [0.5], [1.0]], dtype=torch.float64),
            fac_t.b,
        )
        fac_n = Factored(torch.nn.functional.one_hot(torch.tensor([1, 1, 0, 2, 0, 1]), k).double(), fac_n.b)
    den_t = Dense(torch.randn(4, k, d, generator=g, dtype=torch.float64))
    den_n = Dense(torch.randn(6, k, d, generator=g, dtype=torch.float64))
    test = fac_t if kind[0] == "f" else den_t
    train = fac_n if kind[1] == "f" else den_n
    np.testing.assert_allclose(pair_block(test, train).numpy(), _full(test) @ _full(train).T, rtol=1e-12)
    rows = train.rows(0, 4)
    np.testing.assert_allclose(pair_rows(test, rows).numpy(), (_full(test) * _full(rows)).sum(1), rtol=1e-12)
    np.testing.assert_allclose(total(train).u.reshape(-1).numpy(), _full(train).sum(0), rtol=1e-12)


@pytest.mark.parametrize("n_train,block_bytes", [(1003, 4096), (997, 20_000), (50, 10**9)])
@pytest.mark.parametrize("dense_test", [False, True])
def test_stream_topk_equals_dense_argsort(n_train, block_bytes, dense_test):
    k, d, m, top = 4, 7, 33, 10
    train = _factored(n_train, k, d, 0, torch.float32)
    test = _factored(m, k, d, 1, torch.float32)
    if dense_test:
        test = Dense(test.a[:, :, None] * test.b[:, None, :])
    offset = torch.linspace(-1, 1, m)
    ref = _full(test).astype(np.float64) @ _full(train).astype(np.float64).T + offset.numpy()[:, None]
    tk = stream_topk(test, train, top, offset=offset, block_bytes=block_bytes)
    order = np.argsort(-ref, axis=1)
    np.testing.assert_array_equal(tk.pro_index.numpy(), order[:, :top])
    np.testing.assert_array_equal(tk.opp_index.numpy(), order[:, ::-1][:, :top])
    np.testing.assert_allclose(tk.pro_value.numpy(), np.take_along_axis(ref, order[:, :top], 1), rtol=1e-4, atol=1e-4)
    full = dense_scores(test, train, offset=offset, block_bytes=block_bytes)
    np.testing.assert_allclose(full.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_topk_larger_than_train_set_keeps_everything():
    train, test = _factored(5, 2, 3, 0), _factored(2, 2, 3, 1)
    tk = stream_topk(test, train, 50)
    assert tk.pro_index.shape == (2, 5)
    assert sorted(tk.pro_index[0].tolist()) == list(range(5))


def test_dense_refused_above_budget_with_advice():
    train, test = _factored(1000, 2, 3, 0), _factored(100, 2, 3, 1)
    with pytest.raises(ValueError, match="top_k"):
        dense_scores(test, train, max_dense_bytes=1000)


def test_conjugate_gradient_solves_spd_system():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(30, 30, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.1 * torch.eye(30, dtype=torch.float64)
    b = torch.randn(30, generator=g, dtype=torch.float64)
    x, it, res = conjugate_gradient(lambda v: A @ v, b, rtol=1e-12, max_iter=500)
    np.testing.assert_allclose(x.numpy(), np.linalg.solve(A.numpy(), b.numpy()), rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="positive definite"):
        conjugate_gradient(lambda v: -v, b)


@pytest.mark.parametrize("loss_name,k", [("softmax", 3), ("logistic", 1), ("squared", 2)])
def test_head_objective_gradient_and_hvp_match_autograd(loss_name, k):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(40, 5, generator=g, dtype=torch.float64)
    loss = get_loss(loss_name)
    t = loss.link(torch.randn(40, k, generator=g, dtype=torch.float64))
    penalty = torch.ones(5, 1, dtype=torch.float64)
    penalty[-1] = 0
    obj = HeadObjective(f, t, loss, l2=0.3, penalty=penalty)
    theta = torch.randn(5, k, generator=g, dtype=torch.float64, requires_grad=True)
    V = torch.randn(5, k, generator=g, dtype=torch.float64)
    F = loss.value(f @ theta, t).mean() + 0.15 * ((theta * penalty) ** 2).sum()
    (grad,) = torch.autograd.grad(F, theta, create_graph=True)
    (hv,) = torch.autograd.grad((grad * V).sum(), theta)
    value, my_grad, z = obj.value_grad(theta.detach())
    assert value == pytest.approx(float(F.detach()), rel=1e-12)
    torch.testing.assert_close(my_grad, grad.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.hessian(z)(V), hv, rtol=1e-10, atol=1e-12)


def test_newton_solve_reaches_scipy_minimum():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 6, generator=g, dtype=torch.float64) * torch.logspace(-1, 1, 6, dtype=torch.float64)
    loss = get_loss("softmax")
    t = loss.link(torch.randn(200, 4, generator=g, dtype=torch.float64) * 2)
    obj = HeadObjective(f, t, loss, l2=1e-3)
    theta, gmax, _ = newton_solve(obj, torch.zeros(6, 4, dtype=torch.float64), tol=1e-11, max_iter=50)
    assert gmax <= 1e-11

    def fun(w):
        value, grad, _ = obj.value_grad(torch.as_tensor(w.reshape(6, 4)))
        return value, grad.numpy().ravel()

    ref = scipy_opt.minimize(
        fun, np.zeros(24), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 0, "maxiter": 10000}
    )
    np.testing.assert_allclose(theta.numpy().ravel(), ref.x, rtol=1e-5, atol=1e-6)


def test_batched_cg_warns_when_it_stops_short():
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64))
    A = Q @ torch.diag(torch.logspace(0, 6, 30, dtype=torch.float64)) @ Q.T
    B = torch.randn(3, 30, dtype=torch.float64)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        X, _ = batched_conjugate_gradient(lambda V: V @ A, B, rtol=1e-10, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        X, _ = batched_conjugate_gradient(lambda V: V @ A, B, rtol=1e-10, max_iter=200)
    torch.testing.assert_close(X, torch.linalg.solve(A, B.T).T, rtol=1e-6, atol=1e-8)


def _outlier_operator(dim=400, outliers=12, shift=0.05, seed=0):
    """H + shift I with H = a few large eigenvalues over a bulk near zero: a network Hessian's shape."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    top = torch.logspace(3, 1, outliers, dtype=torch.float64)
    lam = torch.cat([top, torch.rand(dim - outliers, generator=g, dtype=torch.float64) * 0.5])
    H = Q @ torch.diag(lam) @ Q.T
    return H + shift * torch.eye(dim, dtype=torch.float64), lam


def test_nystrom_preconditioner_finds_the_top_and_cuts_cg_iterations():
    A, lam = _outlier_operator()
    B = torch.randn(5, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    P, sketched = nystrom_preconditioner(lambda V: V @ A, 400, 30, shift=0.05, seed=0)
    # a Nystrom sketch is a lower bound of the operator, close at the very top
    assert (sketched[:12] <= lam[:12] * (1 + 1e-9)).all()
    np.testing.assert_allclose(sketched[:3].numpy(), lam[:3].numpy(), rtol=0.03)
    X_plain, it_plain = batched_conjugate_gradient(lambda V: V @ A, B, rtol=1e-10, max_iter=2000)
    X_pre, it_pre = batched_conjugate_gradient(lambda V: V @ A, B, precond=P, rtol=1e-10, max_iter=2000)
    exact = torch.linalg.solve(A, B.T).T
    torch.testing.assert_close(X_pre, exact, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(X_plain, exact, rtol=1e-7, atol=1e-9)
    assert it_pre <= it_plain / 2, (it_pre, it_plain)
    # a symmetric positive definite map, as CG needs
    M = P(torch.eye(400, dtype=torch.float64))
    torch.testing.assert_close(M, M.T)
    assert float(torch.linalg.eigvalsh(M).min()) > 0


def test_nystrom_preconditioner_keeps_the_positive_top_of_an_indefinite_hessian():
    A, _ = _outlier_operator(shift=0.0)
    A = A - 0.2 * torch.eye(400, dtype=torch.float64)  # a few negative eigenvalues in the bulk
    P, lam = nystrom_preconditioner(lambda V: V @ A, 400, 30, shift=0.0, seed=0)
    assert (lam > 0).all() and float(lam[0]) == pytest.approx(1000 - 0.2, rel=1e-3)
    assert float(torch.linalg.eigvalsh(P(torch.eye(400, dtype=torch.float64))).min()) > 0


def test_weighted_leaf_matrix_products_equal_its_dense_form():
    g = torch.Generator().manual_seed(0)
    n, T, L = 50, 4, 12
    index = torch.stack([torch.randint(3 * t, 3 * t + 3, (n,), generator=g) for t in range(T)], 1)
    index[3, 1] = L  # an inactive entry: counts as zero whatever its value
    index[index == 2] = 1  # leaf 2: one no row reaches
    for ones in (False, True):
        for scale in (None, torch.rand(n, generator=g, dtype=torch.float64)):
            values = torch.randn(n, T, generator=g, dtype=torch.float64)
            A = LeafMatrix(index, L, ones=ones, scale=scale, values=values, dtype=torch.float64)
            pickled_size = len(pickle.dumps(A))
            ref = torch.zeros(n, L + 1, dtype=torch.float64)
            for i in range(n):
                for t in range(T):
                    if index[i, t] < L:
                        ref[i, index[i, t]] += values[i, t]
            ref[:, L] = 1.0 if ones else 0.0
            ref = (ref if ones else ref[:, :L]) * (1.0 if scale is None else scale[:, None])
            torch.testing.assert_close(A.to_dense(), ref)
            W = torch.randn(ref.shape[1], 3, generator=g, dtype=torch.float64)
            torch.testing.assert_close(A @ W, ref @ W)
            G = torch.randn(2, n, generator=g, dtype=torch.float64)
            torch.testing.assert_close(G @ A, G @ ref)
            # rows rescaled share A's transposed index; a pickled copy builds its own
            w_rows = torch.rand(n, generator=g, dtype=torch.float64)
            torch.testing.assert_close(G[:1] @ (A * w_rows), G[:1] @ (ref * w_rows[:, None]))
            torch.testing.assert_close(G @ pickle.loads(pickle.dumps(A)), G @ ref)
            assert len(pickle.dumps(A)) == pickled_size  # the cache is not shipped
            assert (A * w_rows)._cache is A._cache and A.float()._cache is A._cache
            torch.testing.assert_close(G.float() @ A.float(), (G @ ref).float())  # new values: own entries
            old = {k: v for k, v in A.__dict__.items() if k != "_cache"} | {"_csr_cache": None}
            unpickled = LeafMatrix.__new__(LeafMatrix)
            unpickled.__setstate__(old)  # a pickle from before the transposed index
            torch.testing.assert_close(G @ unpickled, G @ ref)
            torch.testing.assert_close(A.cooccurrence(A[10:30]), ref @ ref[10:30].T)
            torch.testing.assert_close(rowdot(A, A), (ref * ref).sum(1))
            dense = torch.randn(n, ref.shape[1], generator=g, dtype=torch.float64)
            torch.testing.assert_close(rowdot(A, dense), (ref * dense).sum(1))
            w = torch.rand(n, 2, generator=g, dtype=torch.float64)
            torch.testing.assert_close(A.column_sums(w), ((ref * ref)[:, :, None] * w[:, None, :]).sum(0))


def test_block_cg_solves_every_row_in_fewer_iterations():
    A, _ = _outlier_operator()
    B = torch.randn(20, 400, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    exact = torch.linalg.solve(A, B.T).T
    X_rows, it_rows = batched_conjugate_gradient(lambda V: V @ A, B, rtol=1e-10, max_iter=2000)
    X_block, it_block = block_conjugate_gradient(lambda V: V @ A, B, rtol=1e-10, max_iter=2000)
    torch.testing.assert_close(X_block, exact, rtol=1e-7, atol=1e-9)
    assert it_block <= it_rows / 3, (it_block, it_rows)
    # rows that are combinations of others (a dependent block) and more rows than dimensions
    dependent = torch.cat([B[:5], B[:5] + B[5:10], B[:3] * 2.0])
    X_dep, _ = block_conjugate_gradient(lambda V: V @ A, dependent, rtol=1e-10)
    torch.testing.assert_close(X_dep, torch.linalg.solve(A, dependent.T).T, rtol=1e-7, atol=1e-9)
    small = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    M = torch.eye(4, dtype=torch.float64) * 2 + 0.5
    X_small, it_small = block_conjugate_gradient(lambda V: V @ M, small, rtol=1e-12)
    torch.testing.assert_close(X_small, torch.linalg.solve(M, small.T).T) and None
    assert it_small <= 2
    with pytest.raises(ValueError, match="positive definite"):
        block_conjugate_gradient(lambda V: -V, B)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        block_conjugate_gradient(lambda V: V @ A, B, rtol=1e-12, max_iter=2)
