"""Reference influence values without skrep: float64 CG to a tight tolerance, in plain torch.func.

An explicit Hessian of a ~100k-parameter network is 80 GB, so the reference is conjugate gradient on
a float64 copy of the network, run until every test point's relative residual is below ``--tol``:
exact to that tolerance. It shares no code with skrep (its own flat parameter layout, per-sample
gradients by ``vmap(grad)``, Hessian-vector products by ``jvp(grad)``), so agreement with it is not
agreement of a library with itself.

Usage: python run_reference.py WORKDIR OUT [--tol 1e-8]
"""

from __future__ import annotations

import argparse

import torch
from _workload import Stopwatch, load, save
from torch.func import functional_call, grad, jvp, vmap
from torch.nn import functional as F


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--max-iter", type=int, default=5000)
    p.add_argument("--chunk", type=int, default=2000, help="training points per Hessian / gradient chunk")
    p.add_argument("--n-test", type=int, default=0, help="only the first N test points (0: all)")
    a = p.parse_args()
    watch = Stopwatch()
    spec, model, X, y, Xt, yt = load(a.workdir, torch.float64)
    if a.n_test:
        Xt, yt = Xt[: a.n_test], yt[: a.n_test]
    names = [k for k, _ in model.named_parameters()]
    shapes = [v.shape for _, v in model.named_parameters()]
    theta = torch.cat([v.detach().reshape(-1) for _, v in model.named_parameters()])
    n, reg = len(X), spec["l2"] + spec["damping"]

    def loss_sum(flat, xb, yb):
        pieces = flat.split([s.numel() for s in shapes])
        params = {k: t.reshape(s) for k, t, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(functional_call(model, params, (xb,)), yb, reduction="sum")

    def per_sample_grads(xb, yb):
        return vmap(grad(lambda f, xi, yi: loss_sum(f, xi[None], yi[None])), in_dims=(None, 0, 0))(theta, xb, yb)

    def hvp(V):
        """(Hessian of the mean loss + (l2 + damping) I) applied to the rows of V."""
        out = reg * V
        for s in range(0, n, a.chunk):
            xb, yb = X[s : s + a.chunk], y[s : s + a.chunk]
            g = grad(lambda f, xb=xb, yb=yb: loss_sum(f, xb, yb))
            out = out + vmap(lambda v, g=g: jvp(g, (theta,), (v,))[1])(V) / n
        return out

    with watch("test_gradients"):
        B = per_sample_grads(Xt, yt)
    with watch("cg"):
        # plain batched CG, one system per row, each row frozen once below tol
        Xs, R = torch.zeros_like(B), B.clone()
        P, rr = R.clone(), (R * R).sum(1)
        stop = a.tol * B.norm(dim=1)
        it = 0
        while it < a.max_iter and bool((R.norm(dim=1) > stop).any()):
            active = (R.norm(dim=1) > stop)[:, None]
            AP = hvp(P)
            it += 1
            alpha = torch.where(active, (rr / (P * AP).sum(1))[:, None], 0.0)
            Xs += alpha * P
            R -= alpha * AP
            rr_new = (R * R).sum(1)
            P = torch.where(active, R + (rr_new / rr)[:, None] * P, P)
            rr = rr_new
        residual = float((R.norm(dim=1) / B.norm(dim=1)).max())
    with watch("train_gradients_and_scores"):
        U = Xs / n  # H^-1 g_t / n
        chunks = range(0, n, a.chunk)
        values = torch.cat([U @ per_sample_grads(X[s : s + a.chunk], y[s : s + a.chunk]).T for s in chunks], 1)
    info = {
        "method": f"plain torch float64 CG to relative residual {a.tol:g} (reference)",
        "version": torch.__version__,
        "cg_iterations": it,
        "max_relative_residual": residual,
        "converged": residual <= a.tol,
        "compute_s": sum(watch.laps.values()),
        "laps_s": watch.laps,
    }
    save(a.out, values.numpy(), info)


if __name__ == "__main__":
    main()
