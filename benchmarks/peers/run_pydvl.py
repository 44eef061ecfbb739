"""pyDVL: CgInfluence over every parameter of the saved MLP (run in pyDVL's own venv; it pins numpy < 2).

Conventions (pyDVL 0.10.0, read from its source): ``influences(x_test, y_test, x, y)`` in mode ``Up``
is ``<H^-1 g_test, g_train>`` with shape (n_test, n_train), H the mean over the fit loader's batches of
the Hessian of ``loss`` (a batch mean) plus ``regularization * I``. So skrep's value is that matrix
divided by n. The model's L2 penalty has Hessian ``l2 I`` and goes into ``regularization`` with the
damping. The fit loader's batches are all of one size, so the mean over batches is the mean over
points.

Its CG starts from ``x0 = b`` and stops a row when ``||r|| < max(rtol^2 c, atol^2)``, where ``c`` is an
entry of ``torch.linalg.norm(b_matrix, dim=0)`` (a column norm, not the row's), so the stop is not
relative to the row; ``--maxiter`` bounds the iterations per test point instead (the same bound
as dattri's). ``--block`` selects its block CG (``solve_simultaneously=True``).

``--method`` picks another of its solvers over the same operator (default ``cg``):
``direct`` (DirectInfluence: the explicit Hessian of the batch-mean loss, averaged over the fit loader's
batches, and ``torch.linalg.solve``), ``lissa`` (LissaInfluence: ``x <- v + (1 - dampen) x - (H_batch
+ regularization) x / scale`` on one random batch of the fit loader per step, for ``--maxiter`` steps or
until its relative residual is below ``--rtol``; dampen 0, so the regularization enters only through
H) and ``arnoldi`` (ArnoldiInfluence, ``--rank`` eigenpairs by scipy's ARPACK Lanczos).

Usage: python run_pydvl.py WORKDIR OUT [--maxiter 50] [--block] [--method cg|direct|lissa|arnoldi]
       [--scale S] [--rank R]
"""

from __future__ import annotations

import argparse
from importlib.metadata import version

import torch
from _workload import Stopwatch, load, parse_and_warm_up, save
from pydvl.influence.torch import ArnoldiInfluence, CgInfluence, DirectInfluence, LissaInfluence
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--maxiter", type=int, default=50)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--block", action="store_true")
    p.add_argument("--method", default="cg", choices=["cg", "direct", "lissa", "arnoldi"])
    p.add_argument("--scale", type=float, default=10.0, help="lissa: its 'scale' (default: its own, 10)")
    p.add_argument("--rank", type=int, default=10, help="arnoldi: its 'rank' (default: its own, 10)")
    p.add_argument("--batch-size", type=int, default=2000, help="training points per Hessian batch")
    p.add_argument("--chunk", type=int, default=1000, help="training points per influences_from_factors call")
    a = parse_and_warm_up(p)
    watch = Stopwatch()
    spec, model, X, y, Xt, yt = load(a.workdir)
    n, batch = len(X), min(a.batch_size, len(X))
    if n % batch:
        raise ValueError("--batch-size must divide n_train: pyDVL averages the batches' Hessians unweighted.")
    reg = spec["l2"] + spec["damping"]
    with watch("fit"):
        if a.method == "cg":
            influence = CgInfluence(
                model,
                F.cross_entropy,
                regularization=reg,
                rtol=a.rtol,
                atol=a.atol,
                maxiter=a.maxiter,
                solve_simultaneously=a.block,
                warn_on_max_iteration=False,
            )
            desc = (
                f"pyDVL CgInfluence(rtol={a.rtol:g}, atol={a.atol:g}, maxiter={a.maxiter}, "
                f"solve_simultaneously={a.block})"
            )
        elif a.method == "direct":
            influence = DirectInfluence(model, F.cross_entropy, regularization=reg)
            desc = "pyDVL DirectInfluence()"
        elif a.method == "lissa":
            influence = LissaInfluence(
                model,
                F.cross_entropy,
                regularization=reg,
                maxiter=a.maxiter,
                scale=a.scale,
                rtol=a.rtol,
                warn_on_max_iteration=False,
            )
            desc = f"pyDVL LissaInfluence(maxiter={a.maxiter}, scale={a.scale:g}, rtol={a.rtol:g}), batch {batch}"
        else:
            influence = ArnoldiInfluence(model, F.cross_entropy, regularization=reg, rank=a.rank)
            desc = f"pyDVL ArnoldiInfluence(rank={a.rank})"
        influence.fit(DataLoader(TensorDataset(X, y), batch_size=batch, shuffle=False))
    with watch("influence_factors"):
        factors = influence.influence_factors(Xt, yt)
    with watch("influences_from_factors"):
        c = a.chunk  # training points in chunks, as pyDVL's sequential calculator does: all at once is n x P floats
        parts = [influence.influences_from_factors(factors, X[s : s + c], y[s : s + c]) for s in range(0, n, c)]
        scores = torch.cat(parts, 1)
    info = {
        "method": desc,
        "version": version("pydvl"),
        "compute_s": sum(watch.laps.values()),
        "laps_s": watch.laps,
    }
    save(a.out, scores.detach().double().numpy() / n, info)


if __name__ == "__main__":
    main()
