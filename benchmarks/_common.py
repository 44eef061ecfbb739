"""Shared benchmark helpers: median timing, peak-RSS sampling, synthetic head features, results files."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"


def timeit(fn, repeat: int = 3) -> tuple[float, object]:
    """Median wall time of ``fn()`` over ``repeat`` runs, and its last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@contextmanager
def peak_rss(interval: float = 0.001):
    """Yield a dict whose 'delta' is, after the block, the peak RSS growth (bytes) during it."""
    box = {"delta": 0}
    base = _rss()
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            box["delta"] = max(box["delta"], _rss() - base)
            time.sleep(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        yield box
    finally:
        stop.set()
        th.join()
        box["delta"] = max(box["delta"], _rss() - base)


def synthetic_head(n_train: int, n_test: int, d: int, k: int, seed: int = 0):
    """Class-structured non-negative features (like ReLU activations) and a linear head on them.

    Returns ``(head, F_train, F_test)``: ``head`` is an ``nn.Linear(d, k)`` whose input *is* the
    feature vector, so adapters see exactly these features.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))

    def feats(n):
        y = rng.integers(0, k, n)
        return np.maximum(centers[y] + 2.0 * rng.normal(size=(n, d)), 0).astype(np.float32)

    F_train, F_test = feats(n_train), feats(n_test)
    head = torch.nn.Linear(d, k)
    with torch.no_grad():
        # a head that separates the classes, as a trained one would
        head.weight.copy_(torch.as_tensor(centers, dtype=torch.float32) / np.sqrt(d))
        head.bias.zero_()
    return head.eval(), F_train, F_test


def head_workload_args(description: str) -> argparse.Namespace:
    """The shared command line of the head benchmarks: sizes of the synthetic feature workload."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--n-train", type=int, default=50_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mlp-train", type=int, default=2000, help="(bench_influence) network part, training points")
    p.add_argument("--mlp-test", type=int, default=20, help="(bench_influence) network part, test points")
    return p.parse_args()


def write_results(name: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    results = {
        "machine": {
            "cpu_count": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        **results,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    print(f"written to {path}")
    return path
