#!/usr/bin/env python
"""Run the peer library tree-influence (Brophy, Hammoudeh & Lowd, JMLR 2023) on a saved XGBoost model.

Standalone: meant for the separate venv below, NOT skrep's (it never imports skrep). A benchmark in
skrep's venv saves the model (``model.save_model("m.json")``) and the data (``np.savez``), calls this
script with ``/work/venvs/treeinf/bin/python``, and reads back the ``--out`` npz.

Venv (commands used to build it; tree-influence's PyPI sdists lack ``_tree32.pyx``, so it is built
from the source repository, tag v0.1.7 = commit a32579475adee845547a71f992f238807b1a2d1d)::

    # source: a snapshot of jjbrophy47/tree_influence (here the search tool's `fetch`, a bare git dir;
    # elsewhere a git clone); tag v0.1.7 is also its newest commit
    git --git-dir=/work/.mirror/jjbrophy47+tree_influence/repo archive --format=tar \
        --prefix=tree_influence-0.1.7/ v0.1.7 | tar x -C /work/venvs/src
    python3 -m venv /work/venvs/treeinf                      # Python 3.11.7
    /work/venvs/treeinf/bin/pip install "numpy<2" "scikit-learn<1.4" "scipy<1.14" "pandas<2.3" \
        "xgboost==3.2.0" "Cython<3.1" joblib setuptools wheel
    /work/venvs/treeinf/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
        # CPU torch (TREX only). A plain `pip install torch` pulls the CUDA build (~5 GB of nvidia-*
        # wheels): if that happened, `pip uninstall` torch, triton, cuda-* and nvidia-* except
        # nvidia-nccl-cu12 (an xgboost dependency), then install the CPU wheel.
    cd /work/venvs/src/tree_influence-0.1.7 && \
        /work/venvs/treeinf/bin/pip install --no-build-isolation --no-deps .   # ~20 s, builds _tree32/_tree64

Resulting versions: tree-influence 0.1.7, xgboost 3.2.0, numpy 1.26.4, scikit-learn 1.3.2,
scipy 1.13.1, pandas 2.2.3, torch 2.13.0+cpu, Cython 3.0.12. Pins: numpy<2 because scikit-learn 1.3
is built against numpy 1; scikit-learn<1.4 because the peer's multiclass loss calls
``OneHotEncoder(sparse=False)`` (removed in 1.4). xgboost 3.2.0 is the same as skrep's venv, so a
model saved there loads here bit-for-bit (margins identical).

Usage::

    /work/venvs/treeinf/bin/python benchmarks/peers/tree_influence_runner.py \
        --model m.json --data d.npz --methods boostin,leafinfluence,trex --top-k 10 \
        --out peer.npz [--max-seconds 600] [--learning-rate 0.3 --reg-lambda 1] [--xgb-params p.json]

``--data`` holds X_train, y_train, X_test, y_test. Each method runs in its own subprocess with a
``--max-seconds`` wall-clock limit; a failure or timeout is recorded as ``<m>_error`` and the other
methods still run (a timeout during self-influence keeps the local results already computed).

Conventions. Every peer method returns ``(n_train, n_test)`` with positive = helpful, i.e. removing
the train point *raises* the test loss (tree_influence/explainers/boostin.py, leaf_inf.py, trex.py
class docstrings). skrep's convention is ``(n_test, n_train)``, positive = the train point supports
the prediction / removing it would raise the test loss: same sign, so the conversion is a transpose
only. Scale: BoostIn and LeafInfluence approximate ``-dL_test/dw_i`` (the loss change from removing one
point, weight step -1; no 1/n), TREX is the exact loss difference in its surrogate kernel model
``L(without i) - L(all)``. Self-influence (``Explainer.get_self_influence`` in base.py) is the diagonal
of the local influence on the training points with their own labels. Labels are the ``y_test`` given
(put predicted labels there to explain predictions rather than the true-label loss).

Hyper-parameters. The peer reads ``learning_rate`` and ``reg_lambda`` from ``model.get_params()``
(falling back to 0.3 and 1 when they are None). An XGBoost JSON model file does not hold them, so
pass ``--learning-rate/--reg-lambda`` or ``--xgb-params`` (a JSON dict of sklearn params, e.g.
``model.get_xgb_params()``, or ``booster.save_config()`` taken from the *trained* booster); otherwise
XGBoost's defaults are assumed and recorded. ``leaf_value_max_abs_err_{peer,model}`` check them: it recomputes every
leaf as -lr*G/(H+lambda) (what LeafInfluence.fit checks, atol 1e-5).

Intercept. The peer's XGBoost parser (parsers/parser_xgb.py) uses bias 0.0 for binary and multiclass
and ``get_params()['base_score']`` for regression. XGBoost >= 2 estimates the intercept
(boost_from_average), so a default binary model has margin = logit(base_score) + trees and the peer's
reconstruction is off by that constant (its BoostIn gradients and LeafInfluence leaf checks are then
wrong; LeafInfluence raises "max diff > tolerance"). ``--intercept model`` (default) patches only the
parsed ``bias`` to the model's margin-space intercept; ``--intercept peer`` runs the peer unmodified.
Models trained with ``base_score=0.5`` (binary) need no patch. Margins before/after are recorded.

Supported models (parsers/parser_xgb.py): XGBClassifier with ``binary:logistic`` or ``multi:softprob``,
XGBRegressor with ``reg:squarederror``; gbtree only, numeric splits only (the text dump is parsed;
the ``missing=`` default direction is ignored, so NaN always goes right: no missing values), leaf
values assumed to be one Newton step -lr*G/(H+lambda) (no reg_alpha, max_delta_step, sample weights,
scale_pos_weight). Other objectives fail with an AssertionError, recorded as ``<m>_error``.

Methods: ``boostin``, ``leafinfluence`` (``--leafinf-update-set``: -1 = peer default, all training
points updated; 0 = fast), ``trex`` (needs torch), ``treesim``, ``leafrefit``. Caveat: the peer's
LeafRefit (v0.1.7, leaf_refit.py) stores ``original_approx[:, b]`` *after* adding tree b and uses it to
re-estimate tree b's leaves, so it is not the fixed-structure leave-one-out it documents (measured
r = 0.41 against an independent fixed-structure LOO, where LeafInfluence(-1) reaches r = 0.994): do
not use it as ground truth. The peer's base ``get_self_influence`` passes ``verbose=0`` that
LeafInfluence / LeafRefit / TreeSim do not accept; the runner then computes the same diagonal itself
(``<m>_self_note`` says how).

Output npz keys: meta ``peer_name, peer_version, xgboost_version, numpy_version, sklearn_version,
torch_version, scipy_version, python_version, n_train, n_test, objective, objective_supported,
base_score, model_intercept_margin, learning_rate, reg_lambda, reg_alpha, max_delta_step,
hyperparams_source, xgb_margin_test, parser_bias_{peer,model}, margin_max_abs_err_{peer,model},
leaf_value_max_abs_err_{peer,model}, parse_error_{peer,model} (if any), methods, top_k,
intercept_mode, max_seconds, convention``; per method m: ``m_ok, m_error, m_stage, m_params,
m_fit_s, m_local_s, m_self_s, m_wall_s (incl. process start and imports), m_peak_rss_mb,
m_values (n_test, n_train) float32, m_rss_before_fit_mb (current RSS just before fit),
m_local_peak_rss_mb (peak RSS after the local influence, before self-influence),
m_topk_indices (n_test, k) int64, m_topk_values (n_test, k),
m_self_influence (n_train,), m_self_error, m_self_note, m_log, m_traceback (on error)``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

METHODS = ("boostin", "leafinfluence", "trex", "treesim", "leafrefit")
SUPPORTED_OBJECTIVES = ("binary:logistic", "multi:softprob", "reg:squarederror")


# --------------------------------------------------------------------------------------------------
# model loading and diagnostics (used by both the parent and the workers)
# --------------------------------------------------------------------------------------------------
def _read_model_json(path):
    with open(path) as f:
        j = json.load(f)
    lr = j["learner"]
    base = lr["learner_model_param"]["base_score"].strip("[]")
    base = np.array([float(v) for v in base.split(",")], dtype=np.float64)
    return lr["objective"]["name"], base, int(lr["learner_model_param"].get("num_class", "0") or 0)


def _hyperparams(args):
    """Training hyper-parameters the peer needs and a JSON model file lacks; returns (dict, source)."""
    hp = {"learning_rate": None, "reg_lambda": None, "reg_alpha": None, "max_delta_step": None}
    source = []
    if args.xgb_params:
        with open(args.xgb_params) as f:
            cfg = json.load(f)
        if "learner" in cfg:  # booster.save_config()
            tp = cfg["learner"]["gradient_booster"].get("tree_train_param", {})
            cfg = {
                "learning_rate": tp.get("eta"),
                "reg_lambda": tp.get("lambda"),
                "reg_alpha": tp.get("alpha"),
                "max_delta_step": tp.get("max_delta_step"),
            }
        alias = {"eta": "learning_rate", "lambda": "reg_lambda", "alpha": "reg_alpha"}
        for k, v in cfg.items():
            k = alias.get(k, k)
            if k in hp and v is not None:
                hp[k] = float(v)
        source.append(f"--xgb-params {args.xgb_params}")
    if args.learning_rate is not None:
        hp["learning_rate"] = args.learning_rate
        source.append("--learning-rate")
    if args.reg_lambda is not None:
        hp["reg_lambda"] = args.reg_lambda
        source.append("--reg-lambda")
    defaults = {"learning_rate": 0.3, "reg_lambda": 1.0, "reg_alpha": 0.0, "max_delta_step": 0.0}
    missing = [k for k in ("learning_rate", "reg_lambda") if hp[k] is None]
    if missing:
        source.append("xgboost defaults for " + ",".join(missing) + " (not stored in the model file)")
    for k, v in defaults.items():
        if hp[k] is None:
            hp[k] = v
    return hp, "; ".join(source)


def load_model(args):
    """Rebuild the live sklearn estimator the peer expects from the JSON model file."""
    import xgboost as xgb

    objective, base, num_class = _read_model_json(args.model)
    cls = xgb.XGBRegressor if objective.startswith("reg:") else xgb.XGBClassifier
    model = cls()
    model.load_model(args.model)
    hp, source = _hyperparams(args)
    # set attributes directly (not set_params, which would push them into the trained booster)
    model.learning_rate = hp["learning_rate"]
    model.reg_lambda = hp["reg_lambda"]
    model.reg_alpha = hp["reg_alpha"]
    model.max_delta_step = hp["max_delta_step"]
    return model, objective, base, num_class, hp, source


def intercept_margin(objective, base):
    """The model's intercept in margin space (what the trees' sum is added to)."""
    if objective in ("binary:logistic", "reg:logistic"):
        p = np.clip(base, 1e-12, 1 - 1e-12)
        return np.log(p / (1 - p))
    return base.copy()  # reg:squarederror, multi:softprob (xgboost>=3 stores margins per class)


def install_intercept_patch(objective, margin_intercept):
    """Replace only the `bias` the peer's XGBoost parser returns with the model's real intercept."""
    import tree_influence.explainers.parsers as P

    orig = P.parse_xgb_ensemble
    if getattr(orig, "_skrep_patched", False):
        return

    def patched(model):
        trees, params = orig(model)
        if params["objective"] == "multiclass":
            b = [float(v) for v in np.broadcast_to(margin_intercept, (trees.shape[1],))]
        else:
            b = float(margin_intercept[0])
        params["bias"] = b
        return trees, params

    patched._skrep_patched = True
    P.parse_xgb_ensemble = patched  # parse_model looks the name up in this module at call time


def parsed_margin(ens, X):
    from tree_influence.explainers.parsers import util

    X = util.check_input_data(X)
    out = np.tile(np.asarray(ens.bias, dtype=np.float64), (X.shape[0], 1))
    for b in range(ens.n_boost_):
        for c in range(ens.n_class_):
            out[:, c] += ens.trees[b, c].predict(X)
    return out


def leaf_value_check(ens, X, y):
    """Max |leaf - (-lr * G / (H + lambda))| over all leaves (LeafInfluence.fit's own check)."""
    from tree_influence.explainers.parsers import util

    X, y = util.check_data(X, y, objective=ens.objective)
    loss = util.get_loss_fn(ens.objective, ens.n_class_, ens.factor)
    approx = np.tile(np.asarray(ens.bias, dtype=np.float64), (X.shape[0], 1))
    worst = 0.0
    for b in range(ens.n_boost_):
        g, h = loss.gradient(y, approx), loss.hessian(y, approx)
        for c in range(ens.n_class_):
            tree = ens.trees[b, c]
            leaf = tree.apply(X)
            vals = tree.get_leaf_values()
            G = np.bincount(leaf, weights=g[:, c], minlength=len(vals))
            H = np.bincount(leaf, weights=h[:, c], minlength=len(vals))
            used = np.bincount(leaf, minlength=len(vals)) > 0
            pred = -G / (H + ens.l2_leaf_reg) * ens.learning_rate
            if used.any():
                worst = max(worst, float(np.max(np.abs(pred - vals)[used])))
            approx[:, c] += vals[leaf]
    return worst


def _xgb_margin(model, X):
    m = np.asarray(model.predict(X, output_margin=True), dtype=np.float64)
    return m.reshape(X.shape[0], -1)


# --------------------------------------------------------------------------------------------------
# worker: one method in its own process
# --------------------------------------------------------------------------------------------------
def make_explainer(method, args):
    from tree_influence.explainers import BoostIn, LeafInfluence, LeafRefit, TreeSim, Trex

    if method == "boostin":
        return BoostIn(), {}
    if method == "leafinfluence":
        p = {"update_set": args.leafinf_update_set, "n_jobs": args.n_jobs}
        return LeafInfluence(**p), p
    if method == "trex":
        p = {
            "kernel": args.trex_kernel,
            "target": args.trex_target,
            "lmbd": 0.003,
            "n_epoch": 3000,
            "random_state": args.seed,
        }
        return Trex(**p), p
    if method == "leafrefit":  # fixed-structure leave-one-out (exact leaf re-estimation), for fidelity
        p = {"update_set": args.leafinf_update_set, "n_jobs": args.n_jobs}
        return LeafRefit(**p), p
    if method == "treesim":
        return TreeSim(), {}
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _save(path, res):
    tmp = path + ".tmp.npz"
    np.savez(tmp, **res)
    os.replace(tmp, path)


def _peak_rss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb():
    """The current resident set size (Linux); NaN where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def per_removal_self_influence(expl, X, y):
    """Diagonal of LeafInfluence's (LeafRefit's) local influence, one removed point at a time.

    The peer's Explainer.get_self_influence calls get_local_influence(..., verbose=0), which
    LeafInfluence / LeafRefit.get_local_influence do not accept (TypeError); this calls the peer's own
    per-removal routine (`_loss_derivative` / `_loss_delta`) on the removed point only: the same numbers
    as the diagonal, without the O(n_train^2) work.
    """
    from tree_influence.explainers.parsers import util

    fn = getattr(expl, "_loss_derivative", None) or expl._loss_delta
    X, y = util.check_data(X, y, objective=expl.model_.objective)
    out = np.zeros(X.shape[0], dtype=np.float64)
    for i in range(X.shape[0]):
        out[i] = float(np.sum(fn(X[i : i + 1], y[i : i + 1], i)))
    return out


def batched_self_influence(expl, X, y, batch=100):
    """Explainer.get_self_influence (base.py) without its verbose kwarg."""
    out = np.zeros(X.shape[0], dtype=np.float64)
    for s in range(0, X.shape[0], batch):
        idx = np.arange(s, min(s + batch, X.shape[0]))
        inf = expl.get_local_influence(X[idx].copy(), y[idx].copy())  # (n_train, len(idx))
        out[idx] = np.diag(inf[idx])
    return out


def boostin_factor_self_influence(expl, X, y):
    """BoostIn's self-influence from the peer's own two factors, without its O(n_train^2) diagonal.

    get_local_influence sums ``train_leaf_dvs_ * test_gradients * mask`` over boosts and classes,
    with mask = [same leaf]; on the diagonal the mask is all ones, so the diagonal is the row sum
    of ``train_leaf_dvs_ * _compute_gradients(X_train, y_train)``: the peer's own arrays, the
    same numbers (checked against get_self_influence by benchmarks/bench_trees.py --small).
    """
    from tree_influence.explainers.parsers import util

    X, y = util.check_data(X, y, objective=expl.model_.objective)
    return np.sum(expl.train_leaf_dvs_ * expl._compute_gradients(X, y), axis=(1, 2))


def worker(method, args, out_path):
    import warnings

    # the peer's multiclass loss calls OneHotEncoder(sparse=False): one FutureWarning per call on sklearn 1.2-1.3
    warnings.filterwarnings("ignore", category=FutureWarning)
    res = {
        "ok": False,
        "error": "",
        "stage": "start",
        "fit_s": np.nan,
        "local_s": np.nan,
        "self_s": np.nan,
        "self_error": "",
        "self_note": "",
    }
    try:
        d = np.load(args.data)
        X_tr, y_tr, X_te, y_te = d["X_train"], d["y_train"], d["X_test"], d["y_test"]
        model, objective, base, num_class, hp, source = load_model(args)
        if args.intercept == "model":
            install_intercept_patch(objective, intercept_margin(objective, base))
        expl, params = make_explainer(method, args)
        res["params"] = json.dumps(params)

        res["stage"] = "fit"
        _save(out_path, res)
        res["rss_before_fit_mb"] = _rss_mb()
        t = time.perf_counter()
        expl.fit(model, X_tr, y_tr)
        res["fit_s"] = time.perf_counter() - t

        if not args.skip_local:
            res["stage"] = "local"
            _save(out_path, res)
            t = time.perf_counter()
            inf = expl.get_local_influence(X_te, y_te)  # (n_train, n_test), positive = helpful
            res["local_s"] = time.perf_counter() - t
            vals = np.ascontiguousarray(np.asarray(inf, dtype=np.float64).T)  # skrep: (n_test, n_train)
            k = min(args.top_k, vals.shape[1])
            idx = np.argsort(-vals, axis=1, kind="stable")[:, :k]
            res["topk_indices"] = idx.astype(np.int64)
            res["topk_values"] = np.take_along_axis(vals, idx, axis=1).astype(np.float32)
            if args.full == "yes" or (args.full == "auto" and vals.size <= args.full_max_entries):
                res["values"] = vals.astype(np.float32)
            res["peak_rss_mb"] = res["local_peak_rss_mb"] = _peak_rss_mb()

        res["ok"] = True  # local part done; self-influence failures are recorded separately
        if not args.skip_self:
            res["stage"] = "self"
            _save(out_path, res)
            t = time.perf_counter()
            try:
                if method == "boostin" and args.self_from_factors:
                    si = boostin_factor_self_influence(expl, X_tr, y_tr)
                    res["self_note"] = "row sums of the peer's train_leaf_dvs_ * _compute_gradients (its diagonal)"
                else:
                    si = expl.get_self_influence(X_tr, y_tr)
                    res["self_note"] = "peer Explainer.get_self_influence"
            except TypeError as e:
                if "verbose" not in str(e):
                    raise
                # the peer's base get_self_influence passes verbose=0, which LeafInfluence and TreeSim's
                # get_local_influence do not accept: compute the same diagonal without it
                t = time.perf_counter()
                if method in ("leafinfluence", "leafrefit"):
                    si = per_removal_self_influence(expl, X_tr, y_tr)
                    res["self_note"] = (
                        "peer get_self_influence raises TypeError (verbose kwarg); diagonal via "
                        "the peer's per-removal routine (_loss_derivative / _loss_delta), "
                        "one point at a time"
                    )
                else:
                    si = batched_self_influence(expl, X_tr, y_tr)
                    res["self_note"] = (
                        "peer get_self_influence raises TypeError (verbose kwarg); same batched "
                        "diagonal of get_local_influence (batches of 100) without the kwarg"
                    )
            res["self_s"] = time.perf_counter() - t
            res["self_influence"] = np.asarray(si, dtype=np.float64)
        res["stage"] = "done"
    except Exception as e:  # recorded, never raised
        if res["stage"] == "self":
            res["self_error"] = f"{type(e).__name__}: {e}"
        else:
            res["ok"] = False
            res["error"] = f"{type(e).__name__}: {e}"
        res["traceback"] = traceback.format_exc()
    res["peak_rss_mb"] = _peak_rss_mb()
    _save(out_path, res)
    return 0


# --------------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------------
def diagnostics(args):
    """Versions, intercept, and how the peer's parsed model reproduces XGBoost's margins."""
    import importlib.metadata as md

    out = {}
    for name, key in [
        ("tree-influence", "peer_version"),
        ("xgboost", "xgboost_version"),
        ("numpy", "numpy_version"),
        ("scikit-learn", "sklearn_version"),
        ("torch", "torch_version"),
        ("scipy", "scipy_version"),
    ]:
        try:
            out[key] = md.version(name)
        except md.PackageNotFoundError:
            out[key] = ""
    out["peer_name"] = "tree-influence"
    out["python_version"] = platform.python_version()
    d = np.load(args.data)
    X_tr, y_tr, X_te = d["X_train"], d["y_train"], d["X_test"]
    out["n_train"], out["n_test"] = X_tr.shape[0], X_te.shape[0]
    try:
        model, objective, base, num_class, hp, source = load_model(args)
        out["objective"] = objective
        out["objective_supported"] = objective in SUPPORTED_OBJECTIVES
        out["base_score"] = base
        out["model_intercept_margin"] = intercept_margin(objective, base)
        for k, v in hp.items():
            out[k] = v
        out["hyperparams_source"] = source
        out["xgb_margin_test"] = _xgb_margin(model, X_te)
        from tree_influence.explainers.parsers import parse_model

        for mode in ("peer", "model"):
            try:
                if mode == "model":
                    install_intercept_patch(objective, out["model_intercept_margin"])
                with contextlib.redirect_stdout(sys.stderr):  # the peer prints its own mismatch warning
                    ens = parse_model(model, X_tr, y_tr)
                out[f"parser_bias_{mode}"] = np.atleast_1d(np.asarray(ens.bias, dtype=np.float64))
                err = np.abs(parsed_margin(ens, X_te) - out["xgb_margin_test"])
                out[f"margin_max_abs_err_{mode}"] = float(err.max())
                out[f"leaf_value_max_abs_err_{mode}"] = leaf_value_check(ens, X_tr, y_tr)
            except Exception as e:
                out[f"parse_error_{mode}"] = f"{type(e).__name__}: {e}"
    except Exception as e:
        out["model_error"] = f"{type(e).__name__}: {e}"
    return out


def run_method(method, args, tmpdir, raw_argv):
    out_path = os.path.join(tmpdir, f"{method}.npz")
    cmd = [sys.executable, os.path.abspath(__file__), *raw_argv, "--_worker", method, "--_worker-out", out_path]
    env = dict(os.environ)
    if args.threads:
        for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[v] = str(args.threads)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    timed_out = False
    try:
        log, _ = proc.communicate(timeout=args.max_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        log, _ = proc.communicate()
    wall = time.perf_counter() - t0
    res = {}
    if os.path.exists(out_path):
        with np.load(out_path, allow_pickle=False) as z:
            res = {k: z[k] for k in z.files}
    res.setdefault("ok", False)
    res.setdefault("error", "")
    stage = str(res.get("stage", "start"))
    if timed_out:
        msg = f"timeout after {args.max_seconds:g} s (stage: {stage})"
        if stage == "self" and bool(res["ok"]):
            res["self_error"] = msg
        else:
            res["ok"], res["error"] = False, msg
    elif proc.returncode != 0 and not str(res["error"]):
        res["ok"], res["error"] = False, f"worker exited with code {proc.returncode} (stage: {stage})"
    res["wall_s"] = wall
    res["log"] = log.decode(errors="replace")[-4000:]
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="XGBoost model saved by save_model (.json)")
    p.add_argument("--data", required=True, help="npz with X_train, y_train, X_test, y_test")
    p.add_argument("--methods", default="boostin,leafinfluence,trex", help=f"comma list of {','.join(METHODS)}")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--out", required=True)
    p.add_argument("--max-seconds", type=float, default=600.0, help="wall-clock limit per method (subprocess)")
    p.add_argument(
        "--intercept",
        choices=("model", "peer"),
        default="model",
        help="model: patch the parsed bias to the model's intercept; peer: run the peer unmodified",
    )
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--reg-lambda", type=float, default=None)
    p.add_argument("--xgb-params", default=None, help="JSON: sklearn params dict or booster.save_config()")
    p.add_argument(
        "--leafinf-update-set",
        type=int,
        default=-1,
        help="LeafInfluence/LeafRefit update_set (peer default -1; 0 is the fast variant)",
    )
    p.add_argument("--n-jobs", type=int, default=1, help="LeafInfluence/LeafRefit n_jobs")
    p.add_argument("--trex-kernel", default="lpw")
    p.add_argument("--trex-target", default="actual", choices=("actual", "predicted"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--full",
        choices=("auto", "yes", "no"),
        default="auto",
        help="store the full (n_test, n_train) values (auto: when <= --full-max-entries)",
    )
    p.add_argument("--full-max-entries", type=int, default=20_000_000)
    p.add_argument("--skip-self", action="store_true")
    p.add_argument(
        "--self-from-factors",
        action="store_true",
        help="BoostIn's self-influence as the row sums of its own factors (the diagonal, in O(n_train))",
    )
    p.add_argument("--skip-local", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="set OMP/BLAS threads in workers (0: leave)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_worker-out", default=None, help=argparse.SUPPRESS)
    raw_argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(raw_argv)

    if args._worker:
        return worker(args._worker, args, args._worker_out)

    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    out = diagnostics(args)
    out["methods"] = np.array(methods)
    out["top_k"] = args.top_k
    out["intercept_mode"] = args.intercept
    out["max_seconds"] = args.max_seconds
    out["convention"] = (
        "values/topk: (n_test, n_train) = peer output transposed; positive = removing the train "
        "point raises the test loss (helpful); self_influence: (n_train,) same sign"
    )
    with tempfile.TemporaryDirectory(prefix="treeinf_") as tmp:
        for m in methods:
            if m not in METHODS:
                out[f"{m}_ok"], out[f"{m}_error"] = False, f"unknown method; choose from {METHODS}"
                continue
            res = run_method(m, args, tmp, raw_argv)
            for k, v in res.items():
                out[f"{m}_{k}"] = v
            fmt = {
                key: "n/a" if np.isnan(float(res.get(key, np.nan))) else f"{float(res[key]):.3f}s"
                for key in ("fit_s", "local_s", "self_s")
            }
            status = "ok" if bool(res["ok"]) else f"FAILED: {res['error']}"
            self_err = str(res.get("self_error", ""))
            print(
                f"[tree_influence_runner] {m}: fit {fmt['fit_s']}, local {fmt['local_s']}, self {fmt['self_s']}; "
                f"{status}{'; self: ' + self_err if self_err else ''}",
                file=sys.stderr,
            )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    np.savez(args.out, **{k: np.asarray(v) for k, v in out.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
