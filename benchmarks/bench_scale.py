"""Scale: RPS-L2 explain(top_k=10) over 1,000,000 memory-mapped training points, and Dask vs one process.

1. Generates n_train x dim class-structured features straight into a memory-mapped .npy file
   (never whole in memory) and a linear head on them (the model).
2. Fits RepresenterPoints with ``store=``: the training side goes to disk.
3. In a fresh process, reopens the store and runs explain(X_test, top_k=10), recording that
   process's peak resident memory (everything: Python, torch, the mapped pages it touched)
   against the feature file's size, and the explain's FLOP rate against a bare torch matmul of
   the same block shapes on in-memory data, measured in the same process.
4. Dask: the same explain (on the first ``--dask-train`` rows, in memory) on a LocalCluster of
   2 worker processes against one process; speed-up, and the first call's overhead (scatter).

Usage: python benchmarks/bench_scale.py [--n-train 1000000] [--dim 256] [--n-test 1000] [--dask-train 200000]
       [--device auto|cpu|cuda]
Results: benchmarks/results/bench_scale.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import timeit, write_results

from skrep import RepresenterPoints

K = 10
LAM = 3e-3


def make_data(folder: Path, n: int, d: int, n_test: int, seed: int = 0) -> tuple[Path, np.ndarray, torch.nn.Linear]:
    """Features written chunk by chunk into ``folder/features.npy``; a head that separates them."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(K, d)).astype(np.float32)
    path = folder / "features.npy"
    F = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        F[s : s + m] = np.maximum(centers[rng.integers(0, K, m)] + 2.0 * rng.normal(size=(m, d)), 0)
    F.flush()
    del F
    test = np.maximum(centers[rng.integers(0, K, n_test)] + 2.0 * rng.normal(size=(n_test, d)), 0).astype(np.float32)
    head = torch.nn.Linear(d, K)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(centers) / np.sqrt(d))
        head.bias.zero_()
    return path, test, head.eval()


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the
    parent across exec, so a child started by a big parent would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def explain_in_fresh_process(folder: Path, device: str) -> dict:
    """Run this file's ``--explain-only`` mode in a new process and read what it measured."""
    out = subprocess.run(
        [sys.executable, __file__, "--explain-only", str(folder), "--device", device],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def explain_only(folder: Path, device: str) -> None:
    """The fresh process: reopen the store, explain, and measure against a bare matmul."""
    rss_start = _peak_rss()
    head = torch.load(folder / "head.pt", weights_only=False)
    test = np.load(folder / "test.npy")
    t0 = time.perf_counter()
    rps = RepresenterPoints(head, lam=LAM, device=device).fit(store=folder / "store")
    t_open = time.perf_counter() - t0
    rps.explain(test[:10], top_k=K)  # warm-up (thread pools), touches every training page once
    t_explain, E = timeit(lambda: rps.explain(test, top_k=K), 2)
    peak = _peak_rss()
    f = rps.train_features_
    n, d1 = f.shape
    flops = 2.0 * len(test) * n * d1  # the Gram products; the class-selector products are 1/d1 of that
    # the floor: the same (n_test x d1) @ (d1 x rows) products over in-memory blocks of the same size
    rows = 8192
    dev = rps.device_
    A = torch.cat([torch.as_tensor(test), torch.ones(len(test), 1)], 1).to(dev)
    B = torch.randn(rows, d1, device=dev)
    C = torch.empty(len(test), rows, device=dev)
    reps = max(1, n // rows)

    def bare() -> None:
        for _ in range(reps):
            torch.mm(A, B.T, out=C)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    t_mm, _ = timeit(bare, 2)
    mm_rate = 2.0 * len(test) * rows * reps * d1 / t_mm
    print(
        json.dumps(
            {
                "open_store_s": t_open,
                "explain_s": t_explain,
                "explain_gflops": flops / t_explain / 1e9,
                "bare_matmul_gflops": mm_rate / 1e9,
                "flop_rate_ratio": flops / t_explain / mm_rate,
                "peak_rss_bytes": peak,
                "rss_after_imports_bytes": rss_start,
                "top_index_checksum": int(E.top["pro_index"].sum()),
                "torch_threads": torch.get_num_threads(),
            }
        )
    )


def dask_comparison(folder: Path, n: int, test: np.ndarray, device: str) -> dict:
    import distributed

    head = torch.load(folder / "head.pt", weights_only=False)
    F = np.load(folder / "features.npy", mmap_mode="r")[:n]
    with torch.no_grad():
        y = head(torch.as_tensor(np.asarray(F))).argmax(1).numpy()
    rps = RepresenterPoints(head, lam=LAM, batch_size=65536, device=device).fit(np.asarray(F), y)
    t_one, E1 = timeit(lambda: rps.explain(test, top_k=K), 2)
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc,
        distributed.Client(lc) as client,
    ):
        t0 = time.perf_counter()
        rps.explain(test, top_k=K, client=client)
        t_first = time.perf_counter() - t0
        t_dask, E2 = timeit(lambda: rps.explain(test, top_k=K, client=client), 2)
    return {
        "n_train": n,
        "one_process_s": t_one,
        "dask_2_workers_s": t_dask,
        "speedup": t_one / t_dask,
        "dask_first_call_s": t_first,
        "first_call_overhead_s": t_first - t_dask,
        "same_top_indices": bool(np.array_equal(E1.top["pro_index"], E2.top["pro_index"])),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--dask-train", type=int, default=200_000)
    p.add_argument("--folder", default=None, help="where the data and store go (default: a temporary folder)")
    p.add_argument("--device", default="auto", help="where explain runs: auto, cpu or cuda")
    p.add_argument("--explain-only", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.explain_only:
        explain_only(Path(a.explain_only), a.device)
        return
    folder = Path(a.folder or tempfile.mkdtemp(prefix="skrep-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    path, test, head = make_data(folder, a.n_train, a.dim, a.n_test)
    t_data = time.perf_counter() - t0
    torch.save(head, folder / "head.pt")
    np.save(folder / "test.npy", test)
    X = np.load(path, mmap_mode="r")
    with torch.no_grad():
        y = np.concatenate(
            [
                head(torch.as_tensor(np.asarray(X[s : s + 100_000]))).argmax(1).numpy()
                for s in range(0, a.n_train, 100_000)
            ]
        )
    t0 = time.perf_counter()
    rps = RepresenterPoints(head, lam=LAM, batch_size=65536, device=a.device).fit(X, y, store=folder / "store")
    t_fit = time.perf_counter() - t0
    fit_info = {"fit_s": t_fit, "newton_steps": rps.n_iter_, "grad_norm": rps.grad_norm_}
    del rps, X
    fresh = explain_in_fresh_process(folder, a.device)
    feature_bytes = path.stat().st_size
    results = {
        "shape": {"n_train": a.n_train, "dim": a.dim, "classes": K, "n_test": a.n_test, "lam": LAM},
        "data_s": t_data,
        "fit_with_store": fit_info,
        "feature_file_bytes": feature_bytes,
        "store_bytes": sum(f.stat().st_size for f in (folder / "store").iterdir()),
        "explain_fresh_process": fresh,
        "peak_rss_over_feature_file": fresh["peak_rss_bytes"] / feature_bytes,
        "targets": {"peak_rss_over_feature_file_max": 1.5, "flop_rate_ratio_min": 0.5},
        "dask": dask_comparison(folder, min(a.dask_train, a.n_train), test, a.device),
    }
    write_results("bench_scale" if a.n_train == 1_000_000 else f"bench_scale_{a.n_train}", results)


if __name__ == "__main__":
    main()
