"""Whole-network CG influence next to dattri's and pyDVL's CG on the same MLP (issue #6).

Workload: sklearn ``make_classification`` (40 features, 10 classes, fixed random_state), standardized;
an MLP 40-300-300-10 with tanh (105,610 parameters) trained with weight decay ``l2`` (Adam, then
full-batch L-BFGS on the regularized objective to get close to a minimum, where influence
functions assume H is positive definite); attribution of test points to all 10,000 training
points. Every method explains the same loss: mean cross-entropy over the training set, Hessian
of ``mean loss + l2/2 ||theta||^2`` plus ``damping``, values (n_test, n_train) in skrep's
convention: ``(1/n) g_t^T H^-1 g_i``, positive = removing i would raise the test loss. Each peer's
scaling and sign is converted in its runner (benchmarks/peers/run_*.py, which say how).

Each method runs in its own subprocess, the peers in their own virtual environments (pyDVL pins
numpy < 2; see --dattri-python / --pydvl-python), with the same torch and the same number of
threads. Wall time and peak RSS (the process and its children, sampled every 50 ms) are measured
from outside; a run above --mem-limit-gb is killed and recorded as out of memory.

Reference: an explicit Hessian of 105,610 parameters is 89 GB, so the reference is float64 CG to
relative residual --ref-tol in plain torch.func (run_reference.py; no skrep code).

The CG solvers' cost grows at most linearly with the number of explained test points (pyDVL's
default CG solves one test point after the other; skrep, dattri and pyDVL's block CG solve them
together); --n-explain lets a slow machine explain fewer of them than the 100 the issue asks for,
and the results then also quote times extrapolated linearly to --n-test-target test points.

dattri's CG runs a fixed number of iterations and pyDVL's stop rule is not relative to each
test point (see their runners), so both get --peer-cg-iters iterations per test point. dattri runs
as documented with all training points in one batch (its fastest: one CG solve), in batches of
5,000 (its attribute() then re-solves for every batch) and, for one test point, of 2,000; all
three exceed 16 GB, because its CG keeps autograd graphs. So it runs once more under
torch.no_grad(), in batches of 5,000.

The peers' environments (pip's ``-c`` keeps the torch that is already there):

    python -m venv /work/venvs/dattri && /work/venvs/dattri/bin/pip install torch==2.13.0
    /work/venvs/dattri/bin/pip install -c constraints.txt dattri==0.3.0 psutil   # constraints: torch==2.13.0
    python -m venv /work/venvs/pydvl && /work/venvs/pydvl/bin/pip install torch==2.13.0
    /work/venvs/pydvl/bin/pip install -c constraints.txt "pydvl[influence]==0.10.0"

Usage: python benchmarks/bench_influence_peers.py [--n-explain 100] [--threads 2] [--workdir DIR]
       [--runs NAME ...] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from _common import RESULTS, write_results
from sklearn.datasets import make_classification
from torch import nn

PEERS = Path(__file__).parent / "peers"
sys.path.insert(0, str(PEERS))
from _workload import build_mlp  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--n-test-target", type=int, default=100, help="test points the issue asks for")
    p.add_argument("--n-explain", type=int, default=100, help="test points actually explained")
    p.add_argument("--features", type=int, default=40)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--l2", type=float, default=1e-3, help="weight decay in training = L2 penalty in H")
    p.add_argument("--damping", type=float, default=0.1)
    p.add_argument("--cg-tol", type=float, default=1e-4, help="skrep's CG tolerance")
    p.add_argument("--ref-tol", type=float, default=1e-8, help="the reference CG's tolerance (float64)")
    p.add_argument("--peer-cg-iters", type=int, default=20, help="the peers' CG iterations")
    p.add_argument(
        "--peer-cg-iters-short",
        type=int,
        default=6,
        help="a second pyDVL block CG run with this many iterations: as many as skrep's block CG takes here",
    )
    p.add_argument("--n-reference", type=int, default=10, help="test points the float64 reference solves (0: all)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--mem-limit-gb", type=float, default=16.0)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    p.add_argument("--dattri-python", default="/work/venvs/dattri/bin/python")
    p.add_argument("--pydvl-python", default="/work/venvs/pydvl/bin/python")
    p.add_argument("--runs", nargs="*", help="runs to (re)run (default: all; none: only summarize --workdir)")
    p.add_argument("--skip", nargs="*", default=[], help="runs to leave out, e.g. pydvl_cg")
    p.add_argument(
        "--workdir",
        help="keep the workload and each run's values here (default: a temporary directory); a later call "
        "with the same --workdir reuses the trained model and the runs it does not (re)run",
    )
    p.add_argument("--note", action="append", default=[], help="an observation to record with the results")
    p.add_argument("--quick", action="store_true", help="a tiny workload to check the conventions")
    a = p.parse_args()
    if a.quick:
        a.n_train, a.hidden, a.n_explain, a.n_test_target, a.peer_cg_iters = 400, 16, 4, 4, 20
    return a


def make_workload(a: argparse.Namespace, workdir: Path) -> dict:
    """Data, a trained MLP and the spec, saved to ``workdir``; returns the spec."""
    X, y = make_classification(
        a.n_train + a.n_test_target,
        a.features,
        n_informative=30,
        n_classes=a.classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        flip_y=0.02,
        random_state=0,
    )
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    X_train, y_train, X_test, y_test = X[: a.n_train], y[: a.n_train], X[a.n_train :], y[a.n_train :]
    spec = {
        "features": a.features,
        "classes": a.classes,
        "hidden": a.hidden,
        "l2": a.l2,
        "damping": a.damping,
        "n_explain": a.n_explain,
        "threads": a.threads,
    }
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small minibatch steps: a second thread only adds overhead
    model = build_mlp(spec)
    Xt, yt = torch.as_tensor(X_train), torch.as_tensor(y_train)
    t0 = time.perf_counter()
    adam = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=a.l2)
    order = torch.Generator().manual_seed(0)
    for _ in range(20):
        perm = torch.randperm(a.n_train, generator=order)
        for s in range(0, a.n_train, 128):
            idx = perm[s : s + 128]
            adam.zero_grad()
            nn.functional.cross_entropy(model(Xt[idx]), yt[idx]).backward()
            adam.step()

    def objective():
        penalty = sum((p**2).sum() for p in model.parameters())
        return nn.functional.cross_entropy(model(Xt), yt) + 0.5 * a.l2 * penalty

    lbfgs = torch.optim.LBFGS(
        model.parameters(), max_iter=200, tolerance_grad=1e-7, tolerance_change=1e-12, line_search_fn="strong_wolfe"
    )

    def closure():
        lbfgs.zero_grad()
        value = objective()
        value.backward()
        return value

    lbfgs.step(closure)
    closure()
    grad_norm = float(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm())
    torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        acc_train = float((model(Xt).argmax(1) == yt).float().mean())
        acc_test = float((model(torch.as_tensor(X_test)).argmax(1).numpy() == y_test).mean())
    torch.save(model.state_dict(), workdir / "model.pt")
    np.savez(workdir / "data.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    (workdir / "spec.json").write_text(json.dumps(spec))
    spec.update(
        n_train=a.n_train,
        n_params=sum(p.numel() for p in model.parameters()),
        train_s=time.perf_counter() - t0,
        objective_grad_norm=grad_norm,
        train_accuracy=acc_train,
        test_accuracy=acc_test,
    )
    return spec


def run(cmd: list[str], mem_limit: float, timeout: float) -> dict:
    """Run ``cmd``; wall time, peak RSS of its process tree, and why it failed if it did."""
    conditions = {
        "load_avg_1min_at_start": os.getloadavg()[0],
        "available_memory_gb_at_start": psutil.virtual_memory().available / 2**30,
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak, failure = 0, None
    while proc.poll() is None:
        rss = 0
        try:
            for q in [root, *root.children(recursive=True)]:
                rss += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass  # a process ended between listing and reading
        peak = max(peak, rss)
        elapsed = time.perf_counter() - t0
        if rss > mem_limit or elapsed > timeout:
            failure = (
                f"out of memory (> {mem_limit / 2**30:.0f} GB)" if rss > mem_limit else f"timed out (> {timeout:.0f} s)"
            )
            for q in [*root.children(recursive=True), root]:
                q.kill()
            break
        time.sleep(0.05)
    output = proc.communicate()[0]
    out = {"wall_s": time.perf_counter() - t0, "peak_rss_mb": peak / 2**20, **conditions}
    if failure is None and proc.returncode == -9:  # not our watchdog: the kernel's OOM killer, as a rule
        failure = (
            f"killed by the system (SIGKILL, the kernel's out-of-memory killer) at {peak / 2**30:.1f} GB RSS; "
            "last output: " + output.strip()[-300:]
        )
    elif failure is None and proc.returncode != 0:
        failure = f"exit code {proc.returncode}: " + output.strip()[-1500:]
    if failure is not None:
        out["failed"] = failure
    return out


def versions(python: str, run_name: str) -> str:
    """The versions of the packages a run uses, read by its own interpreter."""
    pkgs = ["torch", "numpy"] + [p for p in ("skrep", "dattri", "pydvl") if run_name.startswith(p)]
    code = f"import importlib.metadata as m; print(', '.join(p + ' ' + m.version(p) for p in {pkgs!r}))"
    try:
        return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as e:
        return f"unknown ({e})"


def main() -> None:
    a = parse_args()
    here = Path(sys.executable)
    iters = str(a.peer_cg_iters)
    runs = {
        "reference": (
            [str(here), str(PEERS / "run_reference.py")],
            ["--tol", str(a.ref_tol), "--n-test", str(a.n_reference)],
        ),
        "skrep_cg": ([str(here), str(PEERS / "run_skrep.py")], ["--cg-tol", str(a.cg_tol)]),
        # dattri as documented (all training points in one batch: one CG solve; in batches its
        # attribute() re-solves per batch) exceeds 16 GB here, even for one test point, as its CG
        # keeps autograd graphs; under torch.no_grad() it does not (see run_dattri.py)
        "dattri_cg": ([a.dattri_python, str(PEERS / "run_dattri.py")], ["--max-iter", iters]),
        "dattri_cg_train_batch_5000": (
            [a.dattri_python, str(PEERS / "run_dattri.py")],
            ["--max-iter", iters, "--train-batch", "5000"],
        ),
        "dattri_cg_1_test_train_batch_2000": (
            [a.dattri_python, str(PEERS / "run_dattri.py")],
            ["--max-iter", iters, "--train-batch", "2000", "--n-test", "1"],
        ),
        # its per-sample gradients of 10,000 points at once peak near 4 x 4.2 GB: in two batches
        "dattri_cg_no_grad_train_batch_5000": (
            [a.dattri_python, str(PEERS / "run_dattri.py")],
            ["--max-iter", iters, "--train-batch", "5000", "--no-grad"],
        ),
        "pydvl_cg": ([a.pydvl_python, str(PEERS / "run_pydvl.py")], ["--maxiter", iters]),
        "pydvl_block_cg": ([a.pydvl_python, str(PEERS / "run_pydvl.py")], ["--maxiter", iters, "--block"]),
        f"pydvl_block_cg_{a.peer_cg_iters_short}_iters": (
            [a.pydvl_python, str(PEERS / "run_pydvl.py")],
            ["--maxiter", str(a.peer_cg_iters_short), "--block"],
        ),
        # skrep takes its Hessian products over 256 rows at a time (cache-sized): so many per batch here
        f"pydvl_block_cg_{a.peer_cg_iters_short}_iters_batch_250": (
            [a.pydvl_python, str(PEERS / "run_pydvl.py")],
            ["--maxiter", str(a.peer_cg_iters_short), "--block", "--batch-size", "250"],
        ),
    }
    chosen = [name for name in runs if (a.runs is None or name in a.runs) and name not in a.skip]
    res: dict = {"runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(a.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if (workdir / "workload.json").exists():  # a kept workload: same data and weights as before
            res["workload"] = json.loads((workdir / "workload.json").read_text())
            wanted = {"n_train": a.n_train, "n_explain": a.n_explain, "threads": a.threads, "hidden": a.hidden}
            wanted.update(l2=a.l2, damping=a.damping, features=a.features, classes=a.classes)
            differ = {k: (res["workload"][k], v) for k, v in wanted.items() if res["workload"][k] != v}
            if differ:
                raise ValueError(f"--workdir {workdir} holds another workload; (kept, asked): {differ}")
        else:
            res["workload"] = make_workload(a, workdir)
            (workdir / "workload.json").write_text(json.dumps(res["workload"]))
        print(json.dumps(res["workload"]), flush=True)
        for name, (cmd, opts) in runs.items():
            record = workdir / f"{name}.run.json"
            if name in chosen:
                if not Path(cmd[0]).exists():
                    r = {"failed": f"no interpreter at {cmd[0]} (install the peer's venv, see docstring)"}
                else:
                    r = run([*cmd, str(workdir), str(workdir / name), *opts], a.mem_limit_gb * 2**30, a.timeout)
                    if "failed" not in r:
                        r.update(json.loads((workdir / f"{name}.json").read_text()))
                record.write_text(json.dumps(r))
                print(name, json.dumps(r), flush=True)
            if record.exists():
                res["runs"][name] = json.loads(record.read_text())
        values = {name: np.load(workdir / f"{name}.npy") for name, r in res["runs"].items() if "failed" not in r}
    ref = values.get("reference")
    for name, r in res["runs"].items():
        if name not in values:
            continue
        m = r["n_test"] = len(values[name])  # a run may explain only the first test points
        if ref is not None:
            both = min(m, len(ref))  # compared on the test points both explained
            r["n_test_compared"] = both
            v, rv = values[name][:both].ravel(), ref[:both].ravel()
            r["pearson_vs_reference"] = float(np.corrcoef(v, rv)[0, 1])
            r["relative_error_vs_reference"] = float(np.linalg.norm(v - rv) / np.linalg.norm(rv))
        r["compute_s_per_test_point"] = r["compute_s"] / m
        if m != a.n_test_target:
            r[f"compute_s_extrapolated_to_{a.n_test_target}_test"] = r["compute_s"] * a.n_test_target / m
    ours = res["runs"].get("skrep_cg", {})
    for name, peer in res["runs"].items():
        if name not in ("reference", "skrep_cg") and "compute_s" in peer and "compute_s" in ours:
            ratio = peer["compute_s_per_test_point"] / ours["compute_s_per_test_point"]
            res[f"{name}_compute_per_test_point_over_skrep"] = ratio
    res["settings"] = {
        "n_train": a.n_train,
        "n_explain": a.n_explain,
        "n_test_target": a.n_test_target,
        "skrep_cg_tol": a.cg_tol,
        "reference": f"float64 CG in plain torch.func to relative residual {a.ref_tol:g} (no explicit Hessian: "
        f"{res['workload']['n_params']}^2 float64 entries)",
        "peer_cg_iters": a.peer_cg_iters,
        "n_reference": a.n_reference,
        "threads": a.threads,
        "mem_limit_gb": a.mem_limit_gb,
        "times": "compute_s: measured inside the run from loaded model to values; wall_s and peak_rss_mb: "
        "the whole subprocess (interpreter start, imports, loading) measured from outside",
        "machine_note": "2-core CPU shared with other jobs during the run: timings are noisy",
        "notes": a.note,
    }
    explicit_gb = res["workload"]["n_params"] ** 2 * 4 / 2**30
    res["not_run"] = {
        name: f"builds the explicit {res['workload']['n_params']:,}^2 Hessian: {explicit_gb:.1f} GB in float32, "
        f"over the {a.mem_limit_gb:g} GB limit"
        for name in ("pydvl DirectInfluence", "dattri IFAttributorExplicit")
    }
    res["versions"] = {name: versions(cmd[0], name) for name, (cmd, _) in runs.items() if name in res["runs"]}
    res["targets"] = {"skrep faster than dattri and pyDVL CG": "at Pearson >= 0.99 to the reference"}
    name = "influence_peers_quick" if a.quick else "influence_peers"
    write_results(name, res)
    if not a.quick:
        (RESULTS / f"{name}.md").write_text(markdown(res, platform.processor() or platform.machine()))


def markdown(res: dict, cpu: str) -> str:
    s, w = res["settings"], res["workload"]
    lines = [
        "# Whole-network CG influence: skrep vs dattri vs pyDVL (issue #6)",
        "",
        f"MLP {w['features']}-{w['hidden']}-{w['hidden']}-{w['classes']} (tanh, {w['n_params']:,} parameters), "
        f"{s['n_train']:,} training points, {s['n_explain']} test points explained "
        f"(issue: {s['n_test_target']}), l2 {w['l2']:g}, damping {w['damping']:g}, {s['threads']} torch threads, "
        f"{cpu}. Reference: {s['reference']}.",
        "",
        "| run | versions | test points | compute (s) | per test point (s) | wall (s) | peak RSS (MB) "
        "| Pearson vs reference | relative error | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in res["runs"].items():
        if "failed" in r:
            wall, rss = (f"{r[k]:{f}}" if k in r else "-" for k, f in (("wall_s", ".1f"), ("peak_rss_mb", ".0f")))
            why = r["failed"][:240].replace("\n", " ")
            version = res["versions"].get(name, "")
            lines.append(f"| {name} | {version} | - | - | - | {wall} | {rss} | - | - | failed: {why} |")
            continue
        pearson = f"{r['pearson_vs_reference']:.6f}" if "pearson_vs_reference" in r else "-"
        error = f"{r['relative_error_vs_reference']:.1e}" if "relative_error_vs_reference" in r else "-"
        note = r["method"] + (f", {r['cg_iterations']} iterations" if "cg_iterations" in r else "")
        lines.append(
            f"| {name} | {res['versions'].get(name, '')} | {r['n_test']} | {r['compute_s']:.1f} "
            f"| {r['compute_s_per_test_point']:.1f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | {pearson} | {error} "
            f"| {note} |"
        )
    lines += [f"| {name} | | - | - | - | - | - | - | - | not run: {why} |" for name, why in res["not_run"].items()]
    lines += [
        "",
        "Relative error: ||values - reference|| / ||reference|| (Frobenius), and Pearson, over the test points "
        f"the reference solved (the first {s['n_reference'] or 'all'}).",
        s["times"] + ".",
    ]
    lines += [s["machine_note"] + "."] + s["notes"]
    if s["n_explain"] != s["n_test_target"]:
        lines.append(
            f"For {s['n_test_target']} test points, the JSON extrapolates compute times linearly from the test "
            "points a run explained; the solvers that treat test points together (skrep, dattri, pyDVL's block "
            "CG) scale better than that, pyDVL's default CG (one after the other) scales just so."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
