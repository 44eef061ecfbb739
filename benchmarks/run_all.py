"""Every skrep method next to the peer that implements the same thing, same model, same data, same run.

Writes ``benchmarks/results/peers.md`` and ``peers.json`` (``--quick``: ``peers_quick.*``). Families:

- **TracIn**: captum ``TracInCP`` (all layers; final layer), ``TracInCPFast`` and
  ``TracInCPFastRandProj``, and dattri ``TracInAttributor``, next to skrep ``TracIn`` with
  ``params='all'``, ``'head'`` and ``'head'`` with an ``fc-fast`` random projection. A tanh MLP
  (``peers/_workload.build_mlp``) trained by SGD, checkpoints after every third of the epochs.
  Reference: skrep TracIn without projection (over the same parameters). Conventions: captum and
  dattri sum ``lr_k <g_i, g_t>`` over checkpoints as skrep does (checked: r = 1 and max relative
  difference ~1e-7 against captum's TracInCP); captum's TracInCPFast / RandProj use the final
  layer's weight only (no bias gradient), skrep's head includes the bias.
- **Influence functions**: dattri ``IFAttributor{Explicit,CG,LiSSA,Arnoldi}`` and pyDVL
  ``{Direct,Cg,Lissa,Arnoldi}Influence`` next to skrep ``InfluenceFunctions(params='all')`` with
  the solvers exact / cg / lissa / arnoldi, on an MLP of a few thousand parameters trained to a
  minimum of ``mean CE + l2/2 ||theta||^2`` (``bench_influence_peers.make_workload``), so that skrep's
  exact solver (explicit float64 Hessian, Cholesky) is the reference; an independent float64 CG in
  plain torch.func (``peers/run_reference.py``) checks it. Every method runs in its own subprocess
  (``peers/run_*.py``; dattri and pyDVL in their own venvs), solvers configured alike: the same
  regularization, the same number of CG iterations for the peers, the same LiSSA depth, minibatch
  and scale (skrep's, 1.5 x the largest eigenvalue, handed to the peers), the same Arnoldi rank.
- **Representer points**: dattri ``RPSAttributor`` (as documented: the final layer's weight only;
  and with the bias folded into a constant feature, which is skrep's refit) next to skrep
  ``RepresenterPoints``, on the influence workload's MLP, the predicted class explained.
- **Trees**: tree-influence BoostIn, LeafInfluence and TREX (``peers/tree_influence_runner.py``)
  next to skrep on the same XGBoost model: skrep ``InfluenceFunctions`` (exact, over the leaf
  values) is the reference for the test-loss influences (BoostIn, LeafInfluence);
  ``RepresenterPoints(refit_on='labels')`` against TREX by how many of the 10% flipped training
  labels their self-influence finds at 10% checked (TREX's values are loss differences in its own
  kernel surrogate, skrep's are logit shares: no common scale to correlate).
- **Label cleaning**: cleanlab ``find_label_issues`` (5-fold out-of-fold probabilities of the same
  model family; ``bench_label_noise._cleanlab``) next to skrep's self-influence rankings
  (``bench_label_noise``'s definitions) on digits with 10% of the training labels flipped; quality:
  share of the flipped labels found when checking the top 10%.

Timing: only the computation, from a loaded model and data to the values (a peer's constructor,
cache and attribute; skrep's fit and explain), the median of ``--repeat`` runs for in-process calls
that take under a second. Every process first pays torch.func's one-time start-up (``_workload.warm_up``,
0.3-1.5 s of lazy imports on its first use, which dattri's import already pays and skrep's and pyDVL's
do not), so no side is timed cold. Peak memory: in-process rows, the growth of the process's RSS during the
call (sampled every millisecond); subprocess rows (influence functions, RPS, dattri TracIn), the
whole process tree's peak RSS (interpreter and imports included, sampled every 50 ms), the same for
both sides of a row; tree-influence, its worker's peak RSS growth from just before its fit.

A peer whose venv or package is missing is recorded as "not installed" and its rows skipped.

Usage: python benchmarks/run_all.py [--quick] [--families tracin influence rps trees labels] [size flags, see -h]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, peak_rss, timeit, write_results
from bench_influence_peers import make_workload
from bench_influence_peers import run as run_subprocess
from bench_influence_peers import versions as subprocess_versions
from bench_trees import PEER_PYTHON as TREEINF_PYTHON
from bench_trees import RUNNER as TREE_RUNNER
from sklearn.datasets import make_classification

import skrep

PEERS = Path(__file__).parent / "peers"
sys.path.insert(0, str(PEERS))
from _workload import build_mlp, load, warm_up  # noqa: E402

FAMILIES = ("tracin", "influence", "rps", "trees", "labels")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, under 3 minutes; writes peers_quick.*")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--threads", type=int, default=1, help="torch / BLAS threads of every run (both sides alike)")
    p.add_argument("--repeat", type=int, default=3, help="runs of an in-process call under 1 s (median)")
    p.add_argument("--tracin-train", type=int, default=10_000)
    p.add_argument("--tracin-test", type=int, default=100)
    p.add_argument("--tracin-hidden", type=int, default=64)
    p.add_argument("--tracin-proj", type=int, default=64, help="projection dim of the projected head runs")
    p.add_argument("--if-train", type=int, default=1000)
    p.add_argument("--if-test", type=int, default=20)
    p.add_argument("--if-hidden", type=int, default=32, help="MLP 40-h-h-10: h=32 is 2,698 parameters")
    p.add_argument("--if-damping", type=float, default=0.01)
    p.add_argument("--if-l2", type=float, default=1e-3)
    p.add_argument("--cg-iters", type=int, default=30, help="CG iterations of the peers (fixed-count solvers)")
    p.add_argument("--lissa-depth", type=int, default=500)
    p.add_argument("--lissa-batch", type=int, default=100, help="LiSSA minibatch (must divide --if-train)")
    p.add_argument("--rank", type=int, default=100, help="Arnoldi: eigenpairs kept")
    p.add_argument("--tree-train", type=int, default=1000)
    p.add_argument("--tree-test", type=int, default=50)
    p.add_argument("--tree-trees", type=int, default=30)
    p.add_argument("--tree-depth", type=int, default=4)
    p.add_argument("--label-models", nargs="+", default=["lr", "mlp"], choices=["lr", "mlp", "xgb"])
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per subprocess run")
    p.add_argument("--mem-limit-gb", type=float, default=12.0, help="a subprocess above this is killed")
    p.add_argument("--dattri-python", default="/work/venvs/dattri/bin/python")
    p.add_argument("--pydvl-python", default="/work/venvs/pydvl/bin/python")
    p.add_argument("--treeinf-python", default=str(TREEINF_PYTHON))
    a = p.parse_args()
    if a.quick:
        a.tracin_train, a.tracin_test, a.tracin_hidden = 1000, 20, 32
        a.if_train, a.if_test, a.if_hidden, a.lissa_depth, a.rank = 300, 4, 16, 200, 40
        a.tree_train, a.tree_test, a.tree_trees = 300, 20, 10
        a.label_models, a.repeat = ["lr"], 1
    if a.if_train % a.lissa_batch:
        p.error("--lissa-batch must divide --if-train (pyDVL averages its batches' Hessians unweighted)")
    return a


# ---- measuring ----------------------------------------------------------------------------------------
def pearson(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def in_process(fn, repeat: int) -> dict:
    """Time (median of ``repeat`` when one run is under a second) and peak RSS growth of ``fn()``."""
    with peak_rss() as mem:
        t, out = timeit(fn, 1)
        if t < 1.0 and repeat > 1:
            t, out = timeit(fn, repeat)
    return {"s": t, "rss_mb": mem["delta"] / 2**20, "values": out}


def package_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def venv_has(python: str, module: str) -> str | None:
    """None when ``python`` can import ``module``, else why not."""
    if not Path(python).exists():
        return f"not installed (no interpreter at {python})"
    r = subprocess.run([python, "-c", f"import {module}"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"not installed ({module} does not import in {python})"


class Subprocesses:
    """Runs ``peers/<script>`` in an interpreter on a workload directory; values and measurements back."""

    def __init__(self, a: argparse.Namespace):
        self.a = a

    def __call__(self, python: str, script: str, workdir: Path, name: str, opts: list[str]) -> dict:
        warm = ["--warmup"] if script != "run_reference.py" else []  # torch.func's start-up paid before timing
        cmd = [python, str(PEERS / script), str(workdir), str(workdir / name), *warm, *opts]
        r = run_subprocess(cmd, self.a.mem_limit_gb * 2**30, self.a.timeout)
        out = {"rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"], "cmd": " ".join(cmd[1:])}
        if "failed" in r:
            return {**out, "failed": r["failed"]}
        info = json.loads((workdir / f"{name}.json").read_text())
        return {**out, "s": info["compute_s"], "info": info, "values": np.load(workdir / f"{name}.npy")}


def row(family, skrep_label, peer_label, version, ours: dict, theirs: dict, metric, measured, note="", **q) -> dict:
    """One table row; ``q`` may give ``skrep_q`` / ``peer_q`` (quality) explicitly."""
    r = {
        "family": family,
        "skrep": skrep_label,
        "peer": peer_label,
        "peer_version": version,
        "skrep_s": ours.get("s"),
        "peer_s": theirs.get("s"),
        "skrep_rss_mb": ours.get("rss_mb"),
        "peer_rss_mb": theirs.get("rss_mb"),
        "metric": metric,
        "skrep_q": q.get("skrep_q"),
        "peer_q": q.get("peer_q"),
        "measured": measured,
        "note": note,
        "quantity": family,  # what the summary compares like with like over; families refine it
    }
    if "failed" in theirs:
        r["note"] = (note + "; " if note else "") + "peer failed: " + theirs["failed"][:300].replace("\n", " ")
    if r["skrep_s"] and r["peer_s"]:
        r["ratio"] = r["peer_s"] / r["skrep_s"]
    return r


def skipped(family, skrep_label, peer_label, why, ours: dict | None = None) -> dict:
    """A peer that is not installed: its row keeps skrep's measurement, if there is one."""
    return row(family, skrep_label, peer_label, "not installed", ours or {}, {}, "", "", note=why)


# ---- TracIn -------------------------------------------------------------------------------------------
def _classification(n_train: int, n_test: int, features: int = 40, classes: int = 10):
    """The data of ``bench_influence_peers.make_workload`` (same generator and settings)."""
    X, y = make_classification(
        n_train + n_test,
        features,
        n_informative=30,
        n_classes=classes,
        n_clusters_per_class=1,
        class_sep=1.5,
        flip_y=0.02,
        random_state=0,
    )
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def tracin_workload(a: argparse.Namespace, workdir: Path, lr: float = 0.05, epochs: int = 15) -> dict:
    """A build_mlp network trained by SGD, checkpoints after epochs 5, 10, 15; saved in _workload's layout."""
    from skrep.demo import train_classifier

    X_train, y_train, X_test, y_test = _classification(a.tracin_train, a.tracin_test)
    spec = {"features": 40, "classes": 10, "hidden": a.tracin_hidden, "l2": 0.0, "damping": 0.0}
    spec.update(n_explain=a.tracin_test, threads=a.threads, learning_rates=[lr] * 3)
    states: list = []
    torch.manual_seed(0)
    model = build_mlp(spec)
    t = time.perf_counter()
    train_classifier(
        model,
        X_train,
        y_train,
        epochs=epochs,
        lr=lr,
        batch_size=64,
        optimizer="sgd",
        checkpoints=states,
        checkpoint_every=epochs // 3,
    )
    spec["checkpoints"] = [f"ckpt{j}.pt" for j in range(len(states))]
    for name, state in zip(spec["checkpoints"], states, strict=True):
        torch.save(state, workdir / name)
    torch.save(model.state_dict(), workdir / "model.pt")
    np.savez(workdir / "data.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    (workdir / "spec.json").write_text(json.dumps(spec))
    with torch.no_grad():
        acc = float((model(torch.as_tensor(X_test)).argmax(1).numpy() == y_test).mean())
    n_params = sum(p.numel() for p in model.parameters())
    return {
        **spec,
        "n_train": a.tracin_train,
        "n_params": n_params,
        "train_s": time.perf_counter() - t,
        "test_accuracy": acc,
    }


def family_tracin(a, sub: Subprocesses, tmp: Path) -> tuple[list, dict]:
    fam = "TracIn"
    workdir = tmp / "tracin"
    workdir.mkdir()
    info = {"workload": tracin_workload(a, workdir)}
    spec, model, X, y, Xt, yt = load(workdir)
    torch.set_num_threads(a.threads)
    paths = [str(workdir / c) for c in spec["checkpoints"]]
    lr = spec["learning_rates"][0]
    head = str(len(model) - 1)  # the final Linear's name in the Sequential
    from skrep import TracIn

    def ours(**kw):
        def fn():
            return (
                TracIn(model, paths, lr, batch_size=1024, device="cpu", random_state=0, **kw)
                .fit(X, y)
                .explain(Xt, yt)
                .values
            )

        return in_process(fn, a.repeat)

    s_all, s_head = ours(params="all"), ours(params="head")
    s_proj = ours(params="head", projection_dim=a.tracin_proj, projection="fc-fast")
    rows = []
    sk_all, sk_head = "TracIn(params='all')", "TracIn(params='head')"
    sk_proj = f"TracIn(params='head', projection_dim={a.tracin_proj}, projection='fc-fast')"
    metric_all, metric_head = "Pearson vs skrep TracIn all (exact)", "Pearson vs skrep TracIn head (exact)"
    ref_all, ref_head = s_all["values"], s_head["values"]
    version = package_version("captum")
    if version is None:
        rows += [
            skipped(fam, sk, "captum", "captum does not import", ours)
            for sk, ours in ((sk_all, s_all), (sk_head, s_head), (sk_proj, s_proj))
        ]
    else:
        from captum.influence import TracInCP, TracInCPFast, TracInCPFastRandProj
        from torch.utils.data import TensorDataset

        def load_ckpt(net, path):
            net.load_state_dict(torch.load(path, weights_only=True))
            return lr

        ds, inputs = TensorDataset(X, y), (Xt, yt)
        loss = torch.nn.CrossEntropyLoss(reduction="sum")
        work = build_mlp(spec)
        bs = 1024  # captum's default batch_size=1 is orders of magnitude slower

        def captum(make):
            return in_process(lambda: make().influence(inputs, k=None).detach().numpy(), a.repeat)

        def cp(layers):
            return TracInCP(
                work, ds, paths, load_ckpt, layers=layers, loss_fn=loss, batch_size=bs, sample_wise_grads_per_batch=True
            )

        for layers, what, sk, s, metric, ref in (
            (None, "all layers", sk_all, s_all, metric_all, ref_all),
            ([head], "final layer", sk_head, s_head, metric_head, ref_head),
        ):
            p = captum(lambda layers=layers: cp(layers))
            rows.append(
                row(
                    fam,
                    sk,
                    f"captum TracInCP ({what})",
                    version,
                    s,
                    p,
                    metric,
                    "in-process",
                    skrep_q=1.0,
                    peer_q=pearson(p["values"], ref),
                )
            )
        p = captum(lambda: TracInCPFast(work, work[-1], ds, paths, load_ckpt, loss_fn=loss, batch_size=bs))
        rows.append(
            row(
                fam,
                sk_head,
                "captum TracInCPFast",
                version,
                s_head,
                p,
                metric_head,
                "in-process",
                note="captum: final layer's weight only, no bias gradient",
                skrep_q=1.0,
                peer_q=pearson(p["values"], ref_head),
            )
        )
        p = captum(
            lambda: TracInCPFastRandProj(
                work, work[-1], ds, paths, load_ckpt, loss_fn=loss, batch_size=bs, projection_dim=a.tracin_proj
            )
        )
        rows.append(
            row(
                fam,
                sk_proj,
                f"captum TracInCPFastRandProj(projection_dim={a.tracin_proj})",
                version,
                s_proj,
                p,
                metric_head,
                "in-process",
                note="captum: weight only; its time includes building its Annoy nearest-neighbour index",
                skrep_q=pearson(s_proj["values"], ref_head),
                peer_q=pearson(p["values"], ref_head),
            )
        )
        info["captum_lr_convention"] = captum_intermediate_check(cp([head]), load_ckpt, paths, ds, inputs, work)
    # dattri, in its venv: skrep next to it in a subprocess too, so both sides are measured alike
    why = venv_has(a.dattri_python, "dattri")
    for params, sk, metric in (("all", sk_all, metric_all), ("head", sk_head, metric_head)):
        if why:
            rows.append(skipped(fam, sk, "dattri TracInAttributor", why))
            continue
        mine = sub(
            sys.executable,
            "run_skrep.py",
            workdir,
            f"skrep_tracin_{params}",
            ["--method", "tracin", "--params", params, "--batch-size", "1024"],
        )
        theirs = sub(
            a.dattri_python,
            "run_dattri.py",
            workdir,
            f"dattri_tracin_{params}",
            ["--method", "tracin", "--layers", params],
        )
        ref = mine.get("values")
        rows.append(
            row(
                fam,
                sk,
                f"dattri TracInAttributor ({params})",
                subprocess_versions(a.dattri_python, "dattri"),
                mine,
                theirs,
                metric,
                "subprocess",
                skrep_q=pearson(ref, ref_all if params == "all" else ref_head),
                peer_q=pearson(theirs.get("values", np.nan), ref_all if params == "all" else ref_head),
            )
        )
    for r in rows:
        r["quantity"] = "all layers" if "'all'" in r["skrep"] else "final layer"
    return rows, info


def captum_intermediate_check(tracin, load_ckpt, paths, ds, inputs, work) -> str:
    """captum TracInCP.compute_intermediate_quantities scales each checkpoint's gradients by lr, not sqrt(lr)."""
    try:
        emb_test = tracin.compute_intermediate_quantities(inputs)
        emb_train = tracin.compute_intermediate_quantities(torch.utils.data.DataLoader(ds, batch_size=1024))
        via_embeddings = (emb_test @ emb_train.T).detach().numpy()
        scores = tracin.influence(inputs, k=None).detach().numpy()
        ratio = float(np.median(via_embeddings / np.where(scores == 0, np.nan, scores)))
        lr = load_ckpt(work, paths[0])
        return (
            f"TracInCP.compute_intermediate_quantities(test) @ (train).T / influence() = {ratio:.4g} "
            f"(learning rate {lr:g}): its embeddings carry lr, so their inner products weigh each checkpoint by "
            "lr^2 where influence() weighs by lr (TracInCPFastRandProj's embeddings carry sqrt(lr))"
        )
    except Exception as e:  # noqa: BLE001 - a diagnostic only
        return f"check failed: {type(e).__name__}: {e}"


# ---- influence functions ------------------------------------------------------------------------------
def if_workload(a, tmp: Path) -> tuple[Path, dict]:
    workdir = tmp / "influence"
    workdir.mkdir()
    ns = argparse.Namespace(
        n_train=a.if_train,
        n_test_target=a.if_test,
        n_explain=a.if_test,
        features=40,
        classes=10,
        hidden=a.if_hidden,
        l2=a.if_l2,
        damping=a.if_damping,
        threads=a.threads,
    )
    return workdir, make_workload(ns, workdir)


def family_influence(a, sub: Subprocesses, workdir: Path, workload: dict) -> tuple[list, dict]:
    fam = "Influence functions"
    py = sys.executable
    n = a.if_train
    metric = "Pearson vs skrep exact (float64)"
    info: dict = {"workload": workload}
    mine = {}
    for solver, opts in (
        ("exact", []),
        ("cg", ["--cg-tol", "1e-4"]),
        ("lissa", ["--lissa-depth", str(a.lissa_depth), "--batch-size", str(a.lissa_batch)]),
        ("arnoldi", ["--rank", str(a.rank)]),
    ):
        mine[solver] = sub(py, "run_skrep.py", workdir, f"skrep_{solver}", ["--solver", solver, *opts])
    ref = mine["exact"].get("values")
    if ref is None:
        raise RuntimeError(f"skrep's exact influence failed: {mine['exact'].get('failed')}")
    if not a.quick:
        check = sub(py, "run_reference.py", workdir, "reference_cg", ["--tol", "1e-10"])
        info["reference_check"] = {
            "what": "independent float64 CG in plain torch.func (peers/run_reference.py), tol 1e-10",
            "pearson_vs_skrep_exact": pearson(check.get("values", np.nan), ref),
            "relative_error": float(np.linalg.norm(check["values"] - ref) / np.linalg.norm(ref))
            if "values" in check
            else None,
        }
    scale = mine["lissa"].get("info", {}).get("lissa_scale")
    info["lissa_scale"] = scale
    cg_iters = str(a.cg_iters)
    peers = {
        "dattri": (
            a.dattri_python,
            "run_dattri.py",
            "dattri",
            {
                "exact": [("IFAttributorExplicit", ["--method", "explicit"], "")],
                "cg": [("IFAttributorCG", ["--method", "cg", "--max-iter", cg_iters], f"{cg_iters} iterations")],
                "lissa": [
                    (
                        "IFAttributorLiSSA",
                        ["--method", "lissa", "--lissa-depth", str(a.lissa_depth), "--lissa-batch", str(a.lissa_batch)]
                        + (["--lissa-scale", f"{scale:.6g}"] if scale else []),
                        "same depth, minibatch and scale as skrep",
                    )
                ],
                "arnoldi": [
                    (
                        "IFAttributorArnoldi",
                        ["--method", "arnoldi", "--rank", str(a.rank), "--arnoldi-iter", str(2 * a.rank)],
                        f"{2 * a.rank} Arnoldi iterations",
                    )
                ],
            },
        ),
        "pydvl": (
            a.pydvl_python,
            "run_pydvl.py",
            "pydvl",
            {
                "exact": [("DirectInfluence", ["--method", "direct", "--batch-size", str(n)], "")],
                "cg": [
                    (
                        "CgInfluence",
                        ["--method", "cg", "--maxiter", cg_iters, "--batch-size", str(n)],
                        f"at most {cg_iters} iterations per test point, one after the other",
                    )
                ][a.quick :]  # --quick: its block CG only
                + [
                    (
                        "CgInfluence (block)",
                        ["--method", "cg", "--maxiter", cg_iters, "--batch-size", str(n), "--block"],
                        f"at most {cg_iters} iterations, test points together",
                    ),
                ],
                "lissa": [
                    (
                        "LissaInfluence",
                        [
                            "--method",
                            "lissa",
                            "--maxiter",
                            str(a.lissa_depth),
                            "--batch-size",
                            str(a.lissa_batch),
                            "--rtol",
                            "1e-8",
                        ]
                        + (["--scale", f"{scale:.6g}"] if scale else []),
                        "same depth, minibatch and scale as skrep",
                    )
                ],
                "arnoldi": [
                    ("ArnoldiInfluence", ["--method", "arnoldi", "--rank", str(a.rank), "--batch-size", str(n)], "")
                ],
            },
        ),
    }
    labels = {
        "exact": "InfluenceFunctions(solver='exact')",
        "cg": "InfluenceFunctions(solver='cg', cg_tol=1e-4)",
        "lissa": f"InfluenceFunctions(solver='lissa', lissa_depth={a.lissa_depth})",
        "arnoldi": f"InfluenceFunctions(solver='arnoldi', rank={a.rank})",
    }
    rows = []
    for peer, (python, script, module, methods) in peers.items():
        why = venv_has(python, module)
        version = None if why else subprocess_versions(python, module)
        for solver, runs in methods.items():
            for cls, opts, note in runs:
                label = f"{'dattri' if peer == 'dattri' else 'pyDVL'} {cls}"
                if why:
                    rows.append(skipped(fam, labels[solver], label, why, mine[solver]))
                    continue
                theirs = sub(python, script, workdir, f"{peer}_{solver}_{cls.split()[-1].strip('()')}", opts)
                if theirs.get("info", {}).get("nan_scores"):
                    note = (note + "; " if note else "") + f"{theirs['info']['nan_scores']} NaN scores"
                rows.append(
                    row(
                        fam,
                        labels[solver],
                        label,
                        version,
                        mine[solver],
                        theirs,
                        metric,
                        "subprocess",
                        note,
                        skrep_q=pearson(mine[solver].get("values", np.nan), ref),
                        peer_q=pearson(theirs.get("values", np.nan), ref),
                    )
                )
    info["skrep_runs"] = {k: {kk: v for kk, v in r.items() if kk != "values"} for k, r in mine.items()}
    return rows, info


# ---- representer points -------------------------------------------------------------------------------
def family_rps(a, sub: Subprocesses, workdir: Path) -> tuple[list, dict]:
    fam = "Representer points"
    label = "RepresenterPoints(lam=3e-3)"
    mine = sub(sys.executable, "run_skrep.py", workdir, "skrep_rps", ["--method", "rps", "--lam", "3e-3"])
    ref = mine.get("values")
    why = venv_has(a.dattri_python, "dattri")
    if why:
        return [skipped(fam, label, "dattri RPSAttributor", why, mine)], {}
    version = subprocess_versions(a.dattri_python, "dattri")
    metric = "Pearson vs skrep RPS (Newton, exact)"
    rows = []
    for name, opts, note in (
        ("weight only", [], "dattri as documented: refits the final layer's weight only, features without a constant"),
        ("bias as feature", ["--rps-bias-feature"], "bias folded into a constant feature: skrep's objective"),
    ):
        theirs = sub(
            a.dattri_python,
            "run_dattri.py",
            workdir,
            f"dattri_rps_{name.split()[0]}",
            ["--method", "rps", "--rps-lam", "3e-3", *opts],
        )
        vals = theirs.get("values")
        if vals is not None and ref is not None:
            rel = float(np.linalg.norm(vals - ref) / np.linalg.norm(ref))
            note += f"; relative difference to skrep {rel:.2g} (after dattri x n)"
        rows.append(
            row(
                fam,
                label,
                f"dattri RPSAttributor ({name})",
                version,
                mine,
                theirs,
                metric,
                "subprocess",
                note,
                skrep_q=1.0,
                peer_q=pearson(vals if vals is not None else np.nan, ref),
            )
        )
    return rows, {}


# ---- trees --------------------------------------------------------------------------------------------
def family_trees(a, tmp: Path) -> tuple[list, dict]:
    import xgboost

    from skrep import InfluenceFunctions, RepresenterPoints
    from skrep.metrics import mislabel_detection

    fam = "Trees (XGBoost)"
    n, m = a.tree_train, a.tree_test
    X, y = make_classification(n + m, 20, n_informative=10, random_state=0)
    X_train, y_train, X_test, y_test = X[:n], y[:n].copy(), X[n:], y[n:]
    flipped = np.zeros(n, bool)
    flipped[np.random.default_rng(0).choice(n, n // 10, replace=False)] = True
    y_train[flipped] = 1 - y_train[flipped]
    model = xgboost.XGBClassifier(
        n_estimators=a.tree_trees, max_depth=a.tree_depth, tree_method="hist", n_jobs=a.threads, random_state=0
    ).fit(X_train, y_train)
    info = {"workload": dict(n_train=n, n_test=m, n_trees=a.tree_trees, depth=a.tree_depth, flipped=0.1)}

    def influence():
        inf = InfluenceFunctions(model, solver="exact", damping=1e-3).fit(X_train, y_train)
        return inf, inf.explain(X_test, y_test).values

    s_if = in_process(lambda: influence()[1], a.repeat)
    ref = s_if["values"]
    inf, _ = influence()
    s_rps = in_process(
        lambda: RepresenterPoints(model, refit_on="labels").fit(X_train, y_train).explain(X_test).values, a.repeat
    )
    rps_self = RepresenterPoints(model, refit_on="labels").fit(X_train, y_train).self_influence()

    def found(scores):
        return float(mislabel_detection(scores, flipped, checked=(0.1,))["recall"][0.1])

    sk_if, sk_rps = (
        "InfluenceFunctions(solver='exact', damping=1e-3), leaf values",
        "RepresenterPoints(refit_on='labels')",
    )
    metric = "Pearson vs skrep IF exact"
    why = venv_has(a.treeinf_python, "tree_influence")
    if why:
        return [
            skipped(fam, sk, p, why, ours)
            for sk, p, ours in ((sk_if, "BoostIn", s_if), (sk_if, "LeafInfluence", s_if), (sk_rps, "TREX", s_rps))
        ], info
    d = tmp / "trees"
    d.mkdir()
    model.save_model(d / "m.json")
    (d / "params.json").write_text(model.get_booster().save_config())
    np.savez(d / "d.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    out = {}
    # self-influence (the flipped-label check) from BoostIn and TREX; LeafInfluence's is one solve per point
    runs = [("boostin,trex", [])] + ([] if a.quick else [("leafinfluence", ["--skip-self"])])
    for methods, extra in runs:
        cmd = [
            a.treeinf_python,
            str(TREE_RUNNER),
            "--model",
            str(d / "m.json"),
            "--data",
            str(d / "d.npz"),
            "--methods",
            methods,
            "--top-k",
            "10",
            "--out",
            str(d / "o.npz"),
            "--max-seconds",
            str(a.timeout),
            "--xgb-params",
            str(d / "params.json"),
            "--full",
            "yes",
            "--threads",
            str(a.threads),
            *extra,
        ]
        subprocess.run(cmd, check=False, capture_output=True)
        with np.load(d / "o.npz", allow_pickle=False) as z:
            out.update({k: z[k] for k in z.files})
    version = str(out["peer_version"])
    info["peer_margin_max_abs_err"] = (
        float(out["margin_max_abs_err_model"]) if "margin_max_abs_err_model" in out else None
    )
    info["peer_margin_max_abs_err_unpatched"] = (
        float(out["margin_max_abs_err_peer"]) if "margin_max_abs_err_peer" in out else None
    )

    def peer(mname):
        g = {k[len(mname) + 1 :]: v for k, v in out.items() if k.startswith(mname + "_")}
        if not bool(g.get("ok", False)):
            return {"failed": str(g.get("error", "no output"))}, g
        rss = float(g.get("local_peak_rss_mb", g["peak_rss_mb"])) - float(g.get("rss_before_fit_mb", 0.0))
        return {"s": float(g["fit_s"]) + float(g["local_s"]), "rss_mb": max(rss, 0.0), "values": g["values"]}, g

    rows = []
    for mname, label, note in (
        ("boostin", "tree-influence BoostIn", "BoostIn traces each boosting step (a TracIn analogue), no Hessian"),
        (
            "leafinfluence",
            "tree-influence LeafInfluence",
            "LeafInfluence(update_set=-1): the influence function of "
            "gradient boosting with fixed structures, every later tree's leaves re-estimated",
        ),
    ):
        if a.quick and mname == "leafinfluence":
            continue
        theirs, _ = peer(mname)
        rows.append(
            row(
                fam,
                sk_if,
                label,
                version,
                s_if,
                theirs,
                metric,
                "in-process / peer worker",
                note,
                skrep_q=1.0,
                peer_q=pearson(theirs.get("values", np.nan), ref),
            )
        )
    theirs, g = peer("trex")
    peer_found = found(np.asarray(g["self_influence"], dtype=float)) if "self_influence" in g else None
    rows.append(
        row(
            fam,
            sk_rps,
            "tree-influence TREX",
            version,
            s_rps,
            theirs,
            "flipped labels found at 10% checked (self-influence)",
            "in-process / peer worker",
            "times: fit + explain of the test points (self-influence not timed); TREX: kernel 'lpw', "
            "loss differences in its own kernel surrogate",
            skrep_q=found(rps_self),
            peer_q=peer_found,
        )
    )
    for r in rows:
        r["quantity"] = "test-loss influence" if r["metric"].startswith("Pearson") else "mislabel ranking"
    info["skrep_if_found_at_10"] = found(inf.self_influence())
    for mname in ("boostin", "leafinfluence"):
        key = f"{mname}_self_influence"
        if key in out:
            info[f"{mname}_found_at_10"] = found(np.asarray(out[key], dtype=float))
    return rows, info


# ---- label cleaning -----------------------------------------------------------------------------------
def family_labels(a) -> tuple[list, dict]:
    import bench_label_noise as ln
    from sklearn.base import clone
    from threadpoolctl import threadpool_limits

    from skrep import InfluenceFunctions, RepresenterLJE, RepresenterPoints
    from skrep.demo import load_digits_data
    from skrep.metrics import mislabel_detection

    fam = "Label cleaning"
    version = package_version("cleanlab")
    rows, info = [], {}
    metric = "flipped labels found at 10% checked"
    seed = 0
    data = load_digits_data(0.1, random_state=seed)
    X, y = data.X_train.astype(np.float64), data.y_train

    def found(scores):
        return float(mislabel_detection(scores, data.flipped, checked=(0.1,))["recall"][0.1])

    with threadpool_limits(a.threads):
        for name in a.label_models:
            model = clone(ln._family(name, seed)).fit(X, y)
            explained = ln._explained(model)
            # the scores of bench_label_noise._scores, one by one here so that each gets its own peak RSS
            makers = {
                "RPS-L2 self-influence": lambda e=explained: (
                    RepresenterPoints(e, refit_on="labels").fit(X, y).self_influence()
                ),
                "LJE self-influence": lambda e=explained: RepresenterLJE(e).fit(X, y).self_influence(),
                "IF self-influence": lambda e=explained, nm=name: (
                    (
                        InfluenceFunctions(e, damping=1e-3, solver="arnoldi", rank=50, random_state=seed)
                        if nm == "xgb"
                        else InfluenceFunctions(e, damping=1e-3)
                    )
                    .fit(X, y)
                    .self_influence()
                ),
                "TracIn self-influence": lambda nm=name, mo=model: ln._tracin(nm, mo, X, y),
            }
            if version is None:
                theirs = {}
            else:
                theirs = in_process(lambda nm=name: ln._cleanlab(nm, seed, X, y), 1)
                theirs["q"] = found(theirs["values"])
            for label, make in makers.items():
                key = label.split()[0]
                if (name, key) in ln.SKIPPED:
                    continue
                ours = in_process(make, 1)
                peer_label = f"cleanlab find_label_issues (5-fold {ln.MODELS[name]})"
                if version is None:
                    rows.append(
                        skipped(fam, f"{label}, {ln.MODELS[name]}", peer_label, "cleanlab does not import", ours)
                    )
                    continue
                rows.append(
                    row(
                        fam,
                        f"{label}, {ln.MODELS[name]}",
                        peer_label,
                        version,
                        ours,
                        theirs,
                        metric,
                        "in-process",
                        "cleanlab's time includes its 5 cross-validated fits; skrep explains the given fitted model",
                        skrep_q=found(ours["values"]),
                        peer_q=theirs["q"],
                    )
                )
    for r in rows:
        r["quantity"] = r["skrep"].split(", ")[-1]  # the model family
    info["workload"] = "sklearn digits, 1,437 training points, 10% of the labels flipped (seed 0)"
    return rows, info


# ---- report -------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


def summary(rows: list[dict]) -> list[dict]:
    """Per family and quantity: the fastest skrep method and the fastest peer that meet the quality rule.

    Pearson rows: quality >= 0.99 against the reference; recall rows: skrep's recall at least the peer's.
    """
    out = []
    for fam, quantity in dict.fromkeys((r["family"], r["quantity"]) for r in rows):
        rs = [r for r in rows if (r["family"], r["quantity"]) == (fam, quantity) and r.get("skrep_s") is not None]
        if not rs:
            continue
        if rs[0]["metric"].startswith("Pearson"):
            good_sk = {(r["skrep"], r["skrep_s"]) for r in rs if (r["skrep_q"] or 0) >= 0.99}
            good_peer = [(r["peer"], r["peer_s"]) for r in rs if r.get("peer_s") and (r["peer_q"] or 0) >= 0.99]
            rule = "Pearson >= 0.99"
        else:
            best_peer = max((r["peer_q"] or 0) for r in rs)
            good_sk = {(r["skrep"], r["skrep_s"]) for r in rs if (r["skrep_q"] or 0) >= best_peer}
            good_peer = [(r["peer"], r["peer_s"]) for r in rs if r.get("peer_s")]
            rule = "recall >= the peer's"
        head = {"family": fam, "quantity": quantity, "rule": rule}
        if not good_sk or not good_peer:
            why = "no peer meets the rule" if good_sk else "no skrep method meets the rule"
            out.append({**head, "note": why})
            continue
        sk, peer = min(good_sk, key=lambda t: t[1]), min(good_peer, key=lambda t: t[1])
        speed = peer[1] / sk[1]
        out.append(
            {
                **head,
                "skrep": sk[0],
                "skrep_s": sk[1],
                "peer": peer[0],
                "peer_s": peer[1],
                "speedup": speed,
                "at_least_5x": speed >= 5,
            }
        )
    return out


def _f(v, fmt) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:{fmt}}"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# skrep next to its peers (issue #9)",
        "",
        f"Written by `benchmarks/run_all.py{' --quick' if res['quick'] else ''}` in {res['wall_s'] / 60:.1f} min. "
        f"Machine: {m['cpu']}, {m['cores']} cores, load average (1/5/15 min) {res['load_start']} at the start and "
        f"{res['load_end']} at the end; {res['threads']} torch/BLAS thread(s) per run; Python {m['python']}, torch "
        f"{m['torch']}, skrep {res['skrep_version']}.",
        "",
        "| family | skrep | peer | peer version | skrep (s) | peer (s) | peer / skrep | skrep RSS (MB) | peer RSS (MB) "
        "| quality measure | skrep | peer | measured | note |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['family']} | {r['skrep']} | {r['peer']} | {r['peer_version'] or '-'} | {_f(r['skrep_s'], '.3g')} "
            f"| {_f(r['peer_s'], '.3g')} | {_f(r.get('ratio'), '.2f')} | {_f(r['skrep_rss_mb'], '.0f')} "
            f"| {_f(r['peer_rss_mb'], '.0f')} | {r['metric']} | {_f(r['skrep_q'], '.4f')} | {_f(r['peer_q'], '.4f')} "
            f"| {r['measured']} | {r['note']} |"
        )
    lines += [
        "",
        "## Fastest at full quality",
        "",
        "| family | quantity | rule | fastest skrep | s | fastest peer | s | speedup | >= 5x |",
        "|---|---|---|---|---:|---|---:|---:|---|",
    ]
    for s in res["summary"]:
        if "note" in s:
            lines.append(f"| {s['family']} | {s['quantity']} | {s['rule']} | {s['note']} | | | | | |")
            continue
        lines.append(
            f"| {s['family']} | {s['quantity']} | {s['rule']} | {s['skrep']} | {s['skrep_s']:.3g} | {s['peer']} "
            f"| {s['peer_s']:.3g} "
            f"| {s['speedup']:.2f} | {'yes' if s['at_least_5x'] else 'no'} |"
        )
    lines += ["", "## Workloads and checks", ""]
    for fam, info in res["families"].items():
        lines.append(f"- **{fam}**: " + json.dumps(info, default=str))
    lines += ["", "## How to read this / caveats", "", CAVEATS, ""]
    return "\n".join(lines) + "\n"


CAVEATS = """\
Each row puts one skrep method next to one peer that computes the same thing on the same model, data and
settings, in the same run. *peer / skrep* is the peer's time over skrep's (above 1: skrep is faster). Times are
the computation only (constructor, cache and attribute for a peer; fit and explain for skrep), not interpreter
start or imports. *Quality*: the Pearson correlation of all (test, train) values with the family's reference,
which is skrep's exact answer (TracIn without projection over the same parameters; influence functions with
the explicit float64 Hessian, itself checked against an independent float64 CG; representer points refit by
Newton to a gradient of 1e-10); values are converted to skrep's convention first (shape (n_test, n_train),
positive = proponent, skrep's scale), though Pearson ignores scale. For label cleaning the quality is the share
of the flipped labels found when checking the top 10%. *Peak RSS* means different things by *measured*:
in-process, the RSS growth during the call; subprocess, the whole process's peak (interpreter, torch and data
included, ~300-450 MB of it before any work); tree-influence, its worker's peak growth from just before fit.
Compare RSS within a row, not across rows of different kinds. The machine has 2 cores shared with other
jobs (see the load averages): timings of the same call vary by up to 2-3x between runs; every run is limited
to the same number of threads so both sides of a row see the same conditions. The sizes are small so the
whole run fits in ~15 minutes; at these sizes fixed per-call overheads weigh more than at the issues'
scales. Peers' solver settings follow skrep's where the method has a knob (iterations, depth, minibatch,
scale, rank), otherwise the peer's defaults; the notes say where they differ. LiSSA and Arnoldi are
approximations whatever the library: at these settings none reaches r = 0.99, and skrep's and the peers'
estimates agree with the exact answer about equally (LiSSA is stochastic, its r varies by a few hundredths
from run to run). Every process pays torch.func's one-time start-up before its timed window (see the module
docstring), so no side is timed cold."""


def main() -> None:
    a = parse_args()
    t0 = time.perf_counter()
    load_start = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    torch.set_num_threads(a.threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(a.threads)
    os.environ["TQDM_DISABLE"] = "1"  # dattri's progress bars
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warm_up()  # torch.func's one-time start-up, before any in-process timing
    sub = Subprocesses(a)
    rows: list[dict] = []
    families: dict = {}
    with tempfile.TemporaryDirectory(prefix="skrep_peers_") as tmp_name:
        tmp = Path(tmp_name)
        if_dir = None
        for fam in a.families:
            t = time.perf_counter()
            print(f"[run_all] {fam} ...", flush=True)
            if fam == "tracin":
                new, info = family_tracin(a, sub, tmp)
            elif fam in ("influence", "rps"):
                if if_dir is None:
                    if_dir, workload = if_workload(a, tmp)
                new, info = (
                    family_influence(a, sub, if_dir, workload) if fam == "influence" else family_rps(a, sub, if_dir)
                )
            elif fam == "trees":
                new, info = family_trees(a, tmp)
            else:
                new, info = family_labels(a)
            info["family_wall_s"] = time.perf_counter() - t
            rows += new
            families[new[0]["family"] if new else fam] = info
            for r in new:
                print(
                    f"[run_all]   {r['skrep']} | {r['peer']}: {_f(r['skrep_s'], '.3g')} s vs "
                    f"{_f(r['peer_s'], '.3g')} s, "
                    f"quality {_f(r['skrep_q'], '.4f')} vs {_f(r['peer_q'], '.4f')} {r['note'][:80]}",
                    flush=True,
                )
    res = {
        "quick": a.quick,
        "machine": machine(),
        "threads": a.threads,
        "skrep_version": skrep.__version__,
        "load_start": load_start,
        "load_end": " / ".join(f"{v:.2f}" for v in os.getloadavg()),
        "wall_s": time.perf_counter() - t0,
        "settings": {k: v for k, v in vars(a).items()},
        "rows": [{k: v for k, v in r.items() if k != "values"} for r in rows],
        "summary": summary(rows),
        "families": families,
    }
    name = "peers_quick" if a.quick else "peers"
    write_results(name, res)
    (RESULTS / f"{name}.md").write_text(markdown(res))
    print(f"written to {RESULTS / (name + '.md')} ({res['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
