"""RepresenterLJE: representer points by local Jacobian expansion (Sui, Wu, Sanner, NeurIPS 2021).

The trained head theta' is (nearly) a stationary point of its training objective
``F(theta) = mean_i L(f_i theta, y_i) + l2 / 2 ||P theta||^2``. Expanding the gradient of F
to first order around a nearby anchor theta* (one gradient-ascent step from theta') gives one
Newton step back::

    theta' ~= theta* - H^-1 grad F(theta*)
            = sum_i [theta* / n - H^-1 g_i / n]  -  H^-1 (l2 P theta*)
            = sum_i W_i                          +  prior

with ``g_i`` the loss gradient of training point i at theta* and H the Hessian of F there.
So every logit of the *given* model splits over training points, ``z_c(x_t) =
sum_i <W_i[:, c], f_t> + prior_t``, with no refit and no regularizer added to the model. For a
head trained with an L2 penalty (weight decay, sklearn's C), the penalty's share of the Newton
step belongs to no training point: it is ``Explanation.prior``. With ``l2=0`` this is the
paper's algorithm.

Singular Hessians. The softmax loss does not change when a constant is added to every class's
logit, so H is singular along ``v (x) 1`` (the bias direction only, when the weights are
penalized), and features that are zero on every training point (dead ReLU units) add null
directions too. Every training gradient is orthogonal to these directions, so skrep inverts H
on its range (eigendecomposition, directions below ``rcond * lambda_max`` dropped) and the
decomposition loses nothing. ``damping`` adds ``damping * I`` first; if training gradients do
have weight in dropped directions, a warning says how much and suggests damping.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .._validation import check_choice, check_number
from ..kernels import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_DENSE_BYTES, Dense, Factored
from ..kernels.head import HeadObjective
from ..kernels.leaves import LeafMatrix, to_dense
from ..kernels.solvers import batched_conjugate_gradient
from ._head import HeadObjectiveMixin
from .base import BaseExplainer
from .sensitivity import SensitivityMapsMixin

__all__ = ["RepresenterLJE"]

_RCOND = 1e-10


class RepresenterLJE(SensitivityMapsMixin, HeadObjectiveMixin, BaseExplainer):
    """Representer values of the given model by local Jacobian expansion (RPS-LJE).

    ``values[t, i] = <W_i[:, c], f_t>`` with ``W_i = (theta* - H^-1 g_i) / n``; positive values
    support the explained class c. ``values.sum(1) + prior`` reconstructs the model's own logit.

    Parameters
    ----------
    model : nn.Module, sklearn linear model, Pipeline ending in one, or a skrep adapter
    eta : float, default=1e-2
        Step of the gradient ascent that makes the anchor, ``theta* = theta' + eta grad F``.
    l2 : 'auto' or float, default='auto'
        The model's own L2 penalty as ``l2 / 2 ||w||^2`` on the mean loss. 'auto' reads it from
        the model where the adapter knows it (LogisticRegression: 1 / (C n), Ridge: alpha / n),
        else 0. For a torch model trained with weight decay wd under SGD or Adam's coupled
        decay, pass ``l2=wd``. 0 is the paper's algorithm.
    penalize_bias : bool, default=False
        Whether the model's penalty includes the bias.
    damping : float, default=0.0
        Added to the Hessian's diagonal before inverting it.
    solver : {'auto', 'explicit', 'cg'}, default='auto'
        'explicit' builds H (d k x d k) and stores W_i for every training point (memory
        n k d); 'cg' keeps only training gradients and solves for each explained test point
        by conjugate gradient (explain then costs k times more, and ``self_influence`` one solve
        per training point). 'auto': explicit when
        ``d k <= explicit_max`` and the n k d values fit in ``max_dense_bytes``.
    explicit_max : int, default=8192
    cg_tol : float, default=1e-6
        Relative residual of the CG solves.
    target, device, batch_size, block_bytes, max_dense_bytes, n_jobs, random_state, verbose
        See :class:`~skrep.explainers.base.BaseExplainer`.

    Attributes
    ----------
    anchor_ : Tensor (d', k)
        The expansion point theta* (d' = d + 1 with a bias row).
    l2_ : float
        The penalty used.
    prior_direction_ : Tensor (d', k)
        ``-H^-1 (l2 P theta*)``: the prior of a test point is ``<prior_direction_[:, c], f_t>``.
    solver_ : str
    dropped_ : int
        Hessian directions treated as null (explicit solver).

    Examples
    --------
    >>> from sklearn.datasets import load_breast_cancer
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.preprocessing import scale
    >>> X, y = load_breast_cancer(return_X_y=True)
    >>> X = scale(X)
    >>> model = LogisticRegression(C=1.0, tol=1e-10, max_iter=10000).fit(X, y)
    >>> E = RepresenterLJE(model).fit(X, y).explain(X[:3])
    >>> bool(abs(E.values.sum(1) + E.prior - E.output).max() < 1e-4 * abs(E.output).max())
    True
    """

    _method = "lje"

    def __init__(
        self,
        model: Any,
        eta: float = 1e-2,
        l2: Any = "auto",
        penalize_bias: bool = False,
        damping: float = 0.0,
        solver: str = "auto",
        explicit_max: int = 8192,
        cg_tol: float = 1e-6,
        target: Any = None,
        device: str = "auto",
        batch_size: int = 256,
        block_bytes: int = DEFAULT_BLOCK_BYTES,
        max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
        n_jobs: int | None = None,
        random_state: Any = None,
        verbose: int = 0,
    ):
        self._store_params(locals())

    def _check_params(self) -> None:
        super()._check_params()
        check_number(self.eta, "eta", min_val=0, include_boundaries="left")
        check_number(self.damping, "damping", min_val=0, include_boundaries="left")
        if self.l2 != "auto":
            check_number(self.l2, "l2", min_val=0, include_boundaries="left")
        check_choice(self.solver, "solver", ("auto", "explicit", "cg"))
        check_number(self.cg_tol, "cg_tol", max_val=1)
        check_number(self.explicit_max, "explicit_max", integer=True)
        check_choice(self.penalize_bias, "penalize_bias", (True, False))

    def _features(self, phi: torch.Tensor) -> torch.Tensor:
        return self._with_bias_column(phi)

    def _fit_train(self, f: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, X: Any):
        loss = self.adapter_.loss
        n, k = len(f), logits.shape[1]
        d = f.shape[1]
        theta = self._head_theta()
        self.l2_ = self._resolve_l2(n)
        penalty = self._penalty_rows(d)
        self.mask_ = self._head_mask(d)
        f64 = f.double()
        obj = HeadObjective(
            f64,
            loss.targets(y, k, torch.float64),
            loss,
            l2=self.l2_,
            penalty=penalty,
            mask=self.mask_,
            fast_features=f64 if f.dtype == torch.float64 else f,
        )
        _, grad, _ = obj.value_grad(theta)
        self.anchor_ = theta + self.eta * grad  # one ascent step, true labels
        _, _, z = obj.value_grad(self.anchor_)
        residual = loss.grad(z, obj.t)  # g_i = f_i (x) residual_i
        if self.solver != "auto":
            self.solver_ = self.solver
        else:  # the explicit path stores a dense (d, k) row per training point
            fits = n * d * k * torch.empty((), dtype=self.dtype_).element_size() <= self.max_dense_bytes
            self.solver_ = "explicit" if d * k <= self.explicit_max and fits else "cg"
        if self.solver_ == "cg" and isinstance(f, LeafMatrix) and self.l2_ + float(self.damping) == 0:
            raise ValueError(
                "A tree ensemble's head Hessian is singular (the leaves of different trees are linearly "
                "dependent) and solver='cg' needs it definite: pass damping > 0 (e.g. 1e-4), or use "
                "solver='explicit' (a pseudo-inverse) where n_train x n_leaves values fit in memory."
            )
        reg = obj._reg(self.anchor_)
        if self.solver_ == "explicit":
            solve = self._explicit_inverse(obj, z, f64, residual)
            self.prior_direction_ = -solve(reg[None])[0]
            # W_i^T = (theta* - H^-1 g_i)^T / n, stored as (n, k, d) rows for the kernels; the
            # n solves run in the features' dtype (H^-1 itself was formed in float64)
            # class-major storage: explaining class c reads W[c], one contiguous (n, d) matrix
            W = torch.empty(k, n, d, dtype=self.dtype_)
            anchor = self.anchor_.to(self.dtype_)
            for s in range(0, n, 4096):
                G = self._gradients(to_dense(f[s : s + 4096]), residual[s : s + 4096].to(self.dtype_))
                W[:, s : s + 4096] = ((anchor[None] - solve(G)) / n).permute(2, 0, 1)
            return Dense(W.permute(1, 0, 2))
        # CG keeps what the Hessian needs (features, logits at the anchor) and solves per test point
        self.dropped_ = 0
        self._penalty, self._anchor_logits = penalty, z
        self._cg_op: tuple | None = None
        self.prior_direction_ = -self._cg_solve(reg[None], f)[0]
        return Factored(residual.to(self.dtype_) / -n, f)

    def _cg_operator(self, f: torch.Tensor):
        """(matvec, preconditioner, feature basis) of the damped Hessian, built once per process."""
        if getattr(self, "_cg_op", None) is None:
            f = f.double()  # CG to a tight tolerance on a nearly singular H needs float64 products
            no_targets = torch.empty(len(f), 0)
            obj = HeadObjective(f, no_targets, self.adapter_.loss, l2=self.l2_, penalty=self._penalty, mask=self.mask_)
            hess, damp = obj.hessian(self._anchor_logits), float(self.damping)
            matvec = (lambda V: hess(V) + damp * V) if damp else hess
            self._cg_op = (matvec, obj.preconditioner(self._anchor_logits), obj.feature_range())
        return self._cg_op

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_cg_op", None)  # closures; rebuilt on first use after loading
        return state

    def _explicit_inverse(self, obj: HeadObjective, z: torch.Tensor, f64: torch.Tensor, residual: torch.Tensor):
        H = obj.explicit_hessian(z)
        if self.damping:
            H += float(self.damping) * torch.eye(len(H), dtype=H.dtype)
        evals, Q = torch.linalg.eigh(H)
        top = float(evals.abs().max()) if len(evals) else 1.0
        keep = evals > _RCOND * top
        self.dropped_ = int((~keep).sum())
        Qk, inv = Q[:, keep], 1.0 / evals[keep]
        if self.dropped_:
            # every training gradient should lie in H's range; say so when one does not
            Qn = Q[:, ~keep]
            leak, total = 0.0, 0.0
            for s in range(0, len(f64), 4096):
                G = self._gradients(to_dense(f64[s : s + 4096]), residual[s : s + 4096]).reshape(-1, Q.shape[0])
                leak += float(((G @ Qn) ** 2).sum())
                total += float((G**2).sum())
            if total > 0 and leak > 1e-12 * total:
                warnings.warn(
                    f"The head Hessian is singular in {self.dropped_} directions that carry "
                    f"{(leak / total) ** 0.5:.2e} of the training gradients' norm; those parts "
                    "were dropped (pseudo-inverse). Pass damping > 0 (e.g. 1e-4) for a "
                    "regularized inverse instead.",
                    RuntimeWarning,
                    stacklevel=4,
                )
        elif float(evals.min()) < 1e-8 * top:
            warnings.warn(
                f"The head Hessian is ill-conditioned (condition number {top / float(evals.min()):.1e}); "
                "values may be noisy. Pass damping > 0 to regularize.",
                RuntimeWarning,
                stacklevel=4,
            )
        Hinv = (Qk * inv) @ Qk.T
        dk = len(H)
        Hinv_fast = Hinv.to(self.dtype_)

        def solve(B: torch.Tensor) -> torch.Tensor:  # (m, d, k) -> (m, d, k), in B's dtype
            inv_b = Hinv if B.dtype == torch.float64 else Hinv_fast
            out = torch.empty_like(B)
            for s in range(0, len(B), 4096):
                out[s : s + 4096] = (B[s : s + 4096].reshape(-1, dk) @ inv_b).reshape(-1, *B.shape[1:])
            return out

        return solve

    def _gradients(self, f: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Loss gradients in the head, f_i (x) residual_i restricted to the free entries: (m, d, k)."""
        G = f[:, :, None] * residual[:, None, :]
        return G if self.mask_ is None else G * self.mask_.to(G.dtype)

    def _cg_solve(self, B: torch.Tensor, f: torch.Tensor | None = None) -> torch.Tensor:
        matvec, precond, _ = self._cg_operator(self.train_features_ if f is None else f)
        X, _ = batched_conjugate_gradient(
            matvec, B.double(), precond=precond, rtol=self.cg_tol, max_iter=10 * B[0].numel()
        )
        return X

    def _test_side(self, f: torch.Tensor, c: torch.Tensor, X: Any = None):
        k = self.anchor_.shape[1]
        sel = self.adapter_.loss.selector(c, k, torch.float64)  # (m, k)
        prior = (f.double() @ self.prior_direction_ * sel).sum(1)
        if self.solver_ == "explicit":
            return Factored(sel.to(self.dtype_), f), None, prior
        # CG: the test side carries H^-1 (f_t (x) sel_t); the training side is -residual_i (x) f_i / n.
        # Every training gradient lies in span(training features) (x) R^k, and for softmax is
        # orthogonal to v (x) 1; the parts of f_t (x) sel_t outside that (a unit dead on every
        # training point but active here, the softmax shift) meet no gradient and are dropped,
        # so each system is consistent.
        basis = self._cg_operator(self.train_features_)[2]
        if basis is None or self.mask_ is not None:
            # leaf features, and masked heads, whose classes see different spans: H is made definite
            # by damping or a penalty instead (see _fit_train)
            ft = to_dense(f).double()
        else:
            ft = f.double() @ basis @ basis.T
        M = self._gradients(ft, sel)  # (m, d, k)
        if self.adapter_.loss.name == "softmax":
            # the shift of every class's logit along a row that is free in every class is null
            free = slice(None) if self.mask_ is None else self.mask_.bool().all(1)
            M[:, free] -= M[:, free].mean(2, keepdim=True)
        U = self._cg_solve(M)
        offset = (f.double() @ self.anchor_ * sel).sum(1) / self.n_train_
        return Dense(U.transpose(1, 2).to(self.dtype_)), offset, prior
