"""The saved workload every runner loads: the MLP, its weights, the data and the influence settings.

Imported by the runners in each peer's own virtual environment, so it needs only torch and numpy.
A workload directory holds ``spec.json`` (sizes, ``l2``, ``damping``, ...), ``model.pt`` (the
state dict) and ``data.npz`` (``X_train``, ``y_train``, ``X_test``, ``y_test``).
"""

from __future__ import annotations

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
