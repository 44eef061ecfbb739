"""InfluenceFunctions: how the loss at a test point would change without a training point (Koh & Liang 2017).

Removing training point i from ``F(theta) = (1/n) sum_j L_j(theta) + l2/2 ||theta||^2`` moves the
optimum by ``(1/n) H^-1 g_i`` (H: the Hessian of F plus ``damping``, g_i: the loss gradient of
point i), so the test loss changes by::

    value(t, i) = (1/n) g_t^T H^-1 g_i

Positive: removing i would raise the test loss (i is a proponent); the value estimates that
change. The same sign and scale hold for every solver:

- ``exact``: H built explicitly in float64 (closed form for a head, Hessian-vector products
  column by column for a network, refused above ``explicit_max`` parameters), inverted by
  Cholesky; when H is singular (the softmax shift, dead units) or, for a network away from a
  minimum, indefinite, it is inverted on its positive eigenspace, with a warning that says how
  much of the training gradients was dropped (raise ``damping`` then);
- ``cg``: block conjugate gradient on the test gradients, matrix-free: the test points of one
  call share one Krylov space, so 100 of them need a few iterations where one alone needs
  tens (a ConvergenceWarning with the residual reached when it stops at its iteration cap);
  optionally preconditioned by a randomized Nystrom sketch of the top ``rank`` eigenpairs,
  built once at fit;
- ``lissa``: the stochastic Neumann recursion, with its scale checked against the largest
  eigenvalue, a clear error when it diverges and a ConvergenceWarning when it has not settled
  by ``lissa_depth``;
- ``arnoldi``: H^-1 restricted to its top ``rank`` eigenpairs (Schioppa et al. 2022), by Lanczos;
- ``sketch``: the randomized inverse-Hessian sketch of the TracIn paper's appendix.

Group influence (``explain_group``): order 1 sums the members' influences; order 2 (after Basu,
You & Feizi 2020) accounts for the group's own curvature: the optimum without group U moves by
``(1/n) (H - p H_U)^-1 sum_{i in U} g_i`` with ``p = |U| / n``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._validation import check_choice, check_number, check_params_selection
from ..adapters.torch_grads import hessian_operator, labelled_batches, per_sample_gradients, plan_groups
from ..kernels import DEFAULT_BLOCK_BYTES, DEFAULT_MAX_DENSE_BYTES, Dense, Factored, Sum, flatten
from ..kernels.head import HeadObjective
from ..kernels.leaves import to_dense
from ..kernels.solvers import (
    Matvec,
    batched_conjugate_gradient,
    block_conjugate_gradient,
    lissa,
    nystrom_preconditioner,
    power_iteration,
    psd_inverse,
    sketch_inverse,
    top_eigenpairs,
)
from ._head import HeadObjectiveMixin
from .base import BaseExplainer

__all__ = ["InfluenceFunctions"]


class InfluenceFunctions(HeadObjectiveMixin, BaseExplainer):
    """Influence functions over the head or the whole network, with five inverse-Hessian solvers.

    Parameters
    ----------
    model : nn.Module, sklearn linear model, Pipeline ending in one, or a skrep adapter
    params : 'head', 'all' or list of str, default='head'
        'head': the linear head, closed-form gradients (any adapter). 'all' or module /
        parameter names: torch models, per-sample gradients by torch.func.
    solver : {'exact', 'cg', 'lissa', 'arnoldi', 'sketch'}, default='exact'
    damping : float, default=0.0
        Added to the Hessian. Influence functions assume a minimum; a non-convex network
        usually needs some (e.g. 1e-3).
    l2 : 'auto' or float, default='auto'
        The model's own L2 penalty (``l2/2 ||theta||^2`` on the mean loss), part of H. 'auto'
        reads it where the adapter knows it (sklearn models), else 0.
    penalize_bias : bool, default=False
        Whether that penalty covers the head's bias (params='head').
    rank : int or None, default=None
        The top of the Hessian's spectrum a solver works with. 'arnoldi': the eigenpairs H is
        inverted on (None: 100). 'cg': the rank of a Nystrom preconditioner (one Hessian product
        with this many vectors at fit; it changes the iteration count, not the answer), which
        pays when few test points are explained per call; None or 0: none.
    lissa_scale : float or None, default=None
        Scale of the LiSSA recursion; None: 1.5 times the largest eigenvalue (power iteration).
    lissa_depth : int, default=2000
    stochastic_batch_size : int, default=256
        Minibatch size of the Hessian products in 'lissa' and 'sketch' for ``params='head'``;
        over network parameters the minibatches are the forward batches (``batch_size``).
    sketch_dim : int or None, default=None
        Rows of the sketch's random matrix; None: 4 times the number of parameters, at most 8192.
    sketch_steps : int, default=300
    cg_tol : float, default=1e-8
    explicit_max : int, default=8192
        Largest number of parameters for which 'exact' builds H.
    target, device, batch_size, block_bytes, max_dense_bytes, n_jobs, random_state, verbose
        See :class:`~skrep.explainers.base.BaseExplainer`.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> X, y = make_classification(200, 5, random_state=0)
    >>> model = LogisticRegression(C=1.0).fit(X, y)
    >>> inf = InfluenceFunctions(model).fit(X, y)
    >>> inf.explain(X[:3], y[:3]).values.shape
    (3, 200)
    """

    _method = "influence"
    _explains_loss = True

    def __init__(
        self,
        model: Any,
        params: Any = "head",
        solver: str = "exact",
        damping: float = 0.0,
        l2: Any = "auto",
        penalize_bias: bool = False,
        rank: int | None = None,
        lissa_scale: float | None = None,
        lissa_depth: int = 2000,
        stochastic_batch_size: int = 256,
        sketch_dim: int | None = None,
        sketch_steps: int = 300,
        cg_tol: float = 1e-8,
        explicit_max: int = 8192,
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
        check_choice(self.solver, "solver", ("exact", "cg", "lissa", "arnoldi", "sketch"))
        check_number(self.damping, "damping", min_val=0, include_boundaries="left")
        if self.l2 != "auto":
            check_number(self.l2, "l2", min_val=0, include_boundaries="left")
        check_choice(self.penalize_bias, "penalize_bias", (True, False))
        for name in ("lissa_depth", "stochastic_batch_size", "sketch_steps", "explicit_max"):
            check_number(getattr(self, name), name, integer=True)
        if self.rank is not None:
            lowest = 0 if self.solver == "cg" else 1  # 0: plain CG
            check_number(self.rank, "rank", integer=True, min_val=lowest, include_boundaries="left")
        if self.lissa_scale is not None:
            check_number(self.lissa_scale, "lissa_scale")
        if self.sketch_dim is not None:
            check_number(self.sketch_dim, "sketch_dim", integer=True)
        check_number(self.cg_tol, "cg_tol", max_val=1)
        check_params_selection(self.params)
        if self.params != "head" and not isinstance(self.model, torch.nn.Module):
            raise ValueError(f"params={self.params!r} needs a torch model; use params='head' for this model.")

    # ---- gradients and the Hessian in one flat layout -------------------------------------------
    def _features(self, phi: torch.Tensor) -> torch.Tensor:
        return self._with_bias_column(phi) if self.params == "head" else phi.to(self.dtype_)

    def _fit_train(self, f, logits, y, X):
        n = len(f)
        self.l2_ = self._resolve_l2(n)
        if self.params == "head":
            loss = self.adapter_.loss
            k = logits.shape[1]
            theta = self._head_theta()
            self._penalty = self._penalty_rows(f.shape[1])
            self._mask = self._head_mask(f.shape[1])
            self._head_shape = tuple(theta.shape)
            self._targets_t = loss.targets(y, k, torch.float64)
            self._z = f.double() @ theta
            emb: Factored | Sum = Factored(loss.grad(self._z, self._targets_t).to(self.dtype_), f)
        else:
            self._groups = plan_groups(self.model, self.params)
            adapter = self._torch_adapter
            self._batches = labelled_batches(adapter.batches(X), y)
            grads = per_sample_gradients(self.model, self._groups, self._batches, adapter.loss)
            emb = Sum(tuple(grads[key] for key, _, _ in self._groups.shapes))
        self.n_params_ = self._size()
        self._ops = None
        self._prepare_solver(emb)
        return emb

    def _size(self) -> int:
        if self.params == "head":
            return self._head_shape[0] * self._head_shape[1]
        return self._groups.size

    def _operators(self) -> tuple[Matvec, Callable[[torch.Tensor, int], torch.Tensor], int]:
        """(full matvec, minibatch matvec, number of minibatches), built once per process."""
        if self._ops is None:
            damp = float(self.damping)
            if self.params == "head":
                d, k = self._head_shape
                f = self.train_features_.double()  # iterative solvers need float64 products

                def objective(idx):
                    return self._head_objective(f[idx], l2=self.l2_)

                full = self._head_objective(f, l2=self.l2_).hessian(self._z)
                chunks = torch.arange(len(f)).split(self.stochastic_batch_size)
                parts = [objective(idx).hessian(self._z[idx]) for idx in chunks]

                def matvec(V):
                    return full(V.reshape(len(V), d, k)).reshape(len(V), -1) + damp * V

                def batch_matvec(V, j):
                    return parts[j](V.reshape(len(V), d, k)).reshape(len(V), -1)

                self._ops = (matvec, batch_matvec, len(parts))
            else:
                op = hessian_operator(self.model, self._groups, self._batches, self._torch_adapter.loss, self.l2_)
                self._ops = (lambda V: op(V) + damp * V, lambda V, j: op(V, [j]), len(self._batches))
        return self._ops

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ops"] = None  # closures over the training data; rebuilt on first use after loading
        return state

    def _explicit_hessian(self) -> torch.Tensor:
        P = self.n_params_
        if self.explicit_max < P:
            raise ValueError(
                f"solver='exact' would build a {P} x {P} Hessian (explicit_max={self.explicit_max}); use "
                "solver='cg' (exact to its tolerance, matrix-free) or raise explicit_max."
            )
        if self.params == "head":
            obj = self._head_objective(self.train_features_.double(), l2=self.l2_)
            return obj.explicit_hessian(self._z) + float(self.damping) * torch.eye(P, dtype=torch.float64)
        matvec = self._operators()[0]
        cols = [matvec(torch.eye(P, dtype=torch.float64)[s : s + 256]) for s in range(0, P, 256)]
        H = torch.cat(cols).double()
        return 0.5 * (H + H.T)

    def _prepare_solver(self, emb: Factored | Sum) -> None:
        """Solver state that does not depend on the test points."""
        seed = int(check_random_state(self.random_state).randint(2**31))
        self._seed = seed
        P = self.n_params_
        if self.solver == "exact":
            H = self._explicit_hessian()
            self._Hinv, null = psd_inverse(H)
            self._Hinv_scores = self._Hinv.to(self.dtype_)  # for test embeddings, kept in the scores' dtype
            self.dropped_ = 0 if null is None else null.shape[1]
            if null is not None:
                G = self._flat(emb)
                leak = float((G @ null).norm() / G.norm().clamp_min(1e-300))
                if leak > 1e-6:
                    self._warn_dropped(float(torch.linalg.eigvalsh(null.T @ H @ null).min()), leak)
        elif self.solver == "cg":
            self._precond = None
            if self.rank and 2 * self.rank < P:
                shift = float(self.damping) + self.l2_
                self._precond, _ = nystrom_preconditioner(self._operators()[0], P, self.rank, shift, seed)
        elif self.solver == "arnoldi":
            matvec = self._operators()[0]
            evals, evecs = top_eigenpairs(matvec, P, 100 if self.rank is None else self.rank, torch.float64, seed)
            keep = evals > 1e-10 * float(evals.abs().max())
            self._eig = (evals[keep], evecs[:, keep])
        elif self.solver == "lissa":
            matvec = self._operators()[0]
            top = power_iteration(matvec, P, torch.float64, seed=seed)
            self.lissa_scale_ = float(self.lissa_scale) if self.lissa_scale is not None else 1.5 * top
            if self.lissa_scale_ <= top:
                raise ValueError(
                    f"lissa_scale={self.lissa_scale_:.4g} is not above the largest eigenvalue of the damped "
                    f"Hessian ({top:.4g}): the LiSSA recursion would diverge. Use lissa_scale >= {1.5 * top:.3g} "
                    "or leave it None."
                )
        elif self.solver == "sketch":
            matvec, batch_matvec, n_batches = self._operators()
            top = power_iteration(matvec, P, torch.float64, seed=seed)
            dim = self.sketch_dim or min(4 * P, 8192)
            self._sketch = sketch_inverse(
                batch_matvec,
                P,
                n_batches=n_batches,
                sketch_dim=dim,
                steps=self.sketch_steps,
                lr=0.25 / top**2,
                damping=float(self.damping),
                seed=seed,
            )

    def _warn_dropped(self, lowest: float, leak: float) -> None:
        """Say that the exact inverse left out directions of H, which damping was used, and what to pass."""
        damping = float(self.damping)
        if lowest < 0:  # a network away from a minimum: H has negative curvature
            what = f"indefinite (its lowest eigenvalue is {lowest:.3g})"
            advice = f"pass damping >= {damping - 2 * lowest:.2g} to make it positive definite"
        else:
            what = "singular"
            advice = "raise damping" if damping else "pass damping > 0 (e.g. 1e-3)"
        warnings.warn(
            f"The Hessian with damping={damping:g} is {what}: {self.dropped_} of its {self.n_params_} directions, "
            f"carrying {leak:.2e} of the training gradients' norm, were dropped (inverse on its positive "
            f"eigenspace). To keep them, {advice}.",
            RuntimeWarning,
            stacklevel=5,
        )

    def _solver_failed(self, error: ValueError) -> ValueError:
        """A solver's error, with the damping used and which parameter to change."""
        return ValueError(
            f"InfluenceFunctions(solver={self.solver!r}, damping={float(self.damping):g}): {error} The Hessian of "
            "a network away from a minimum has negative curvature: raise damping (e.g. tenfold), or use "
            "solver='exact', which inverts it on its positive eigenspace with a warning."
        )

    def _head_objective(self, f: Any, l2: float = 0.0) -> HeadObjective:
        """The head's objective over features f, for its Hessian (the targets do not enter it)."""
        no_targets = torch.empty(len(f), 0)
        return HeadObjective(f, no_targets, self.adapter_.loss, l2=l2, penalty=self._penalty, mask=self._mask)

    def _flat(self, emb: Factored | Dense | Sum) -> torch.Tensor:
        """Gradients in the flat parameter layout (m, P), float64."""
        if self.params == "head":
            assert isinstance(emb, Factored)
            G = to_dense(emb.b).double()[:, :, None] * emb.a.double()[:, None, :]
            return (G if self._mask is None else G * self._mask).reshape(len(emb), -1)
        return flatten(emb).double()

    def _flat_train_gradients(self) -> torch.Tensor:
        return self._flat(self.train_embedding_)

    def _solve(self, B: torch.Tensor, scores_dtype: bool = False) -> torch.Tensor:
        """H^-1 B for rows of B (m, P); with ``scores_dtype``, the exact solver's product in the scores' dtype."""
        if self.solver == "exact":
            return B.to(self._Hinv_scores.dtype) @ self._Hinv_scores if scores_dtype else B @ self._Hinv
        if self.solver == "arnoldi":
            evals, evecs = self._eig
            return ((B @ evecs) / evals) @ evecs.T  # the eigenvalues already include the damping
        if self.solver == "sketch":
            S, G = self._sketch
            return (B @ G.T) @ S.T
        matvec, batch_matvec, n_batches = self._operators()
        try:
            if self.solver == "cg":
                X, _ = block_conjugate_gradient(
                    matvec, B, precond=self._precond, rtol=self.cg_tol, max_iter=20 * B.shape[1]
                )
                return X
            return lissa(
                batch_matvec,
                B,
                n_batches=n_batches,
                scale=self.lissa_scale_,
                damping=float(self.damping),
                depth=self.lissa_depth,
                seed=self._seed,
            )
        except ValueError as e:  # negative curvature (CG) or a diverging recursion (LiSSA)
            raise self._solver_failed(e) from e

    def _gradients(self, X: Any, f: torch.Tensor, c: torch.Tensor) -> Factored | Sum:
        if self.params == "head":
            loss = self.adapter_.loss
            z = f.double() @ self._head_theta()
            return Factored(loss.grad(z, loss.targets(c, z.shape[1], torch.float64)).to(self.dtype_), f)
        adapter = self._torch_adapter
        grads = per_sample_gradients(self.model, self._groups, labelled_batches(adapter.batches(X), c), adapter.loss)
        return Sum(tuple(grads[key] for key, _, _ in self._groups.shapes))

    def _embed_solution(self, U: torch.Tensor) -> Dense | Sum:
        """H^-1 g_t / n, flat (m, P), in the training embedding's layout."""
        m = len(U)
        if self.params == "head":
            d, k = self._head_shape
            return Dense(U.reshape(m, d, k).transpose(1, 2).to(self.dtype_))
        terms, start = [], 0
        for _, k, d in self._groups.shapes:
            terms.append(Dense(U[:, start : start + k * d].reshape(m, k, d).to(self.dtype_)))
            start += k * d
        return Sum(tuple(terms))

    def _test_side(self, f, c, X=None):
        G = self._flat(self._gradients(X, f, c))
        # the test embedding is kept in the scores' dtype: the exact solve runs in it too
        return self._embed_solution(self._solve(G, scores_dtype=True) / self.n_train_), None, None

    # ---- public extras ----------------------------------------------------------------------------
    def self_influence(self) -> np.ndarray:
        """``g_i^T H^-1 g_i / n`` for each training point at its own label: (n_train,)."""
        check_is_fitted(self, "train_embedding_")
        out = torch.empty(self.n_train_, dtype=torch.float64)
        for s in range(0, self.n_train_, 1024):
            G = self._flat(self.train_embedding_.rows(s, s + 1024))
            out[s : s + 1024] = (self._solve(G) * G).sum(1)
        return (out / self.n_train_).numpy()

    def explain_group(self, X: Any, y: Any = None, groups: Sequence[Any] = (), order: int = 1) -> np.ndarray:
        """Estimated change of each test loss when each group of training points is removed.

        Parameters
        ----------
        X, y : test inputs and labels (default: predicted labels)
        groups : sequence of index arrays (or boolean masks) into the training set
        order : {1, 2}
            1: the sum of the members' influences. 2: with the group's own curvature,
            ``(1/n) g_t^T (H - p H_U)^-1 sum_{i in U} g_i``, solved by conjugate gradient.

        Returns
        -------
        ndarray of shape (n_test, n_groups); positive: removing the group raises the test loss.
        """
        check_is_fitted(self, "train_embedding_")
        if isinstance(order, bool) or order not in (1, 2) or not isinstance(order, int):
            raise ValueError(f"order must be 1 or 2; got {order!r}.")
        if len(groups) == 0:
            raise ValueError("groups must hold at least one group of training indices.")
        phi, logits, labels = self._forward(X, fitted=True)
        c = self._explained(logits, None, y if y is not None else labels, len(phi))
        Gt = self._flat(self._gradients(X, self._features(phi), c))
        Gtrain = self._flat_train_gradients()
        n = self.n_train_
        members = [_as_indices(g, n) for g in groups]
        if order == 2 and any(len(idx) >= n for idx in members):
            raise ValueError("A group holds every training point: nothing would be left to fit (order=2).")
        sums = torch.stack([Gtrain[idx].sum(0) for idx in members])  # (n_groups, P)
        if order == 1:
            return (Gt @ self._solve(sums).T / n).numpy()
        matvec = self._operators()[0]
        cols = []
        for idx, rhs in zip(members, sums, strict=True):
            p = len(idx) / n
            group_h = self._group_hessian(idx)

            def mv(V, group_h=group_h, p=p):
                return matvec(V) - p * group_h(V)

            x, _ = batched_conjugate_gradient(mv, rhs[None], rtol=self.cg_tol, max_iter=20 * len(rhs))
            cols.append(x[0])
        return (Gt @ torch.stack(cols).T / n).numpy()

    def _group_hessian(self, idx: torch.Tensor) -> Matvec:
        """Hessian of the mean loss over the group only (no penalty, no damping)."""
        if self.params == "head":
            d, k = self._head_shape
            hess = self._head_objective(self.train_features_[idx]).hessian(self._z[idx])
            return lambda V: hess(V.reshape(len(V), d, k)).reshape(len(V), -1)
        batches = labelled_batches(
            self._torch_adapter.batches(_rows(self._batches, idx)), torch.cat([t for _, t in self._batches])[idx]
        )
        return hessian_operator(self.model, self._groups, batches, self._torch_adapter.loss, 0.0)


def _as_indices(group: Any, n: int) -> torch.Tensor:
    g = np.asarray(group)
    if g.dtype == bool:
        if g.shape != (n,):
            raise ValueError(f"A boolean group must have one entry per training point ({n}); got {g.shape}.")
        g = np.flatnonzero(g)
    if g.ndim != 1 or len(g) == 0 or g.dtype.kind not in "iu" or g.min() < 0 or g.max() >= n:
        raise ValueError(f"Each group must be a non-empty array of training indices in [0, {n}) or a mask.")
    return torch.as_tensor(np.unique(g), dtype=torch.long)  # a point is removed once


def _rows(batches: list, idx: torch.Tensor) -> torch.Tensor:
    if isinstance(batches[0][0], dict):
        raise ValueError("order=2 group influence over network parameters needs tensor inputs, not dict batches.")
    return torch.cat([x for x, _ in batches])[idx]
