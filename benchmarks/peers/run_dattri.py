"""dattri: IFAttributorCG over every parameter of the saved MLP (run in dattri's own venv).

Conventions (dattri 0.3.0, read from its source): ``attribute`` returns ``g_i^T H^-1 g_t`` with shape
(n_train, n_test), positive = helpful, H the Hessian of ``loss_func`` over the cached training loader
plus ``regularization * I``. So skrep's value is that matrix transposed and divided by n. The loss is
the mean cross-entropy; the model's L2 penalty ``l2/2 ||theta||^2`` has Hessian ``l2 I``, so it goes
into ``regularization`` with the damping (the per-sample gradients are then of the loss alone, as in
skrep).

Two settings follow from its code, not from taste:

- the Hessian loader is one batch of all training points: ``transform_test_rep`` runs one CG per
  batch of that loader and *adds* the solutions, which is ``H^-1 v`` only for a single batch;
- its CG runs exactly ``max_iter`` iterations from ``x0 = v`` (``tol`` is accepted but unused), and
  ``attribute`` re-solves for every (train batch, test batch) pair, so the training points are
  attributed in ``--train-batch`` sized batches (default: all at once, one solve).

Its task's parameters require grad, so outside ``torch.no_grad()`` every CG iteration's result keeps
the autograd graph of its Hessian-vector product (measured: +0.22 GB per iteration over 10,000
points); ``--no-grad`` calls ``attribute`` under ``torch.no_grad()``, which the torch.func
transforms inside it ignore.

Usage: python run_dattri.py WORKDIR OUT [--max-iter 50] [--train-batch N] [--no-grad] [--mode rev-fwd] [--n-test N]
"""

from __future__ import annotations

import argparse
import contextlib
from importlib.metadata import version

import torch
from _workload import Stopwatch, load, save
from dattri.algorithm.influence_function import IFAttributorCG
from dattri.task import AttributionTask
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--max-iter", type=int, default=50)
    p.add_argument("--train-batch", type=int, default=0, help="0: all training points in one batch")
    p.add_argument("--n-test", type=int, default=0, help="explain only the first N test points (0: all)")
    p.add_argument("--no-grad", action="store_true", help="call attribute() under torch.no_grad()")
    p.add_argument("--mode", default="rev-rev", choices=["rev-rev", "rev-fwd"], help="its HVP autodiff mode")
    a = p.parse_args()
    watch = Stopwatch()
    spec, model, X, y, Xt, yt = load(a.workdir)
    n = len(X)
    if a.n_test:
        Xt, yt = Xt[: a.n_test], yt[: a.n_test]

    def loss_func(params, data):
        x, t = data
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), t)

    with watch("fit"):
        task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
        attributor = IFAttributorCG(
            task=task, device="cpu", max_iter=a.max_iter, mode=a.mode, regularization=spec["l2"] + spec["damping"]
        )
        attributor.cache(DataLoader(TensorDataset(X, y), batch_size=n, shuffle=False))
    with watch("attribute"), torch.no_grad() if a.no_grad else contextlib.nullcontext():
        scores = attributor.attribute(
            DataLoader(TensorDataset(X, y), batch_size=a.train_batch or n, shuffle=False),
            DataLoader(TensorDataset(Xt, yt), batch_size=len(Xt), shuffle=False),
        )
    info = {
        "method": f"dattri IFAttributorCG(max_iter={a.max_iter}, mode={a.mode!r}), train batch {a.train_batch or n}"
        + (", under torch.no_grad()" if a.no_grad else ""),
        "version": version("dattri"),
        "n_test": len(Xt),
        "compute_s": sum(watch.laps.values()),
        "laps_s": watch.laps,
    }
    save(a.out, scores.detach().double().T.numpy() / n, info)


if __name__ == "__main__":
    main()
