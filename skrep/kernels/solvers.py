"""Linear solvers on a matvec callable: they see only ``v -> A v`` and right-hand sides."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from sklearn.exceptions import ConvergenceWarning

__all__ = [
    "LowRankPreconditioner",
    "batched_conjugate_gradient",
    "block_conjugate_gradient",
    "conjugate_gradient",
    "lissa",
    "nystrom_preconditioner",
    "power_iteration",
    "psd_inverse",
    "sketch_inverse",
    "top_eigenpairs",
]

Matvec = Callable[[torch.Tensor], torch.Tensor]


def conjugate_gradient(
    matvec: Matvec,
    b: torch.Tensor,
    *,
    precond: Matvec | None = None,
    rtol: float = 1e-10,
    atol: float = 0.0,
    max_iter: int = 1000,
    x0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int, float]:
    """Solve ``A x = b`` for a symmetric positive definite A given as ``matvec``.

    Tensors of any shape are treated as flat vectors. Stops when ``||r|| <= max(rtol ||b||, atol)``.

    Returns
    -------
    x : Tensor, like b
    n_iter : int
        Matvecs used.
    residual : float
        The final ``||b - A x||``.

    Examples
    --------
    >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    >>> x, _, _ = conjugate_gradient(lambda v: A @ v, torch.tensor([1.0, 2.0], dtype=torch.float64))
    >>> torch.allclose(A @ x, torch.tensor([1.0, 2.0], dtype=torch.float64))
    True
    """
    precond = precond or (lambda r: r)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    stop = max(rtol * float(b.norm()), atol)
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum()
    it = 0
    while it < max_iter and float(r.norm()) > stop:
        Ap = matvec(p)
        it += 1
        curvature = (p * Ap).sum()
        if curvature <= 0:
            raise ValueError(
                "conjugate_gradient met a direction of non-positive curvature: the operator "
                "is not positive definite. Add damping."
            )
        a = rz / curvature
        x.add_(p, alpha=float(a))
        r.sub_(Ap, alpha=float(a))
        z = precond(r)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, it, float(r.norm())


def batched_conjugate_gradient(
    matvec: Matvec, B: torch.Tensor, *, precond: Matvec | None = None, rtol: float = 1e-8, max_iter: int = 1000
) -> tuple[torch.Tensor, int]:
    """Solve ``A x_j = b_j`` for every row j of B (shape (m, ...)) at once, A symmetric PSD.

    A singular A is fine when each b_j lies in its range (as gradients do for a loss Hessian):
    a row whose search direction has no curvature left is finished.

    ``matvec`` maps a batch (m, ...) to (A x_j)_j. Each system keeps its own step sizes; a
    row stops moving once its residual is below ``rtol ||b_j||``.

    Returns ``(X, n_iter)``.
    """
    precond = precond or (lambda r: r)
    m = B.shape[0]

    def dot(x, y):
        return (x * y).reshape(m, -1).sum(1).reshape(m, *([1] * (B.ndim - 1)))

    X = torch.zeros_like(B)
    R = B.clone()
    stop = rtol * B.reshape(m, -1).norm(dim=1)
    Z = precond(R)
    P = Z.clone()
    rz = dot(R, Z)
    done = torch.zeros_like(rz, dtype=torch.bool)
    it = 0
    while it < max_iter:
        active = ~done & (R.reshape(m, -1).norm(dim=1) > stop).reshape_as(rz)
        if not active.any():
            break
        AP = matvec(P)
        it += 1
        curvature = dot(P, AP)
        size = dot(P, P).sqrt() * dot(AP, AP).sqrt()
        if bool(((curvature < -1e-6 * size) & active).any()):
            raise ValueError(
                "batched_conjugate_gradient met a direction of negative curvature: the "
                "operator is not positive semi-definite. Add damping."
            )
        # no curvature left along P: the rest of that row's residual is round-off in a null
        # direction of a singular (but consistent) system, so the row is finished
        flat = active & (curvature <= 1e-12 * size)
        done |= flat
        active &= ~flat
        a = torch.where(active, rz / torch.where(active, curvature, torch.ones_like(curvature)), 0)
        X += a * P
        R -= a * AP
        Z = precond(R)
        rz_new = dot(R, Z)
        P = Z + torch.where(active, rz_new / torch.where(rz == 0, torch.ones_like(rz), rz), 0) * P
        rz = rz_new
    left = ~done & (R.reshape(m, -1).norm(dim=1) > stop).reshape_as(rz)
    if bool(left.any()):
        worst = float((R.reshape(m, -1).norm(dim=1) / B.reshape(m, -1).norm(dim=1).clamp_min(1e-300)).max())
        _warn_stopped("Conjugate gradient", max_iter, int(left.sum()), m, rtol, worst)
    return X, it


def _warn_stopped(what: str, max_iter: int, left: int, m: int, rtol: float, worst: float) -> None:
    """A ConvergenceWarning, pointing at the solver's caller, for systems left above tolerance."""
    warnings.warn(
        f"{what} stopped at max_iter={max_iter} with {left} of {m} systems above rtol={rtol:g} (worst "
        f"relative residual {worst:.3g}): the solutions are that inexact. Add damping for a better "
        "conditioned system, or loosen the tolerance (cg_tol).",
        ConvergenceWarning,
        stacklevel=3,
    )


def block_conjugate_gradient(
    matvec: Matvec, B: torch.Tensor, *, precond: Matvec | None = None, rtol: float = 1e-8, max_iter: int = 1000
) -> tuple[torch.Tensor, int]:
    """Solve ``A X = B`` for all rows of B (m, dim) together in one block Krylov space, A symmetric PD.

    Breakdown-free block CG (Ji & Li 2017, after O'Leary 1980): each iteration searches the span
    of a block of directions, orthonormalized and A-conjugate to the previous block, so after j
    iterations every right-hand side has been solved over a space of dimension up to ``m j``
    shared by all of them. Against m independent CG runs this needs fewer iterations (the top of
    the spectrum is found once, for every row) at the same cost per iteration, plus an
    orthonormalization of ``dim x m`` (small next to m operator products). The rows are scaled
    to unit norm first, so that directions are dropped from the block by one absolute rule: when
    they are round-off (rows that are combinations of others) or already solved to far below
    any row's tolerance. A system leaves the iteration once solved (as in pyDVL's block CG), so
    the last iterations apply A to fewer vectors.

    Stops when every row's residual is below ``rtol ||b_j||``; warns (ConvergenceWarning) at
    ``max_iter``. Returns ``(X, n_iter)``.
    """
    precond = precond or (lambda r: r)
    m = B.shape[0]
    norms = B.reshape(m, -1).norm(dim=1)
    scale = torch.where(norms > 0, norms, torch.ones_like(norms))
    Bf = (B.reshape(m, -1) / scale[:, None]).T  # (dim, m): unit columns, one per system

    def columns(op: Matvec, V: torch.Tensor) -> torch.Tensor:
        """The operator applied to the columns of V (dim, c), passed as rows shaped like B's.

        The rows are passed contiguous: a transposed view made the network Hessian's vmapped
        products run over a batch dimension of stride 1, 25% slower.
        """
        return op(V.T.contiguous().reshape(-1, *B.shape[1:])).reshape(V.shape[1], -1).T.to(V.dtype)

    X = torch.zeros_like(Bf)
    active = torch.nonzero(norms > 0)[:, 0]  # systems still iterating
    R = Bf[:, active]
    Z = columns(precond, R)
    floor = 1e-12 * float(Z.norm(dim=0).max()) if len(active) else 0.0  # below: round-off, or solved past rtol
    P = _orthonormal(Z, floor)
    it = 0
    while it < max_iter and len(active) and P.shape[1]:
        Q = columns(matvec, P)  # A P
        it += 1
        PQ = 0.5 * (P.T @ Q + Q.T @ P)
        try:
            L = torch.linalg.cholesky(PQ)
        except RuntimeError:
            raise ValueError(
                "block_conjugate_gradient met a direction of non-positive curvature: the operator is not "
                "positive definite. Add damping."
            ) from None
        alpha = torch.cholesky_solve(P.T @ R, L)
        X[:, active] += P @ alpha
        R = R - Q @ alpha
        # solved systems leave: later products are taken for the others only
        going = R.norm(dim=0) > rtol
        active, R = active[going], R[:, going]
        if not len(active):
            break
        Z = columns(precond, R)
        beta = -torch.cholesky_solve(Q.T @ Z, L)
        P = _orthonormal(Z + P @ beta, floor)
    if len(active):
        _warn_stopped("Block conjugate gradient", max_iter, len(active), m, rtol, float(R.norm(dim=0).max()))
    return (X.T * scale[:, None]).reshape(B.shape), it


def _orthonormal(Z: torch.Tensor, floor: float) -> torch.Tensor:
    """An orthonormal basis (dim, s) of the columns of Z, without the directions whose part is below ``floor``."""
    Q, Rq = torch.linalg.qr(Z)
    return Q[:, Rq.diagonal().abs() > floor]


def psd_inverse(H: torch.Tensor, rcond: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inverse of a symmetric PSD matrix in float64.

    Cholesky when it is safely definite, else the pseudo-inverse on its range (eigenvalues
    below ``rcond * max`` dropped).

    Returns ``(H_inv, null_basis)``; ``null_basis`` (P, r) spans the dropped directions, or is
    None when nothing was dropped, so that callers can check what they lose there.
    """
    H = 0.5 * (H + H.T)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) == 0:
        pivots = torch.diagonal(L) ** 2
        if float(pivots.min()) > rcond * float(pivots.max()):
            return torch.cholesky_inverse(L), None
    evals, Q = torch.linalg.eigh(H)
    keep = evals > rcond * float(evals.abs().max())
    Qk = Q[:, keep]
    null = Q[:, ~keep] if bool((~keep).any()) else None
    return (Qk / evals[keep]) @ Qk.T, null


def power_iteration(matvec: Matvec, dim: int, dtype: torch.dtype, iters: int = 30, seed: int = 0) -> float:
    """Largest eigenvalue of a symmetric PSD operator, by a few matvecs.

    The Rayleigh quotient it returns is at most the true value: callers keep a margin (LiSSA
    uses 1.5 times it).
    """
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(1, dim, generator=g, dtype=dtype)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = matvec(v)
        lam = float((w * v).sum())
        v = w / w.norm().clamp_min(torch.finfo(dtype).tiny)
    return lam


def lissa(
    matvec_batch: Callable[[torch.Tensor, int], torch.Tensor],
    B: torch.Tensor,
    *,
    n_batches: int,
    scale: float,
    damping: float = 0.0,
    depth: int = 1000,
    seed: int = 0,
    tol: float = 0.1,
) -> torch.Tensor:
    """LiSSA (Agarwal et al. 2017): ``H^-1 b`` by a stochastic Neumann recursion.

    ``h <- b + (1 - damping/scale) h - H_j h / scale`` with a minibatch Hessian H_j each step,
    then ``h / scale``.

    The recursion converges only if ``scale`` exceeds the largest eigenvalue of ``H + damping``;
    it is checked every step and a ValueError with advice is raised as soon as it diverges,
    instead of returning a silently wrong answer.

    Parameters
    ----------
    matvec_batch : callable
        ``(V, j) -> H_j V`` for rows of V and minibatch ``j`` in ``range(n_batches)``.
    B : Tensor of shape (m, P)
        Right-hand sides, one per row.
    n_batches : int
        Number of minibatches to draw from.
    scale : float
        Above the largest eigenvalue of the damped Hessian.
    damping : float, default=0.0
    depth : int, default=1000
        Recursion steps.
    seed : int, default=0
        Seed of the minibatch draws.
    tol : float, default=0.1
        Largest relative change, between the mean estimates over the last two quarters of the
        steps, that counts as settled; above it a ConvergenceWarning is raised.

    Returns
    -------
    Tensor of shape (m, P)
        The estimates of ``(H + damping)^-1 b`` for every row b of B.

    Notes
    -----
    The estimate converges like ``(1 - lambda_min / scale)^depth`` (lambda_min the smallest
    eigenvalue of the damped Hessian) and, with minibatches, keeps fluctuating around its limit.
    The settling check compares window *means*, which average the fluctuation away but keep a
    drift, so it flags a recursion stopped too early rather than one that is only noisy. Along one
    slow direction whose remaining relative error is e, the change is about
    ``e^(1/2) / ((1 + e^(1/4)) (1 + e^(1/2)))``, whatever the convergence rate: ``tol=0.1`` flags
    e above about 3%.
    """
    g = torch.Generator().manual_seed(seed)
    h = B.clone()
    start = float(B.norm())
    # two windows of `window` steps at the end; step 0 (h = B) counts, so depth >= 1 has both
    window = max(1, depth // 4)
    earlier, later = torch.zeros_like(B), torch.zeros_like(B)
    for step in range(depth):
        if step >= depth + 1 - 2 * window:
            (earlier if step < depth + 1 - window else later).add_(h)
        j = int(torch.randint(n_batches, (1,), generator=g))
        h = B + (1 - damping / scale) * h - matvec_batch(h, j) / scale
        size = float(h.norm())
        if not size < 1e6 * max(start, 1e-300) * (step + 2):
            raise ValueError(
                f"LiSSA diverged after {step + 1} steps (|h| = {size:.3g}): lissa_scale={scale:.4g} is below "
                "the largest eigenvalue of the (minibatch) Hessian. Raise lissa_scale (e.g. 2x), add damping, or "
                "use solver='cg'."
            )
    later.add_(h)
    change = float((later - earlier).norm() / later.norm().clamp_min(torch.finfo(B.dtype).tiny))
    if change > tol:
        warnings.warn(
            f"LiSSA has not settled after {depth} steps: the mean estimate over the last {window} steps differs "
            f"from the mean over the {window} before by {change:.2g} (relative; tolerance {tol:g}). Raise "
            "lissa_depth (the recursion needs about lissa_scale / smallest eigenvalue steps; damping bounds that), "
            "raise lissa_scale if the estimate oscillates, or use solver='cg'.",
            ConvergenceWarning,
            stacklevel=2,
        )
    return h / scale


def top_eigenpairs(matvec: Matvec, dim: int, rank: int, dtype: torch.dtype, seed: int = 0):
    """The ``rank`` largest eigenpairs of a symmetric operator.

    By ARPACK's implicitly restarted Lanczos method (scipy.sparse.linalg.eigsh): the Arnoldi
    approach of Schioppa et al. (2022).
    """
    import numpy as np
    from scipy.sparse.linalg import LinearOperator, eigsh

    if rank >= dim - 1:  # Lanczos cannot return every eigenpair: take them all from the matrix
        H = matvec(torch.eye(dim, dtype=dtype)).double()
        evals, evecs = torch.linalg.eigh(0.5 * (H + H.T))
        return evals, evecs
    op = LinearOperator(
        (dim, dim),
        matvec=lambda v: matvec(torch.as_tensor(np.asarray(v).reshape(1, -1), dtype=dtype))[0].double().numpy(),
        dtype=np.float64,
    )
    v0 = np.random.default_rng(seed).normal(size=dim)
    evals, evecs = eigsh(op, k=rank, which="LA", v0=v0, tol=1e-8)
    return torch.as_tensor(evals), torch.as_tensor(evecs)


class LowRankPreconditioner:
    """``R -> R + (R U) diag(factor) U^T`` for rows R: the identity corrected on the span of U (dim, r)."""

    def __init__(self, U: torch.Tensor, factor: torch.Tensor):
        self.U, self.factor = U, factor

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        """The preconditioner applied to each row of R (m, ...)."""
        flat = R.reshape(len(R), -1)
        C = flat.to(self.U.dtype) @ self.U
        return (flat + ((C * self.factor) @ self.U.T).to(flat.dtype)).reshape(R.shape)


def nystrom_preconditioner(
    matvec: Matvec, dim: int, rank: int, shift: float, seed: int = 0
) -> tuple[LowRankPreconditioner, torch.Tensor]:
    """A randomized Nystrom preconditioner for CG on ``A = H + shift I`` (Frangella, Tropp & Udell 2023).

    One batched product of A with ``rank`` random orthonormal directions sketches the top of H's
    spectrum, ``H ~ U diag(lam) U^T``; the preconditioner maps that part of the spectrum onto
    ``lam_r + shift`` (lam_r the smallest sketched eigenvalue) and leaves the rest alone::

        P^-1 = (lam_r + shift) U (diag(lam) + shift)^-1 U^T + (I - U U^T)

    so that CG's iterations depend on the spread of the spectrum below lam_r instead of the
    largest eigenvalue, which for a network's Hessian sits in a handful of outliers. The sketch's
    core is inverted on its positive part (an indefinite H of a network away from a minimum keeps
    its positive top). The solution CG converges to is unchanged; only its iteration count is.

    Returns ``(P^-1, lam)``: P^-1 maps rows R (m, dim) to rows of ``R P^-1``; lam (r,) are the
    sketched eigenvalues of H, largest first.
    """
    g = torch.Generator().manual_seed(seed)
    omega = torch.linalg.qr(torch.randn(dim, rank, generator=g, dtype=torch.float64)).Q  # (dim, r)
    Y = matvec(omega.T.contiguous()).double().T - shift * omega  # H omega
    # a shift of the size of the products' float32 round-off keeps the core's inverse stable
    nu = dim**0.5 * torch.finfo(torch.float32).eps * float(torch.linalg.matrix_norm(Y, 2))
    Y = Y + nu * omega
    core = omega.T @ Y
    c, V = torch.linalg.eigh(0.5 * (core + core.T))
    keep = c > 1e-10 * float(c.abs().max())
    B = Y @ (V[:, keep] / c[keep].sqrt())  # B B^T = Y core^+ Y^T, the Nystrom approximation
    U, S, _ = torch.linalg.svd(B, full_matrices=False)
    lam = (S**2 - nu).clamp_min(0.0)
    U, lam = U[:, lam > 0], lam[lam > 0]
    factor = (float(lam[-1]) + shift) / (lam + shift) - 1.0 if len(lam) else lam
    return LowRankPreconditioner(U, factor), lam


def sketch_inverse(
    matvec_batch: Callable[[torch.Tensor, int], torch.Tensor],
    dim: int,
    *,
    n_batches: int,
    sketch_dim: int,
    steps: int,
    lr: float,
    damping: float = 0.0,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The randomized inverse-Hessian sketch of the TracIn paper (appendix A.1).

    Draw G (D, P) with N(0, 1/D) entries and solve ``min_S ||H S - G^T||_F^2`` by SGD whose
    gradient ``2 H_B1 (H_B2 S - G^T)`` uses two independent minibatches, so it is unbiased.
    Then ``S (G b)`` estimates ``H^-1 b`` without bias. Returns ``(S, G)``; S is (P, D).
    Nesterov momentum speeds up the slow, small-eigenvalue directions.
    """
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(sketch_dim, dim, generator=g, dtype=dtype) / sketch_dim**0.5
    S = torch.zeros(sketch_dim, dim, dtype=dtype)  # rows: columns of S^T
    velocity = torch.zeros_like(S)
    momentum = 0.9
    for _ in range(steps):
        b1, b2 = (int(j) for j in torch.randint(n_batches, (2,), generator=g))
        look = S + momentum * velocity
        resid = matvec_batch(look, b2) + damping * look - G
        grad = 2 * (matvec_batch(resid, b1) + damping * resid)
        velocity = momentum * velocity - lr * grad
        S = S + velocity
    return S.T, G
