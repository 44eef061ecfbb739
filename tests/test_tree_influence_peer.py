"""skrep's tree methods next to tree-influence (Brophy et al.) on the same XGBoost model.

tree-influence does not build from PyPI (its sdists lack a Cython source) and pins old numpy and
scikit-learn, so it lives in a venv of its own (benchmarks/peers/tree_influence_runner.py says how
to build it) and runs through that runner. Skipped where the venv is missing: set
SKREP_TREE_INFLUENCE_PYTHON to its interpreter, default /work/venvs/treeinf/bin/python.

What is checked, on a generated task with 10% of the training labels flipped:
- BoostingTracIn is BoostIn's method: their local influences agree (Pearson), and its self-influence
  finds at least as many flipped labels when checking the top 10%;
- our LJE and influence-function self-influences rank the training points as LeafInfluence's does
  (Spearman >= 0.9); their Spearman with BoostIn and every method's recall are reported (``-s``
  prints the table). Measured: recall 0.735 (LJE), 0.725 (IF head), 0.740 (BoostingTracIn),
  0.740 (BoostIn), 0.745 (LeafInfluence).
"""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from scipy.stats import spearmanr
from sklearn.datasets import make_classification

from skrep import BoostingTracIn, InfluenceFunctions, RepresenterLJE

PEER = Path(os.environ.get("SKREP_TREE_INFLUENCE_PYTHON", "/work/venvs/treeinf/bin/python"))
RUNNER = Path(__file__).resolve().parents[1] / "benchmarks" / "peers" / "tree_influence_runner.py"

pytestmark = [
    pytest.mark.skipif(not PEER.exists(), reason=f"tree-influence venv not found at {PEER}"),
    pytest.mark.slow,  # about 2 minutes, most of it LeafInfluence's self-influence
]


def _found(scores, flipped):
    checked = np.argsort(-scores, kind="stable")[: len(scores) // 10]
    return float(np.isin(checked, flipped).sum() / len(flipped))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    n = 2000
    X, y = make_classification(n + 100, 10, n_informative=6, random_state=0)
    X_train, y_train, X_test = X[:n], y[:n].copy(), X[n:]
    flipped = np.random.default_rng(0).choice(n, n // 10, replace=False)
    y_train[flipped] = 1 - y_train[flipped]
    model = xgb.XGBClassifier(n_estimators=50, max_depth=4, random_state=0).fit(X_train, y_train)
    y_test = model.predict(X_test)
    tmp = tmp_path_factory.mktemp("treeinf")
    model.save_model(tmp / "m.json")
    (tmp / "params.json").write_text(model.get_booster().save_config())
    np.savez(tmp / "d.npz", X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test)
    cmd = [str(PEER), str(RUNNER), "--model", str(tmp / "m.json"), "--data", str(tmp / "d.npz")]
    cmd += ["--methods", "boostin,leafinfluence", "--xgb-params", str(tmp / "params.json")]
    cmd += ["--out", str(tmp / "o.npz"), "--full", "yes", "--max-seconds", "300"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=700)
    out = np.load(tmp / "o.npz", allow_pickle=True)
    peer = {}
    for m in ("boostin", "leafinfluence"):
        assert bool(out[f"{m}_ok"]), str(out[f"{m}_error"])
        peer[m] = {k: out[f"{m}_{k}"] for k in ("values", "self_influence")}
    return model, X_train, y_train, X_test, y_test, flipped, peer


def test_boosting_tracin_is_boostin_and_finds_as_many_flipped_labels(task):
    model, X_train, y_train, X_test, y_test, flipped, peer = task
    ours = BoostingTracIn(model).fit(X_train, y_train)
    values = ours.explain(X_test, y_test).values
    r = np.corrcoef(values.ravel(), peer["boostin"]["values"].ravel())[0, 1]
    self_ours = ours.self_influence()
    rho = spearmanr(self_ours, peer["boostin"]["self_influence"])[0]
    recall_ours, recall_peer = _found(self_ours, flipped), _found(peer["boostin"]["self_influence"], flipped)
    print(
        f"\nBoostingTracIn vs BoostIn: local Pearson {r:.4f}, self Spearman {rho:.4f}, "
        f"recall@10% {recall_ours:.3f} vs {recall_peer:.3f}"
    )
    assert r >= 0.98 and rho >= 0.95
    assert recall_ours >= recall_peer


def test_head_self_influences_next_to_the_peers(task):
    model, X_train, y_train, X_test, y_test, flipped, peer = task
    ours = {
        "LJE": RepresenterLJE(model, damping=1e-3).fit(X_train, y_train).self_influence(),
        "IF head": InfluenceFunctions(model, params="head", damping=1e-3).fit(X_train, y_train).self_influence(),
        "BoostingTracIn": BoostingTracIn(model).fit(X_train, y_train).self_influence(),
    }
    rows = []
    for name, s in ours.items():
        rhos = {m: spearmanr(s, peer[m]["self_influence"])[0] for m in peer}
        rows.append((name, _found(s, flipped), rhos["boostin"], rhos["leafinfluence"]))
    rows += [(m, _found(peer[m]["self_influence"], flipped), np.nan, np.nan) for m in peer]
    print("\nmethod           recall@10%   Spearman vs BoostIn   vs LeafInfluence")
    for name, rec, a, b in rows:
        print(f"{name:16s} {rec:10.3f} {a:20.3f} {b:18.3f}")
    # LJE and the influence function are influence on the final leaf values, as LeafInfluence is
    for name, _, _, vs_leaf in rows[:2]:
        assert vs_leaf >= 0.9, (name, vs_leaf)
