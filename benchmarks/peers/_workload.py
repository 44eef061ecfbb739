"""The saved workload every runner loads: the MLP, its weights, the data and the influence settings.

Imported by the runners in each peer's own virtual environment, so it needs only torch and numpy.
A workload directory holds ``spec.json`` (sizes, ``l2``, ``damping``, ...), ``model.pt`` (the
state dict) and ``data.npz`` (``X_train``, ``y_train``, ``X_test``, ``y_test``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def build_mlp(spec: dict) -> nn.Sequential:
    """The benchmark's MLP: ``features -> hidden -> hidden -> classes`` with tanh (smooth, so HVPs are)."""
    h = spec["hidden"]
    return nn.Sequential(
        nn.Linear(spec["features"], h), nn.Tanh(), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, spec["classes"])
    )


def load(workdir: str | Path, dtype: torch.dtype = torch.float32):
    """``(spec, model, X_train, y_train, X_test, y_test)``; tensors, the model in eval mode."""
    workdir = Path(workdir)
    spec = json.loads((workdir / "spec.json").read_text())
    torch.set_num_threads(spec["threads"])
    model = build_mlp(spec)
    model.load_state_dict(torch.load(workdir / "model.pt"))
    model = model.to(dtype).eval()
    data = np.load(workdir / "data.npz")
    X_train, X_test = (torch.as_tensor(data[k], dtype=dtype) for k in ("X_train", "X_test"))
    y_train, y_test = (torch.as_tensor(data[k], dtype=torch.long) for k in ("y_train", "y_test"))
    return spec, model, X_train, y_train, X_test[: spec["n_explain"]], y_test[: spec["n_explain"]]


def warm_up() -> None:
    """Pay torch.func's one-time start-up (its lazy imports on first use: 0.3-1.5 s) before any timing.

    The first vmap / grad / jvp / vjp / jacfwd call of a process costs that whichever library makes it,
    and a library whose import already pulls those modules in pays it before its timed window. The
    runners' ``--warmup`` calls this on a toy network first, so every run is timed warm.
    """
    from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vjp, vmap

    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    params = {k: v.detach() for k, v in net.named_parameters()}
    x, t = torch.randn(5, 3), torch.randint(0, 2, (5,))

    def loss(p, xb, tb):
        return nn.functional.cross_entropy(functional_call(net, p, (xb,)), tb)

    g = grad(lambda p: loss(p, x, t))
    tangents = {k: torch.randn(2, *v.shape) for k, v in params.items()}
    vmap(lambda v: jvp(g, (params,), (v,))[1])(tangents)
    vmap(lambda v: vjp(g, params)[1](v)[0])(tangents)
    vmap(grad(lambda p, xi, ti: loss(p, xi[None], ti[None])), in_dims=(None, 0, 0))(params, x, t)
    flat = torch.cat([v.reshape(-1) for v in params.values()])
    jacfwd(jacrev(lambda f: (f**3).sum()))(flat)
    net(x).sum().backward()


def parse_and_warm_up(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a runner's command line with the shared ``--warmup`` flag, warming up when it is given."""
    p.add_argument("--warmup", action="store_true", help="pay torch.func's start-up before timing (warm_up)")
    a = p.parse_args()
    if a.warmup:
        warm_up()
    return a


class Stopwatch:
    """Named wall-time laps: ``with watch("fit"): ...`` then ``watch.laps``."""

    def __init__(self):
        self.laps: dict[str, float] = {}

    def __call__(self, name: str):
        watch = self

        class _Lap:
            def __enter__(self):
                self.t = time.perf_counter()

            def __exit__(self, *exc):
                watch.laps[name] = time.perf_counter() - self.t

        return _Lap()


def save(out: str | Path, values: np.ndarray, info: dict) -> None:
    """Write ``values`` (n_explain, n_train) in skrep's convention to ``out.npy``, ``info`` to ``out.json``."""
    out = Path(out)
    np.save(out.with_suffix(".npy"), np.asarray(values, dtype=np.float64))
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
