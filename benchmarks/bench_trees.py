"""Tree ensembles: skrep on an XGBoost model next to tree-influence's BoostIn, same model, same run.

Workload (issue #5): 500 trees of depth 6 on 100,000 generated rows x 20 features with 10% of the
training labels flipped; fit + explain(top_k=10) for 1,000 test rows. Quality: the share of flipped
labels found when checking the top 10% by each method's self-influence.

skrep's BoostingTracIn is the same method as BoostIn (TracIn over the boosting rounds; the two
differ in one term of the leaf derivative), so that pair is the like-for-like comparison;
RepresenterPoints (a refit of the final leaves) is timed too. At the full scale BoostIn's
self-influence is taken as the row sums of its own two factors (``--self-from-factors`` of the
runner): its get_self_influence forms the (n_train x n_train) diagonal in batches, hours here. At
``--small`` it runs the peer's own get_self_influence.

BoostIn runs in its own venv (see benchmarks/peers/tree_influence_runner.py for how to build it);
where the venv is missing, its columns say so. Its local influence is timed on ``--peer-test`` test
rows and scaled linearly to the full test set (its cost is linear in test rows), which the results
file records.

    python benchmarks/bench_trees.py            # the issue's workload
    python benchmarks/bench_trees.py --small    # 10,000 rows x 100 trees, for a quick look
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import xgboost
from _common import peak_rss, write_results
from sklearn.datasets import make_classification

from skrep import BoostingTracIn, RepresenterLJE, RepresenterPoints

PEER_PYTHON = Path("/work/venvs/treeinf/bin/python")
RUNNER = Path(__file__).parent / "peers" / "tree_influence_runner.py"


def found_at(scores: np.ndarray, flipped: np.ndarray, fraction: float = 0.1) -> float:
    checked = np.argsort(-scores, kind="stable")[: int(fraction * len(scores))]
    return float(np.isin(checked, flipped).sum() / len(flipped))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--peer-test", type=int, default=100)
    parser.add_argument("--skip-peer-self", action="store_true", help="skip BoostIn's self-influence (slow)")
    args = parser.parse_args()
    n_train, n_trees = (10_000, 100) if args.small else (100_000, 500)
    n_test = 1000
    X, y = make_classification(n_train + n_test, 20, n_informative=10, random_state=0)
    X_train, y_train, X_test = X[:n_train], y[:n_train].copy(), X[n_train:]
    rng = np.random.default_rng(0)
    flipped = rng.choice(n_train, n_train // 10, replace=False)
    y_train[flipped] = 1 - y_train[flipped]
    t = time.perf_counter()
    model = xgboost.XGBClassifier(n_estimators=n_trees, max_depth=6, tree_method="hist", n_jobs=2, random_state=0)
    model.fit(X_train, y_train)
    train_s = time.perf_counter() - t
    y_test = model.predict(X_test)
    results: dict = {"workload": dict(n_train=n_train, n_test=n_test, n_trees=n_trees, depth=6, flipped=0.1)}
    results["xgboost_train_s"] = train_s

    ours = {}
    with peak_rss() as mem:
        t = time.perf_counter()
        tracin = BoostingTracIn(model).fit(X_train, y_train)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        tracin.explain(X_test, y_test, top_k=10)
        explain_s = time.perf_counter() - t
    t = time.perf_counter()
    self_tracin = tracin.self_influence()
    ours["boosting_tracin"] = dict(
        fit_s=fit_s,
        explain_s=explain_s,
        total_s=fit_s + explain_s,
        self_s=time.perf_counter() - t,
        peak_rss_gb=mem["delta"] / 2**30,
        replay_error=tracin.replay_error_,
        found_at_10=found_at(self_tracin, flipped),
    )
    with peak_rss() as mem:
        t = time.perf_counter()
        rps = RepresenterPoints(model, lam=1e-3).fit(X_train, y_train)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        E = rps.explain(X_test, top_k=10)
        explain_s = time.perf_counter() - t
    ours["rps"] = dict(
        fit_s=fit_s,
        explain_s=explain_s,
        total_s=fit_s + explain_s,
        peak_rss_gb=mem["delta"] / 2**30,
        fidelity=rps.score(X_test[:200]),
        n_leaves=rps.adapter_.n_leaves_,
    )
    t = time.perf_counter()
    labels = RepresenterPoints(model, lam=1e-3, refit_on="labels").fit(X_train, y_train)
    ours["rps_labels_self_influence"] = dict(
        s=time.perf_counter() - t, found_at_10=found_at(labels.self_influence(), flipped)
    )
    ours["rps"]["found_at_10"] = found_at(rps.self_influence(), flipped)
    if args.small:
        t = time.perf_counter()
        lje = RepresenterLJE(model, solver="cg", damping=1e-4).fit(X_train, y_train)
        E_lje = lje.explain(X_test[:20])
        # (LJE's self-influence with CG would solve one system per training point: not run here)
        ours["lje_cg_20_test"] = dict(
            s=time.perf_counter() - t, fidelity=float(np.corrcoef(E_lje.reconstruction, E_lje.output)[0, 1])
        )
    results["skrep"] = ours
    results["skrep_top_proponent_of_test_0"] = int(E.proponents(1)[0][0, 0])

    if not PEER_PYTHON.exists():
        results["boostin"] = {
            "error": f"{PEER_PYTHON} missing: build the venv as benchmarks/peers/tree_influence_runner.py says"
        }
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_model(f"{tmp}/m.json")
            (Path(tmp) / "params.json").write_text(model.get_booster().save_config())
            np.savez(
                f"{tmp}/d.npz",
                X_train=X_train,
                y_train=y_train,
                X_test=X_test[: args.peer_test],
                y_test=y_test[: args.peer_test],
            )
            cmd = [str(PEER_PYTHON), str(RUNNER), "--model", f"{tmp}/m.json", "--data", f"{tmp}/d.npz"]
            cmd += ["--methods", "boostin", "--top-k", "10", "--out", f"{tmp}/o.npz", "--max-seconds", "3000"]
            cmd += ["--xgb-params", f"{tmp}/params.json"] + (["--skip-self"] if args.skip_peer_self else [])
            cmd += [] if args.small else ["--self-from-factors"]
            subprocess.run(cmd, check=False)
            out = np.load(f"{tmp}/o.npz", allow_pickle=True)
            peer = {k[len("boostin_") :]: out[k] for k in out.files if k.startswith("boostin_")}
            if not bool(peer.get("ok", False)):
                results["boostin"] = {"error": str(peer.get("error", "no output"))}
            else:
                local = float(peer["local_s"]) * n_test / args.peer_test
                results["boostin"] = dict(
                    version=str(out["peer_version"]),
                    fit_s=float(peer["fit_s"]),
                    local_s_measured=float(peer["local_s"]),
                    local_s_scaled_to_full_test=local,
                    total_s=float(peer["fit_s"]) + local,
                    self_s=None if args.skip_peer_self else float(peer["self_s"]),
                    found_at_10=None
                    if args.skip_peer_self
                    else found_at(np.asarray(peer["self_influence"], dtype=float), flipped),
                    self_note=str(peer.get("self_note", "")),
                    peak_rss_gb=float(peer["peak_rss_mb"]) / 1024,
                )
                if "values" in peer:  # the same test rows, same labels: how close the two definitions are
                    ours_values = tracin.explain(X_test[: args.peer_test], y_test[: args.peer_test]).values
                    a, b = ours_values.ravel(), np.asarray(peer["values"], dtype=np.float64).ravel()
                    results["boosting_tracin_vs_boostin_pearson"] = float(np.corrcoef(a, b)[0, 1])
                for name in ("boosting_tracin", "rps"):
                    results[f"speedup_{name}_vs_boostin"] = results["boostin"]["total_s"] / ours[name]["total_s"]
    results["note"] = "2-core CPU shared with other jobs during the run: timings are noisy"
    write_results("bench_trees_small" if args.small else "bench_trees", results)


if __name__ == "__main__":
    main()
