"""The training objective of a linear head, and a Newton solver for it.

``F(theta) = mean_i L(f_i @ theta, t_i) + l2 / 2 * ||penalty * theta||^2`` for features f (n, d),
targets t (n, k), a head theta (d, k) and an optional 0/1 penalty mask (d, 1) (e.g. an
unpenalized bias row). Gradients and Hessian-vector products are closed-form: the loss's own
derivatives in the logits chained through the features, never autograd.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from sklearn.exceptions import ConvergenceWarning

from ..losses import Loss
from .leaves import LeafMatrix, to_dense
from .solvers import conjugate_gradient

__all__ = ["HeadObjective", "newton_solve"]


class HeadObjective:
    """Value, gradient and Hessian-vector products of a linear head's training objective.

    Parameters
    ----------
    features : Tensor (n, d) or LeafMatrix
        Used for the value and the gradient, in its own dtype (float64 for a stationary point
        to many digits). A tree ensemble's :class:`~skrep.kernels.leaves.LeafMatrix` is used
        matrix-free: Hessian products as ``f^T (D (f V)) / n``, never a dense (n, d) matrix.
    targets : Tensor (n, k)
    loss : Loss
    l2 : float
        Coefficient of ``l2 / 2 ||penalty * theta||^2``.
    penalty : Tensor (d, 1) or None
        0/1 rows: which rows of theta are penalized (None: all).
    mask : Tensor (d, k) or None
        Which entries of theta are free parameters (None: all).
    fast_features : Tensor (n, d) or None
        The same features in a cheaper dtype for Hessian products and the preconditioner
        (an inexact Newton direction needs no more); None: ``features``.
    """

    def __init__(
        self,
        features: torch.Tensor,
        targets: torch.Tensor,
        loss: Loss,
        l2: float = 0.0,
        penalty: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        fast_features: torch.Tensor | None = None,
    ):
        self.f = features
        self.f_fast = features if fast_features is None else fast_features
        self.t = targets
        self.loss = loss
        self.l2 = float(l2)
        self.penalty = penalty
        self.mask = mask
        self.n = len(features)
        self._gram_eig: tuple[torch.Tensor, torch.Tensor] | None = None

    def _masked(self, m: torch.Tensor) -> torch.Tensor:
        return m if self.mask is None else m * self.mask

    def _reg(self, theta: torch.Tensor) -> torch.Tensor:
        w = theta if self.penalty is None else theta * self.penalty
        return self.l2 * w

    def _back(self, G: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        # (G^T f)^T: torch runs the transposed-operand product f.T @ G several times slower
        return (G.transpose(-1, -2) @ f).transpose(-1, -2) / self.n

    def logits(self, theta: torch.Tensor) -> torch.Tensor:
        """Logits f @ theta (n, k)."""
        return self.f @ theta

    def value_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
        """Objective value, its gradient (d, k) and the logits z (n, k) at ``theta``."""
        z = self.logits(theta)
        value = self.loss.value(z, self.t).mean() + 0.5 * (theta * self._reg(theta)).sum()
        grad = self._masked(self._back(self.loss.grad(z, self.t), self.f) + self._reg(theta))
        return float(value), grad, z

    def hessian(self, z: torch.Tensor, block_bytes: int = 2**28) -> Callable[[torch.Tensor], torch.Tensor]:
        """The Hessian at the point with logits ``z``, as a map V -> H V.

        V has shape (d, k) or is a batch (m, d, k), processed in chunks of about ``block_bytes``.
        """
        f, dtype = self.f_fast, self.f_fast.dtype
        curv = self.loss.curvature(z.to(dtype))
        chunk = max(1, block_bytes // max(1, self.n * z.shape[1] * f.element_size()))

        def matvec(V: torch.Tensor) -> torch.Tensor:
            V = self._masked(V)
            Vd = V.to(dtype)
            if V.ndim == 2:
                HV = self._back(curv(f @ Vd), f)
            else:
                HV = torch.cat([self._batched(curv, Vd[s : s + chunk]) for s in range(0, len(V), chunk)])
            return self._masked(HV.to(V.dtype) + self._reg(V))

        return matvec

    def _batched(self, curv: Callable[[torch.Tensor], torch.Tensor], V: torch.Tensor) -> torch.Tensor:
        """H V for a batch V (m, d, k) as two large products instead of m small ones."""
        f = self.f_fast
        m, d, k = V.shape
        Z = (f @ V.permute(1, 0, 2).reshape(d, m * k)).reshape(self.n, m, k).permute(1, 0, 2)  # (m, n, k)
        C = curv(Z)  # broadcasts the per-sample curvature (n, k) over m
        back = C.permute(1, 0, 2).reshape(self.n, m * k).T @ f  # (m k, d)
        return back.reshape(m, k, d).transpose(1, 2) / self.n

    def explicit_hessian(self, z: torch.Tensor) -> torch.Tensor:
        """The Hessian as a (d k, d k) matrix in float64 (entry (a k + c, b k + c')).

        Built from k (k + 1) / 2 weighted Gram matrices ``f^T diag(w_cc') f / n``, where
        ``w_cc'`` are the entries of each sample's curvature in the logits. It uses the float64
        features: null directions (the softmax shift) must come out null to float64 precision
        for a pseudo-inverse to recognise them.
        """
        f = self.f
        d, k = f.shape[1], z.shape[1]
        curv = self.loss.curvature(z.to(f.dtype))
        eye = torch.eye(k, dtype=f.dtype)
        S = [curv(eye[c].expand(self.n, k)) for c in range(k)]  # S[c][i, c'] = curvature_i[c', c]
        H = torch.zeros(d, k, d, k, dtype=torch.float64)
        for c in range(k):
            for c2 in range(c, k):
                w = S[c][:, c2]
                if not bool(w.any()):
                    continue
                block = self._weighted_gram(w)
                H[:, c, :, c2] = block
                if c2 != c:
                    H[:, c2, :, c] = block.T
        H = H.reshape(d * k, d * k)
        pen = torch.ones(d, 1, dtype=torch.float64) if self.penalty is None else self.penalty.double()
        H += torch.diag((self.l2 * pen.expand(d, k)).reshape(-1))
        if self.mask is not None:
            keep = self.mask.reshape(-1).double()
            H = H * keep[:, None] * keep[None, :]
        return 0.5 * (H + H.T)

    def _weighted_gram(self, w: torch.Tensor) -> torch.Tensor:
        """``f^T diag(w) f / n`` in float64, dense (d, d), accumulated over row chunks."""
        out = torch.zeros(self.f.shape[1], self.f.shape[1], dtype=torch.float64)
        for s in range(0, self.n, 4096):
            fd = to_dense(self.f[s : s + 4096]).double()
            out += fd.T @ (fd * w[s : s + 4096, None].double())
        return out / self.n

    def preconditioner(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """Kronecker-factored approximate inverse Hessian, (C (x) A + l2 I)^-1.

        C = f^T f / n is the features' second moment (eigendecomposed once), A the mean
        per-sample curvature of the loss in the logits; for the squared loss it is exact.
        Leaf features get the inverse of the Hessian's diagonal instead: their C is as large as
        the ensemble has leaves, and nearly diagonal (the leaves of one tree never co-occur).
        """
        if isinstance(self.f_fast, LeafMatrix):
            return self._jacobi(z)
        if self._gram_eig is None:
            gram = self._back(self.f_fast, self.f_fast).T.double()
            self._gram_eig = torch.linalg.eigh(0.5 * (gram + gram.T))
        ec, Qc = (t.to(z.dtype) for t in self._gram_eig)
        k = z.shape[1]
        curv = self.loss.curvature(z)
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        A = torch.stack([curv(eye[j].expand_as(z)).mean(0) for j in range(k)], 1)
        ea, Qa = torch.linalg.eigh(0.5 * (A + A.T))
        denom = ec.clamp_min(0)[:, None] * ea.clamp_min(0)[None, :] + self.l2
        # directions with no curvature at all (the softmax shift, features that are zero on
        # every sample) get no step: amplifying their round-off would wreck CG
        inv = torch.where(denom > 1e-10 * float(denom.max()), 1.0 / denom, torch.zeros_like(denom))
        return lambda R: self._masked(Qc @ ((Qc.T @ R @ Qa) * inv) @ Qa.T)

    def _jacobi(self, z: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        k = z.shape[1]
        curv = self.loss.curvature(z)
        eye = torch.eye(k, dtype=z.dtype, device=z.device)
        per_class = torch.stack([curv(eye[j].expand_as(z))[:, j] for j in range(k)], 1)  # (n, k)
        assert isinstance(self.f_fast, LeafMatrix)
        diag = self.f_fast.column_sums(per_class.to(self.f_fast.dtype)).to(z.dtype) / self.n
        pen = 1.0 if self.penalty is None else self.penalty.to(z.dtype)
        diag = diag + self.l2 * pen
        inv = torch.where(diag > 1e-12 * float(diag.max()), 1.0 / diag, torch.zeros_like(diag))
        # the softmax shift of a row free in every class is a null direction: keep steps out of it
        free = self.mask is None or self.mask.bool().all(1)
        center = self.loss.name == "softmax" and bool(free if isinstance(free, bool) else free.any())

        def apply(R: torch.Tensor) -> torch.Tensor:
            out = self._masked(R * inv.to(R.dtype))
            if center:
                rows = slice(None) if isinstance(free, bool) else free
                out[..., rows, :] -= out[..., rows, :].mean(-1, keepdim=True)
            return out

        return apply

    def feature_range(self, rcond: float = 1e-10) -> torch.Tensor | None:
        """Orthonormal basis (d, r) of the span of the training features (for projections).

        None for leaf features: that span is not computed for them (it would need a dense
        leaves x leaves Gram matrix); their Hessians must be made definite by a penalty or damping.
        """
        if isinstance(self.f_fast, LeafMatrix):
            return None
        if self._gram_eig is None:
            gram = self._back(self.f_fast, self.f_fast).T.double()
            self._gram_eig = torch.linalg.eigh(0.5 * (gram + gram.T))
        ec, Qc = self._gram_eig
        return Qc[:, ec > rcond * float(ec.abs().max())]


def newton_solve(
    obj: HeadObjective, theta0: torch.Tensor, *, tol: float, max_iter: int, what: str = "head refit"
) -> tuple[torch.Tensor, float, int]:
    """Minimize a strictly convex head objective by preconditioned Newton-CG with backtracking.

    Stops when the largest absolute gradient entry is <= ``tol``; warns (ConvergenceWarning,
    with the gradient norm reached) when ``max_iter`` Newton steps do not get there.

    Returns ``(theta, grad_max, n_iter)``.
    """
    theta = theta0.clone()
    value, grad, z = obj.value_grad(theta)
    gmax = float(grad.abs().max())
    it = 0
    while gmax > tol and it < max_iter:
        it += 1
        # inexact Newton: a forcing term that tightens as the gradient shrinks (superlinear rate)
        try:
            step, _, _ = conjugate_gradient(
                obj.hessian(z), -grad, precond=obj.preconditioner(z), rtol=min(0.1, gmax**0.5), max_iter=200
            )
        except ValueError:
            if obj.f_fast is obj.f:
                largest = float(obj.f.abs().max()) if isinstance(obj.f, torch.Tensor) else 1.0
                raise ValueError(
                    f"The {what} met a direction of non-positive curvature even in float64: the features are too "
                    f"large for the L2 penalty (largest |feature| {largest:.3g}). Scale the inputs, or raise the "
                    "penalty (lam)."
                ) from None
            # the float32 products' round-off outweighed the penalty's curvature (large features):
            # from here on the Hessian is applied in float64
            obj.f_fast = obj.f
            obj._gram_eig = None
            it -= 1  # no step was taken
            continue
        slope = float((grad * step).sum())
        t = 1.0
        while True:
            new_value, new_grad, new_z = obj.value_grad(theta + t * step)
            if new_value <= value + 1e-4 * t * slope or t < 1e-10:
                break
            t *= 0.5
        if t < 1e-10 and new_value > value:
            break  # no descent left at float precision
        theta = theta + t * step
        value, grad, z = new_value, new_grad, new_z
        gmax = float(grad.abs().max())
    if gmax > tol:
        warnings.warn(
            f"The {what} did not reach a stationary point: the largest gradient entry is {gmax:.3g} "
            f"after {it} Newton steps (tol={tol:g}). The decomposition is only as exact as this; "
            "raise max_iter, or raise lam for a better conditioned problem.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return theta, gmax, it
