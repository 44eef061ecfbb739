"""skrep: InfluenceFunctions(params="all", solver="cg") over every parameter of the saved MLP.

Usage: python run_skrep.py WORKDIR OUT [--cg-tol 1e-4]
"""

from __future__ import annotations

import argparse

from _workload import Stopwatch, load, save

import skrep
from skrep import InfluenceFunctions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--cg-tol", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=2000, help="training points per forward batch")
    a = p.parse_args()
    watch = Stopwatch()
    spec, model, X, y, Xt, yt = load(a.workdir)
    inf = InfluenceFunctions(
        model,
        params="all",
        solver="cg",
        l2=spec["l2"],
        damping=spec["damping"],
        cg_tol=a.cg_tol,
        batch_size=a.batch_size,
        device="cpu",
    )
    with watch("fit"):
        inf.fit(X, y)
    with watch("explain"):
        values = inf.explain(Xt, yt).values  # (n_explain, n_train), skrep's convention already
    info = {
        "method": f"skrep InfluenceFunctions(params='all', solver='cg', cg_tol={a.cg_tol:g})",
        "version": skrep.__version__,
        "n_params": inf.n_params_,
        "compute_s": sum(watch.laps.values()),
        "laps_s": watch.laps,
    }
    save(a.out, values, info)


if __name__ == "__main__":
    main()
