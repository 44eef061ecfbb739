"""skrep: InfluenceFunctions(params="all", solver="cg") over every parameter of the saved MLP.

``--solver`` picks another solver (exact, lissa, arnoldi, sketch); ``--params head`` restricts it
to the final layer. ``--method rps`` runs RepresenterPoints (the predicted class explained) and
``--method tracin`` TracIn over the checkpoints listed in spec.json (``checkpoints``,
``learning_rates``), for the runs next to dattri's RPSAttributor and TracInAttributor.

Usage: python run_skrep.py WORKDIR OUT [--cg-tol 1e-4] [--solver cg|exact|lissa|arnoldi|sketch]
       [--params all|head] [--method influence|rps|tracin]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _workload import Stopwatch, load, parse_and_warm_up, save

import skrep
from skrep import InfluenceFunctions, RepresenterPoints, TracIn


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--cg-tol", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=2000, help="training points per forward batch")
    p.add_argument("--method", default="influence", choices=["influence", "rps", "tracin"])
    p.add_argument("--solver", default="cg", choices=["cg", "exact", "lissa", "arnoldi", "sketch"])
    p.add_argument("--params", default="all", choices=["all", "head"])
    p.add_argument("--rank", type=int, default=None, help="arnoldi: eigenpairs kept (100); cg: Nystrom rank (none)")
    p.add_argument("--lissa-depth", type=int, default=2000)
    p.add_argument("--lissa-scale", type=float, default=None, help="None: 1.5 x the largest eigenvalue")
    p.add_argument("--lam", type=float, default=3e-3, help="rps: L2 strength of the refit")
    p.add_argument("--projection-dim", type=int, default=None, help="tracin: random projection dim")
    p.add_argument("--seed", type=int, default=0)
    a = parse_and_warm_up(p)
    watch = Stopwatch()
    spec, model, X, y, Xt, yt = load(a.workdir)
    info: dict = {}
    if a.method == "rps":
        explainer = RepresenterPoints(model, lam=a.lam, batch_size=a.batch_size, device="cpu")
        desc = f"skrep RepresenterPoints(lam={a.lam:g})"
        yt = None  # the predicted class
    elif a.method == "tracin":
        checkpoints = [str(Path(a.workdir) / c) for c in spec["checkpoints"]]
        explainer = TracIn(
            model,
            checkpoints,
            spec["learning_rates"],
            params=a.params,
            projection_dim=a.projection_dim,
            batch_size=a.batch_size,
            random_state=a.seed,
            device="cpu",
        )
        desc = f"skrep TracIn(params={a.params!r}, projection_dim={a.projection_dim})"
    else:
        explainer = InfluenceFunctions(
            model,
            params=a.params,
            solver=a.solver,
            l2=spec["l2"],
            damping=spec["damping"],
            cg_tol=a.cg_tol,
            rank=a.rank,
            lissa_depth=a.lissa_depth,
            lissa_scale=a.lissa_scale,
            batch_size=a.batch_size,
            random_state=a.seed,
            device="cpu",
        )
        desc = f"skrep InfluenceFunctions(params={a.params!r}, solver={a.solver!r}"
        desc += {"cg": f", cg_tol={a.cg_tol:g}, rank={a.rank})", "arnoldi": f", rank={a.rank})"}.get(a.solver, ")")
        if a.solver == "lissa":
            desc = desc[:-1] + f", lissa_depth={a.lissa_depth}, batch {a.batch_size})"
    with watch("fit"):
        explainer.fit(X, y)
    with watch("explain"):
        values = explainer.explain(Xt, yt).values  # (n_explain, n_train), skrep's convention already
    if a.method == "influence":
        info["n_params"] = explainer.n_params_
        if a.solver == "lissa":
            info["lissa_scale"] = explainer.lissa_scale_
    info = {
        "method": desc,
        "version": skrep.__version__,
        **info,
        "compute_s": sum(watch.laps.values()),
        "laps_s": watch.laps,
    }
    save(a.out, values, info)


if __name__ == "__main__":
    main()
