"""Linear solvers on a matvec callable: they see only ``v -> A v`` and right-hand sides."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["conjugate_gradient", "batched_conjugate_gradient"]

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
    return X, it
