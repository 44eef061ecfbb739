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

Other methods (``--method``, default ``cg``; run_all.py uses them on a small MLP, see its docstring):

- ``explicit``: IFAttributorExplicit, the Hessian of the mean loss over one batch of all training points
  by ``torch.func.hessian`` and ``torch.linalg.solve`` in float32 (its ``regularization`` as CG's);
- ``lissa``: IFAttributorLiSSA. Its recursion ``x <- v + (1 - damping) x - H_batch x / scaling`` returns
  ``x / scaling``: ``(H + scaling * damping)^-1 v``, so the regularization goes in as
  ``damping = (l2 + damping) / scaling`` (``--lissa-scale``, ``--lissa-depth``, ``--lissa-batch``);
- ``arnoldi``: IFAttributorArnoldi, ``--rank`` top eigenpairs of ``H + regularization`` from
  ``--arnoldi-iter`` Arnoldi iterations; both sides are projected, so the inner product is
  ``g_i^T V diag(1/lambda) V^T g_t``;
- ``rps``: RPSAttributor (representer points, L2 refit of the final layer's *weight*, no bias, by
  gradient descent with backtracking for up to ``--rps-epochs`` epochs). Its weights are
  ``alpha_i = grad_z_i(mean loss) / (-2 lam n) = dL_i/dz_i / (-2 lam n^2)``: 1/n of the paper's
  (whose refit is stationary at ``theta = sum_i alpha_i f_i``), so skrep's value is the output
  transposed times n. It explains the class given as the test "label": the runner gives it the
  model's predicted class (what skrep explains by default). ``--rps-bias-feature`` hands it the same
  network with the final layer's bias folded into a constant input feature (``[phi, 1] @ [W, b]^T``,
  the same logits), which is skrep's refit: then both solve the same objective;
- ``tracin``: TracInAttributor over the checkpoints listed in spec.json (``checkpoints``,
  ``learning_rates``), ``sum_k lr_k <g_i, g_t>``, the same convention as skrep (output transposed).
  Its ``projector_kwargs=None`` does *not* switch projection off (it then projects onto 512 random
  normal directions, the class default, even where the gradients have fewer entries), so the exact run
  passes ``proj_type='identity'``; ``--tracin-proj-dim D`` projects. (The constructor also updates the
  module-level default dict in place, so one instance's projector settings leak into every later one
  made in the same process.) ``--layers head`` restricts it to the final layer.

Usage: python run_dattri.py WORKDIR OUT [--max-iter 50] [--train-batch N] [--no-grad] [--mode rev-fwd] [--n-test N]
       [--method cg|explicit|lissa|arnoldi|rps|tracin] [--layers all|head]
"""

from __future__ import annotations

import argparse
import contextlib
from importlib.metadata import version
from pathlib import Path

import torch
from _workload import Stopwatch, load, parse_and_warm_up, save
from dattri.algorithm.influence_function import (
    IFAttributorArnoldi,
    IFAttributorCG,
    IFAttributorExplicit,
    IFAttributorLiSSA,
)
from dattri.task import AttributionTask
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class _AppendOne(nn.Module):
    def forward(self, x):
        return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _bias_as_feature(model: nn.Sequential) -> nn.Sequential:
    """The same network with the final Linear's bias folded into a constant input feature."""
    last = model[-1]
    head = nn.Linear(last.in_features + 1, last.out_features, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.cat([last.weight, last.bias[:, None]], 1))
    return nn.Sequential(*model[:-1], _AppendOne(), head).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workdir")
    p.add_argument("out")
    p.add_argument("--method", default="cg", choices=["cg", "explicit", "lissa", "arnoldi", "rps", "tracin"])
    p.add_argument("--max-iter", type=int, default=50)
    p.add_argument("--train-batch", type=int, default=0, help="0: all training points in one batch")
    p.add_argument("--n-test", type=int, default=0, help="explain only the first N test points (0: all)")
    p.add_argument("--no-grad", action="store_true", help="call attribute() under torch.no_grad()")
    p.add_argument("--mode", default="rev-rev", choices=["rev-rev", "rev-fwd"], help="its HVP autodiff mode")
    p.add_argument("--layers", default="all", choices=["all", "head"], help="all parameters or the final layer's")
    p.add_argument("--lissa-scale", type=float, default=50.0, help="its 'scaling' (default: its own, 50)")
    p.add_argument("--lissa-depth", type=int, default=5000, help="its 'recursion_depth'")
    p.add_argument("--lissa-batch", type=int, default=1, help="its 'batch_size' (Hessian minibatch)")
    p.add_argument("--rank", type=int, default=100, help="arnoldi: its 'proj_dim' (eigenpairs kept)")
    p.add_argument("--arnoldi-iter", type=int, default=100, help="arnoldi: its 'max_iter'")
    p.add_argument("--rps-lam", type=float, default=0.003, help="rps: its 'l2_strength'")
    p.add_argument("--rps-epochs", type=int, default=3000, help="rps: its 'epoch'")
    p.add_argument("--rps-bias-feature", action="store_true", help="rps: fold the bias into a constant feature")
    p.add_argument("--tracin-proj-dim", type=int, default=0, help="tracin: random projection dim (0: none)")
    a = parse_and_warm_up(p)
    watch = Stopwatch()
    spec, model, X, y, Xt, yt = load(a.workdir)
    n = len(X)
    if a.n_test:
        Xt, yt = Xt[: a.n_test], yt[: a.n_test]
    last = [name for name, _ in model.named_parameters()][-2:]  # the final Linear's weight and bias
    layer_name = last if a.layers == "head" else None
    reg = spec["l2"] + spec["damping"]

    def loss_func(params, data):
        x, t = data
        # .long(): its LiSSA collate_fn casts every data item after the first to float, labels included
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), t.long())

    def loader(Xs, ys, batch):
        return DataLoader(TensorDataset(Xs, ys), batch_size=batch, shuffle=False)

    scale, extra = 1.0 / n, {}  # skrep's value = output.T * scale
    if a.method == "rps":
        from dattri.algorithm.rps import RPSAttributor

        net = _bias_as_feature(model) if a.rps_bias_feature else model
        with torch.no_grad():
            explained = net(Xt).argmax(1)  # the predicted class, as skrep explains by default
        with watch("fit"):
            task = AttributionTask(
                loss_func=loss_func,
                model=net,
                checkpoints=net.state_dict(),
                target_func=lambda logits, targets: F.cross_entropy(logits, targets),
            )
            attributor = RPSAttributor(
                task, final_linear_layer_name=str(len(net) - 1), l2_strength=a.rps_lam, epoch=a.rps_epochs
            )
            attributor.cache(loader(X, y, n))
        with watch("attribute"):
            scores = attributor.attribute(loader(X, y, n), loader(Xt, explained, len(Xt)))
        scale = float(n)
        desc = f"dattri RPSAttributor(l2_strength={a.rps_lam:g}, epoch={a.rps_epochs})" + (
            ", bias as a constant feature" if a.rps_bias_feature else ", weight only (as documented)"
        )
    elif a.method == "tracin":
        from dattri.algorithm.tracin import TracInAttributor

        states = [torch.load(Path(a.workdir) / c, weights_only=True) for c in spec["checkpoints"]]
        if a.tracin_proj_dim:
            proj = {"proj_dim": a.tracin_proj_dim, "proj_type": "normal", "proj_seed": 0}
        else:
            proj = {"proj_type": "identity"}
        with watch("fit"):
            task = AttributionTask(loss_func=loss_func, model=model, checkpoints=states)
            attributor = TracInAttributor(
                task,
                weight_list=torch.tensor(spec["learning_rates"], dtype=torch.float32),
                normalized_grad=False,
                projector_kwargs=proj,
                layer_name=layer_name,
            )
        with watch("attribute"):
            scores = attributor.attribute(loader(X, y, a.train_batch or n), loader(Xt, yt, len(Xt)))
        scale = 1.0
        desc = f"dattri TracInAttributor({a.layers} layers, projector {proj})"
    else:
        kinds = {
            "cg": (IFAttributorCG, dict(max_iter=a.max_iter, mode=a.mode, regularization=reg)),
            "explicit": (IFAttributorExplicit, dict(regularization=reg)),
            "lissa": (
                IFAttributorLiSSA,
                dict(
                    batch_size=a.lissa_batch,
                    recursion_depth=a.lissa_depth,
                    scaling=a.lissa_scale,
                    damping=reg / a.lissa_scale,
                    mode=a.mode,
                ),
            ),
            "arnoldi": (
                IFAttributorArnoldi,
                dict(proj_dim=a.rank, max_iter=a.arnoldi_iter, regularization=reg),
            ),
        }
        cls, kw = kinds[a.method]
        with watch("fit"):
            task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
            attributor = cls(task=task, device="cpu", layer_name=layer_name, **kw)
            attributor.cache(loader(X, y, n))
        with watch("attribute"), torch.no_grad() if a.no_grad else contextlib.nullcontext():
            scores = attributor.attribute(loader(X, y, a.train_batch or n), loader(Xt, yt, len(Xt)))
        if a.method == "cg":  # the description the issue-#6 benchmark has always recorded
            desc = f"dattri IFAttributorCG(max_iter={a.max_iter}, mode={a.mode!r}), train batch {a.train_batch or n}"
            desc += ", under torch.no_grad()" if a.no_grad else ""
        else:
            shown = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in kw.items())
            desc = f"dattri {cls.__name__}({shown}), {a.layers} layers"
        extra["nan_scores"] = int(torch.isnan(scores).sum())
    info = {
        "method": desc,
        "version": version("dattri"),
        "n_test": len(Xt),
        "compute_s": sum(watch.laps.values()),
        "laps_s": watch.laps,
        **extra,
    }
    save(a.out, scores.detach().double().T.numpy() * scale, info)


if __name__ == "__main__":
    main()
