"""Reliability (issue #11): faulty inputs, numerical trouble, saved objects, seeds and untrusted files.

A fault ends in an sklearn-style exception (ValueError, TypeError or NotFittedError) raised by skrep or
sklearn, never from inside torch or numpy, whose message names the argument and says what to do; or in
a documented warning. No fault gives NaN output. ``check_error`` below is the one definition of "clean".

fault                                    expected outcome                     test
---------------------------------------- ------------------------------------ ------------------------------------------
1. INPUT VALIDATION (property-based, hypothesis)
X of the wrong width, 1-D, 3-D, empty,   ValueError / TypeError naming X      test_bad_X_is_refused_by_every_explainer
  NaN, inf, text, complex, scipy sparse
  or None, to fit / explain / score of
  RPS, LJE, IF (torch MLP,
  LogisticRegression, XGBoost) and
  TracIn
NaN in X of an XGBoost model             accepted: finite values; output =    test_nan_is_valid_input_for_trees
                                           XGBoost's own margin
X of dtype int, bool, float16, float32,  accepted: values equal those of the  test_accepted_dtypes_give_the_float_result
  object (sklearn, XGBoost); float16,      float64 (torch: float32) array
  float64 (torch)
int, bool or object X for a float        ValueError naming the dtype /        test_a_float_network_refuses_non_float_X
  network                                  TypeError
int X for a token model                  accepted unchanged: output = the     test_integer_X_reaches_a_token_model
  (nn.EmbeddingBag)                        model's
y too short or long, 2-D, unknown        ValueError / TypeError naming y      test_bad_y_is_refused
  labels, text, NaN, None or a scalar,
  to fit
y or target given to explain: wrong      ValueError naming y or target        test_bad_labels_to_explain_are_refused
  length, unknown labels, NaN
unknown labels given to explain as y     ValueError naming y, not target      test_labels_given_to_explain_are_named_y
single-class y                           explainers: accepted, finite, self-  test_single_class_y_is_accepted
                                           influence = diagonal of explain
single-class y for the cleaners and      the estimator's ValueError           test_cleaners_refuse_single_class_y
  selector
parameters out of range, NaN, inf, bool, ValueError / TypeError naming the    test_bad_parameters_are_named
  text, None, unknown choice               parameter
  (explainers, cleaners, selector,
  NeuronInfluence, DoIs)
a model skrep cannot explain: object,    TypeError / ValueError /             test_wrong_model_types_are_refused
  str, None, array, unfitted, random       NotFittedError naming it
  forest, dart, hinge, exponential loss,
  softmax after the head, no nn.Linear
explain, self_influence, score,          NotFittedError saying fit            test_unfitted_estimators_raise_not_fitted
  reconstruct, explain_group,
  sensitivity_maps, predict, experts...
  before fit
bad X to the forward pass of every       ValueError / TypeError naming X      test_adapters_refuse_bad_X
  adapter
adapter constructors: unfitted model,    TypeError / ValueError /             test_adapters_refuse_unreadable_models
  wrong type, unknown layer, batch_size,   NotFittedError naming the problem
  loss
LabelCleaner, CleanLabelsClassifier,     ValueError / TypeError naming X or y test_cleaners_and_selector_refuse_bad_data
  RepresenterSelector: bad X or y          (the estimator's own error where
                                           it decides)
NaN in X for a cleaner fitting XGBoost   accepted: scores = IF of the tree    test_cleaners_accept_nan_for_trees
  (LogisticRegression: its own             model fitted by hand
  ValueError)
NeuronInfluence fit / explain /          ValueError / TypeError naming X      test_neuron_influence_refuses_bad_X
  visualize: bad X
CLI: bad cell, missing column, ragged or exit status 2, one line 'skrep:      test_cli_user_errors_exit_2_in_one_line
  empty CSV, missing file, untrusted or    error: ...' naming the problem, no
  broken model, bad --out, tracin          traceback
  without a torch model or checkpoints,
  bad --learning-rate, usage errors
the checker itself, on torch's and       it refuses them                      test_check_error_refuses_torch_and_numpy
  numpy's own errors
2. NUMERICAL SAFETY
indefinite network Hessian, IF exact     RuntimeWarning stating damping=...,  test_indefinite_hessian_exact_warns
  solver                                   the lowest eigenvalue and a
                                           damping that fixes it; values = an
                                           independent pseudo-inverse
indefinite network Hessian, IF cg and    ValueError stating damping=...; with test_indefinite_hessian_cg_lissa_raise
  lissa                                    enough damping cg = exact
singular head Hessian (a duplicated      no warning; values = the model's     test_singular_head_hessian_loses_nothing
  column)                                  without the duplicate
head weights x 1e4 (overflowing logits)  values, self-influence, output,      test_overflowing_logits_give_finite_values
                                           score finite; output = the model's
logits of about 1e160 (inputs x 1e160 to score finite, in [-1, 1]            test_score_is_finite_for_huge_outputs
  LogisticRegression)
inputs x 1e4 for RPS on a torch model    the refit falls back to float64 and  test_large_features_refit_in_float64
  (float32 products lose the penalty)      converges
RPS refit with max_iter=1                ConvergenceWarning with the gradient test_unconverged_refit_warns_grad_norm
                                           norm reached (= an independent
                                           gradient)
float16 / bfloat16 networks              float32 features; values finite and  test_low_precision_networks_run_in_float32
                                           close to the float32 network's
3. PERSISTENCE
pickle and joblib round trip: RPS, LJE   identical explanations, self-        test_pickle_and_joblib_round_trips
  (explicit, cg), IF (head; all: exact,    influence, scores (np.array_equal)
  cg), TracIn (head; all, projected) on
  torch; RPS on XGBoost and
  LogisticRegression; LabelCleaner;
  RepresenterSelector; NeuronInfluence
4. DETERMINISM
the same random_state twice: TracIn      bit-identical; another seed gives    test_same_random_state_is_bit_identical
  projections (gaussian, fc-fast), hnsw    other values where the seed
  index; IF lissa, sketch, arnoldi;        matters
  LabelCleaner, CleanLabelsClassifier,
  RepresenterSelector
5. LOADING
TracIn checkpoint paths                  read with                            test_tracin_reads_checkpoints_weights_only
                                           torch.load(weights_only=True)
a checkpoint holding a pickled callable  ValueError naming the file; its code test_tracin_refuses_a_checkpoint_with_code
                                           never runs
a pickle-based model file without        exit 2 naming the flag; its code     test_cli_runs_no_pickle_without_trust
  --trust-model-file                       never runs (with the flag, it
                                           does)
6. STORE, INTERRUPTION, DASK FAULTS, N_JOBS (tests/test_store.py, tests/test_parallel.py;
   test names on the line below each fault)
fit(X, y, store=p), then fit(store=p) in  identical explanations, self-influence, top-k; arrays memory-mapped
  this process or a new one              from the store
  -> test_store_round_trip_identical (RPS, LJE, IF head / all, TracIn), test_store_round_trip_xgboost,
     test_store_reopened_in_a_new_process
a store for other weights, parameters,   ValueError saying what differs and how to refit
  explainer class or format version
  -> test_store_for_another_model_is_refused, test_store_with_other_parameters_is_refused,
     test_other_format_version_is_refused
a truncated or missing store file        ValueError: "damaged", naming the file and its size
  -> test_truncated_or_missing_file_is_refused
a store state that names code            ValueError; the code never runs -> test_state_naming_code_is_refused
a folder that is not a store             refused; its files untouched -> test_not_a_store
KeyboardInterrupt / OSError while        no temporary folder left; the explainer and the old store as they were
  writing a store                        -> test_interrupted_write_leaves_no_partial_files
KeyboardInterrupt during a streaming     the explainer unchanged, no file written; the next explain is the same
  explain from a store                   -> test_interrupted_explain_leaves_the_explainer_as_it_was
explain streaming a store                one chunk's pages resident at a time, not the file
                                         -> test_explain_streams_a_store_without_keeping_it_resident
n_jobs=2, -1 (threads)                   bit-identical to n_jobs=None
  -> test_n_jobs_and_joblib_backends_give_identical_bits
joblib loky backend, Dask LocalCluster   same top-k indices; values equal to float rounding (other processes
  (2 worker processes)                   may run torch with other thread counts)
  -> test_n_jobs_and_joblib_backends_give_identical_bits, test_dask_local_cluster_equals_single_process
a Dask worker killed mid-explain, and    the single-process result within 120 s (lost chunks are sent again)
  one killed between calls               -> test_dask_worker_killed_mid_explain_gives_the_exact_result
"""

import contextlib
import copy
import io
import math
import os
import pickle
import re
import tempfile
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
import torch.nn.functional as F
import xgboost
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.base import clone
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.neural_network import MLPClassifier
from torch import nn

import skrep
from skrep import (
    BoostingTracIn,
    CleanLabelsClassifier,
    GaussianDoI,
    InfluenceFunctions,
    LabelCleaner,
    LinearPathDoI,
    RepresenterLJE,
    RepresenterPoints,
    RepresenterSelector,
    TracIn,
)
from skrep.adapters import GradientBoostingAdapter, LinearAdapter, SKLearnMLPAdapter, TorchAdapter, XGBoostAdapter
from skrep.cli import main
from skrep.neurons import ClassQoI, NeuronInfluence, Slice

pytestmark = pytest.mark.usefixtures("one_thread")

# The same examples on every run (the suite stays deterministic) and no example database in the work
# tree; the only function-scoped fixture is conftest's autouse torch seed, harmless between examples.
PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

N, D = 60, 5
FAMILIES = ("torch", "linear", "xgboost")
KEYS = [(family, method) for family in FAMILIES for method in ("rps", "lje", "if")]
KEYS += [("torch", "tracin"), ("xgboost", "boosting_tracin")]


# ---- what a clean refusal is -------------------------------------------------------------------------
_ORIGINS = tuple(str(Path(module.__file__).parent) + os.sep for module in (skrep, sklearn))
# a message says what to do when it asks for something (pass, remove, reshape...) or states what is
# required (must, needs, one of...)
_ADVICE = re.compile(
    r"\b(pass|use|remove|impute|reshape|fit|refit|raise|save|encode|scale|clip|check|call|leave|drop|convert|return|"
    r"wrap|name|fill|choose|give|must|needs?|expects?|expecting|expected|required?|requires|should|only|"
    r"instead|supported|supports|takes|at least|at most|one of|one per)\b",
    re.IGNORECASE,
)
X_NAMED = (r"\bX\b",)


def check_error(exc, names=X_NAMED, advice=True):
    """Assert that ``exc`` is an sklearn-style error raised by skrep or sklearn, naming one of ``names``.

    names=None: the message is the user's own estimator's (sklearn's), whose wording skrep does not own.
    """
    kind = type(exc)
    assert issubclass(kind, (ValueError, TypeError)) and kind.__module__ in ("builtins", "sklearn.exceptions"), (
        f"{kind.__module__}.{kind.__qualname__}: {exc}"
    )
    frame = traceback.extract_tb(exc.__traceback__)[-1].filename
    assert frame.startswith(_ORIGINS), f"raised inside {frame}, not by skrep or sklearn: {exc}"
    message = str(exc)
    if names is not None:
        assert any(re.search(name, message) for name in names), f"{message!r} names none of {names}"
        if advice:
            assert _ADVICE.search(message), f"{message!r} does not say what to do"


def refused(call, names=X_NAMED, advice=True):
    """Run ``call``, which must fail cleanly; return the exception."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fault may warn on its way to the error
        with pytest.raises((ValueError, TypeError)) as info:
            call()
    check_error(info.value, names, advice)
    return info.value


def test_check_error_refuses_torch_and_numpy():
    with pytest.raises(RuntimeError) as torch_error:
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    with pytest.raises(np.linalg.LinAlgError) as numpy_error:
        np.linalg.cholesky(-np.eye(2))
    with pytest.raises(ValueError) as our_error:
        RepresenterPoints(LogisticRegression().fit(np.eye(3), [0, 1, 0])).fit(np.eye(3)[:, :2], [0, 1, 0])
    with pytest.raises(AssertionError):
        check_error(torch_error.value)
    with pytest.raises(AssertionError, match="numpy"):
        check_error(numpy_error.value)
    with pytest.raises(AssertionError, match="names none"):
        check_error(our_error.value, names=(r"\blam\b",))
    check_error(our_error.value)


# ---- models and fitted explainers, once per module -------------------------------------------------
def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(N, D))
    y2 = (X[:, 0] + X[:, 1] + 0.5 * rng.normal(size=N) > 0).astype(int)
    y3 = rng.integers(0, 3, N)
    return SimpleNamespace(X=X, y2=y2, y3=y3)


@pytest.fixture(scope="module")
def models(data):
    """family -> (model, training X in the dtype the model takes, y)."""
    xgb = xgboost.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1, random_state=0).fit(data.X, data.y2)
    return {
        "torch": (_mlp(), data.X.astype(np.float32), data.y3),
        "linear": (LogisticRegression().fit(data.X, data.y2), data.X, data.y2),
        "xgboost": (xgb, data.X, data.y2),
    }


def _explainer(method, model):
    return {
        "rps": lambda: RepresenterPoints(model),
        "lje": lambda: RepresenterLJE(model, damping=1e-3),
        "if": lambda: InfluenceFunctions(model, damping=1e-3),
        "tracin": lambda: TracIn(model, [model.state_dict()], 0.1),
        "boosting_tracin": lambda: BoostingTracIn(model),
    }[method]()


@pytest.fixture(scope="module")
def fitted(models):
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family, method in KEYS:
            model, X, y = models[family]
            out[family, method] = _explainer(method, model).fit(X, y)
    return out


def _n_classes(family):
    return 3 if family == "torch" else 2


# ---- 1. input validation -----------------------------------------------------------------------------
X_FAULTS = ("width", "1-D", "3-D", "empty", "nan", "inf", "text", "complex", "sparse", "None")


@st.composite
def faulty_X(draw, faults=X_FAULTS, min_rows=1):
    """(fault, X): a test-sized X with one fault, for models that take D columns."""
    fault = draw(st.sampled_from(faults))
    n = draw(st.integers(min_rows, 6))
    X = draw(arrays(np.float64, (n, D), elements=st.floats(-3, 3)))
    i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, D - 1))
    if fault == "width":
        X = np.resize(X, (n, draw(st.integers(1, 2 * D).filter(lambda w: w != D))))
    elif fault == "1-D":
        X = X[:, j]
    elif fault == "3-D":
        X = np.repeat(X[:, :, None], draw(st.integers(1, 3)), axis=2)
    elif fault == "empty":
        X = X[:0]
    elif fault in ("nan", "inf"):
        X[i, j] = np.nan if fault == "nan" else draw(st.sampled_from([np.inf, -np.inf]))
    elif fault == "text":
        X = X.astype(object)
        X[i, j] = draw(st.sampled_from(["a", "", "1,5", "NaN?"]))
    elif fault == "complex":
        X = X + 1j * draw(st.floats(0.5, 2))
    elif fault == "sparse":
        X = draw(st.sampled_from([sp.csr_matrix, sp.csc_matrix, sp.coo_matrix]))(X)
    else:
        X = None
    return fault, X


def _rows(X):
    return 3 if X is None else X.shape[0]


def _in_family_dtype(X, family):
    """The faulty X in the dtype the family's training data has (float32 for torch), faults kept."""
    if family == "torch" and isinstance(X, np.ndarray) and X.dtype == np.float64:
        return X.astype(np.float32)
    return X


@pytest.mark.parametrize("key", KEYS, ids="-".join)
@PROPERTY
@given(where=st.sampled_from(["fit", "explain", "score"]), case=faulty_X())
def test_bad_X_is_refused_by_every_explainer(fitted, models, key, where, case):
    fault, X = case
    family = key[0]
    assume(not (family == "xgboost" and fault == "nan"))  # valid for trees: test_nan_is_valid_input_for_trees
    X = _in_family_dtype(X, family)
    explainer = fitted[key]
    assume(hasattr(explainer, where))  # influence methods have no score
    if where == "fit":
        y = np.resize(models[family][2], _rows(X))
        refused(lambda: clone(explainer).fit(X, y))
    else:
        refused(lambda: getattr(explainer, where)(X))


@PROPERTY
@given(
    method=st.sampled_from(["rps", "lje", "if"]),
    cells=st.lists(st.tuples(st.integers(0, 9), st.integers(0, D - 1)), min_size=1, max_size=12),
)
def test_nan_is_valid_input_for_trees(fitted, models, method, cells):
    model, X, _ = models["xgboost"]
    X = X[:10].copy()
    for i, j in cells:
        X[i, j] = np.nan
    E = fitted["xgboost", method].explain(X)
    assert np.isfinite(E.values).all() and np.isfinite(E.reconstruction).all()
    # RPS and LJE explain the logit of the predicted class (z for class 1, -z for class 0), IF the loss there
    margin = np.abs(model.predict(X, output_margin=True)).astype(np.float64)
    expected = np.log1p(np.exp(-margin)) if method == "if" else margin
    np.testing.assert_allclose(E.output, expected, rtol=1e-5, atol=1e-6)


_ACCEPTED_DTYPES = {
    "torch": [np.float16, np.float64],
    "linear": [np.int32, np.int64, np.bool_, np.float16, np.float32, object],
    "xgboost": [np.int32, np.int64, np.bool_, np.float16, np.float32, object],
}


@pytest.mark.parametrize("family", FAMILIES)
@PROPERTY
@given(
    method=st.sampled_from(["rps", "lje", "if", "tracin"]), where=st.sampled_from(["explain", "fit"]), data=st.data()
)
def test_accepted_dtypes_give_the_float_result(fitted, models, family, method, where, data):
    assume(method != "tracin" or family == "torch")
    key = family, method
    dtype = data.draw(st.sampled_from(_ACCEPTED_DTYPES[family]))
    reference = np.float32 if family == "torch" else np.float64
    model, X, y = models[family]
    X = (3 * X).astype(dtype)  # scaled so that integers and bools still vary
    X_ref = X.astype(reference)  # the values the dtype holds, as the model's float type
    explainer = fitted[key]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if where == "explain":
            rows = data.draw(st.lists(st.integers(0, N - 1), min_size=1, max_size=8, unique=True))
            got, expected = explainer.explain(X[rows]).values, explainer.explain(X_ref[rows]).values
        else:
            got, expected = clone(explainer).fit(X, y).self_influence(), clone(explainer).fit(X_ref, y).self_influence()
    assert np.isfinite(got).all()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    "dtype,pattern", [(np.int64, r"dtype"), (np.int32, r"dtype"), (np.bool_, r"numeric"), (object, r"numeric")]
)
def test_a_float_network_refuses_non_float_X(fitted, models, dtype, pattern):
    _, X, y = models["torch"]
    X = (3 * X).astype(dtype)
    for call in (lambda: clone(fitted["torch", "rps"]).fit(X, y), lambda: fitted["torch", "if"].explain(X[:4])):
        error = refused(call)
        assert re.search(pattern, str(error))


def test_integer_X_reaches_a_token_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.EmbeddingBag(10, 4), nn.Linear(4, 3))
    tokens = np.random.default_rng(0).integers(0, 10, size=(40, 6))
    E = RepresenterPoints(net).fit(tokens, np.arange(40) % 3).explain(tokens[:5])
    with torch.no_grad():
        logits = net(torch.as_tensor(tokens[:5])).numpy()
    np.testing.assert_allclose(E.output, logits.max(1), rtol=1e-6)  # the predicted class's logit
    assert np.isfinite(E.values).all()


Y_FAULTS = ("short", "long", "2-D", "unknown", "text", "nan", "None", "scalar")


@st.composite
def faulty_y(draw, y, n_classes, faults=Y_FAULTS):
    """(fault, y): the labels y with one fault."""
    fault = draw(st.sampled_from(faults))
    i = draw(st.integers(0, len(y) - 1))
    if fault == "short":
        return fault, y[: draw(st.integers(0, len(y) - 1))]
    if fault == "long":
        return fault, np.concatenate([y, y[: draw(st.integers(1, 5))]])
    if fault == "2-D":
        return fault, np.repeat(y[:, None], draw(st.integers(1, 3)), axis=1)
    if fault == "unknown":
        bad = y.copy()
        bad[i] = draw(st.integers(n_classes, 100) | st.integers(-100, -1))
        return fault, bad
    if fault == "text":
        return fault, y.astype(str)
    if fault == "nan":
        bad = y.astype(float)
        bad[i] = np.nan
        return fault, bad
    if fault == "None":
        return fault, None
    return fault, draw(st.integers(0, n_classes - 1))


@pytest.mark.parametrize("key", KEYS, ids="-".join)
@PROPERTY
@given(data=st.data())
def test_bad_y_is_refused(fitted, models, key, data):
    family = key[0]
    _, X, y = models[family]
    _, bad = data.draw(faulty_y(y, _n_classes(family)))
    refused(lambda: clone(fitted[key]).fit(X, bad), names=(r"\by\b",))


@PROPERTY
@given(key=st.sampled_from(KEYS), data=st.data())
def test_bad_labels_to_explain_are_refused(fitted, models, key, data):
    family, method = key
    _, X, y = models[family]
    X, y = X[:6], y[:6]
    k = _n_classes(family)
    explainer = fitted[key]
    if data.draw(st.booleans(), label="as target"):
        target = data.draw(
            st.sampled_from([k, -1, 99, "cat"]) | st.lists(st.integers(0, k - 1), min_size=1, max_size=12)
        )
        assume(not (isinstance(target, list) and len(target) == len(X)))
        refused(lambda: explainer.explain(X, target=target), names=(r"\btarget\b",))
    else:
        # methods that decompose a logit check only the length of y: they do not use it
        loss = method in ("if", "tracin")
        _, bad = data.draw(faulty_y(y, k, ("short", "long", "unknown", "nan", "text") if loss else ("short", "long")))
        assume(bad is not None and len(bad) > 0)
        refused(lambda: explainer.explain(X, bad), names=(r"\by\b", r"\btarget\b"))


def test_labels_given_to_explain_are_named_y(fitted, models):
    _, X, _ = models["linear"]
    error = refused(lambda: fitted["linear", "if"].explain(X[:3], [7, 7, 7]), names=(r"\by\b",))
    assert "target" not in str(error)


@pytest.mark.parametrize("family", FAMILIES)
def test_single_class_y_is_accepted(models, family):
    # the model, not y, fixes the classes: labels of one class are valid data to explain
    model, X, y = models[family]
    y0 = np.zeros_like(y)
    explainer = InfluenceFunctions(model, damping=1e-3).fit(X, y0)
    si = explainer.self_influence()
    assert np.isfinite(si).all() and si.shape == (N,)
    # self-influence is the diagonal of the explanation of the training points at their own labels
    np.testing.assert_allclose(si, np.diag(explainer.explain(X, y0).values), rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LabelCleaner(estimator=LogisticRegression()),
        lambda: CleanLabelsClassifier(LogisticRegression()),
        lambda: RepresenterSelector(estimator=LogisticRegression()),
    ],
)
def test_cleaners_refuse_single_class_y(data, make):
    refused(lambda: make().fit(data.X, np.zeros(N, int)), names=(r"class",))


# parameters: each entry draws invalid values; check_number's range is strictly positive by default
def _numbers(integer=False, zero_ok=False, upper=None, upper_ok=True, none_ok=False):
    """Invalid values for a number in (0, upper]: [0, upper] with zero_ok, upper excluded without upper_ok.

    Out of range, NaN, infinite, a bool, text, and None unless none_ok.
    """
    bad = [st.sampled_from([math.nan, math.inf, -math.inf]), st.booleans(), st.text(max_size=4)]
    if integer:
        bad += [st.integers(max_value=-1 if zero_ok else 0), st.floats(0.1, 1e4).filter(lambda v: not v.is_integer())]
    else:
        bad.append(st.floats(max_value=0.0, exclude_max=zero_ok, allow_infinity=False))
    if upper is not None:
        bad.append(st.floats(min_value=upper, exclude_min=upper_ok, allow_infinity=False))
    if not none_ok:
        bad.append(st.none())
    return st.one_of(bad)


def _choice(valid, none_ok=False):
    bad = st.text(max_size=8).filter(lambda v: v not in valid)
    return bad if none_ok else bad | st.none()


_POS, _POS_INT, _NONNEG = _numbers(), _numbers(integer=True), _numbers(zero_ok=True)
_L2 = _NONNEG.filter(lambda v: v != "auto")
_UNIT = _numbers(upper=1.0)
_FRACTION = _numbers(zero_ok=True, upper=1.0, upper_ok=False)
_N_POINTS = _numbers(upper=1.0) | st.integers(N + 1, 10**6)
_DEVICE = st.sampled_from(["tpu", "gpu", "cuda:x", ""])
BAD_PARAMETERS = [
    ("rps", "lam", _POS),
    ("rps", "max_iter", _POS_INT),
    ("rps", "tol", _POS),
    ("rps", "refit_on", _choice(("model", "labels"))),
    ("rps", "device", _DEVICE),
    ("rps", "batch_size", _POS_INT),
    ("rps", "block_bytes", _POS_INT),
    ("rps", "max_dense_bytes", _POS_INT),
    ("lje", "eta", _NONNEG),
    ("lje", "damping", _NONNEG),
    ("lje", "l2", _L2),
    ("lje", "solver", _choice(("auto", "explicit", "cg"))),
    ("lje", "cg_tol", _UNIT),
    ("lje", "explicit_max", _POS_INT),
    ("lje", "penalize_bias", _choice((True, False))),
    ("if", "damping", _NONNEG),
    ("if", "l2", _L2),
    ("if", "solver", _choice(("exact", "cg", "lissa", "arnoldi", "sketch"))),
    ("if", "params", _choice(("head", "all")) | st.integers() | st.just([]) | st.lists(st.integers(), min_size=1)),
    ("if", "rank", _numbers(integer=True, none_ok=True)),
    ("if", "lissa_depth", _POS_INT),
    ("if", "stochastic_batch_size", _POS_INT),
    ("if", "sketch_steps", _POS_INT),
    ("if", "explicit_max", _POS_INT),
    ("if", "lissa_scale", _numbers(none_ok=True)),
    ("if", "sketch_dim", _numbers(integer=True, none_ok=True)),
    ("if", "cg_tol", _UNIT),
    ("tracin", "learning_rates", _POS),
    ("tracin", "checkpoints", st.sampled_from([None, [], 3, "ckpt.pt", {}])),
    ("tracin", "projection_dim", _numbers(integer=True, none_ok=True)),
    ("tracin", "projection", _choice(("gaussian", "fc-fast"))),
    ("tracin", "index", _choice(("faiss", "hnsw"), none_ok=True)),
    ("tracin", "params", _choice(("head", "all")) | st.integers() | st.just([])),
    ("cleaner", "fraction", _FRACTION),
    ("cleaner", "action", _choice(("drop", "relabel"))),
    ("cleaner", "scoring", _choice(("self_influence",)) | st.integers()),
    ("clean-clf", "fraction", _FRACTION),
    ("clean-clf", "max_rounds", _POS_INT),
    ("selector", "n_points", _N_POINTS),
    ("selector", "strategy", _choice(("proponents", "self_influence"))),
    ("selector", "stratify", _choice((True, False))),
    ("neurons", "batch_size", _POS_INT),
    ("gaussian-doi", "sigma", _POS),
    ("gaussian-doi", "n_samples", _POS_INT),
    ("path-doi", "steps", _POS_INT),
]


def _fit_with(kind, param, value, models, data):
    net, Xt, y3 = models["torch"]
    if kind in ("rps", "lje", "if", "tracin"):
        return _explainer(kind, net).set_params(**{param: value}).fit(Xt, y3)
    lr = LogisticRegression()
    if kind == "cleaner":
        return LabelCleaner(estimator=lr, **{param: value}).fit(data.X, data.y2)
    if kind == "clean-clf":
        return CleanLabelsClassifier(lr, **{param: value}).fit(data.X, data.y2)
    if kind == "selector":
        return RepresenterSelector(estimator=lr, **{param: value}).fit(data.X, data.y2)
    if kind == "neurons":
        return NeuronInfluence(net, Slice("1"), ClassQoI(0), **{param: value}).fit(Xt)
    if kind == "gaussian-doi":
        return GaussianDoI(**{"sigma": 0.1, param: value})
    return LinearPathDoI(**{param: value})


@pytest.mark.parametrize("kind,param,values", BAD_PARAMETERS, ids=[f"{k}-{p}" for k, p, _ in BAD_PARAMETERS])
@settings(PROPERTY, max_examples=10)
@given(draws=st.data())
def test_bad_parameters_are_named(models, data, kind, param, values, draws):
    value = draws.draw(values, label=f"{kind}.{param}")
    refused(lambda: _fit_with(kind, param, value, models, data), names=(rf"\b{param}\b",))


@pytest.fixture(scope="module")
def wrong_models(data):
    X, y = data.X, data.y2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [
            (object(), r"object"),
            ("model.pt", r"\bstr\b"),
            (None, r"NoneType"),
            (3, r"\bint\b"),
            (np.zeros((3, 3)), r"ndarray"),
            (LogisticRegression(), r"LogisticRegression is not fitted"),
            (xgboost.XGBClassifier(), r"XGBClassifier is not fitted"),
            (RandomForestClassifier(n_estimators=2, random_state=0).fit(X, y), r"RandomForestClassifier"),
            (xgboost.XGBClassifier(booster="dart", n_estimators=2).fit(X, y), r"booster='dart'"),
            (SGDClassifier(loss="hinge", random_state=0).fit(X, y), r"loss='hinge'"),
            (GradientBoostingClassifier(loss="exponential", n_estimators=2).fit(X, y), r"loss='exponential'"),
            (nn.Sequential(nn.Linear(D, 3), nn.Softmax(1)), r"nn\.Linear"),
            (nn.Sequential(nn.ReLU()), r"nn\.Linear"),
        ]


@pytest.mark.parametrize("index", range(13))
@PROPERTY
@given(method=st.sampled_from(["rps", "lje", "if", "tracin"]))
def test_wrong_model_types_are_refused(wrong_models, data, index, method):
    model, name = wrong_models[index]
    if method == "tracin":
        explainer = TracIn(model, [model.state_dict() if isinstance(model, nn.Module) else {}])
        if not isinstance(model, nn.Module):
            name = r"torch nn\.Module"
    else:
        explainer = _explainer(method, model)
    X = data.X.astype(np.float32) if isinstance(model, nn.Module) else data.X
    refused(lambda: explainer.fit(X, data.y2), names=(name,))


def _neurons(net):
    return NeuronInfluence(net, Slice("1"), ClassQoI(0))


UNFITTED_CALLS = {
    "RepresenterPoints.explain": lambda net, X, y: RepresenterPoints(net).explain(X),
    "RepresenterPoints.sensitivity_maps": lambda net, X, y: RepresenterPoints(net).sensitivity_maps(X[:1], [0]),
    "RepresenterLJE.self_influence": lambda net, X, y: RepresenterLJE(net).self_influence(),
    "RepresenterLJE.reconstruct": lambda net, X, y: RepresenterLJE(net).reconstruct(X),
    "RepresenterPoints.score": lambda net, X, y: RepresenterPoints(net).score(X),
    "InfluenceFunctions.explain_group": lambda net, X, y: InfluenceFunctions(net).explain_group(X, y, [[0]]),
    "TracIn.explain (index)": lambda net, X, y: TracIn(net, [net.state_dict()], index="hnsw").explain(X, top_k=2),
    "TracIn.self_influence": lambda net, X, y: TracIn(net, [net.state_dict()]).self_influence(),
    "BoostingTracIn.self_influence": lambda net, X, y: BoostingTracIn(net).self_influence(),
    "CleanLabelsClassifier.predict": lambda net, X, y: CleanLabelsClassifier(LogisticRegression()).predict(X),
    "CleanLabelsClassifier.predict_proba": (
        lambda net, X, y: CleanLabelsClassifier(LogisticRegression()).predict_proba(X)
    ),
    "NeuronInfluence.explain": lambda net, X, y: _neurons(net).explain(X),
    "NeuronInfluence.experts": lambda net, X, y: _neurons(net).experts(1),
    "NeuronInfluence.compress": lambda net, X, y: _neurons(net).compress(np.ones(8, bool)),
    "NeuronInfluence.visualize": lambda net, X, y: _neurons(net).visualize(0, X),
}


@pytest.mark.parametrize("name", list(UNFITTED_CALLS))
def test_unfitted_estimators_raise_not_fitted(models, name):
    net, X, y = models["torch"]
    with pytest.raises(NotFittedError) as info:
        UNFITTED_CALLS[name](net, X, y)
    check_error(info.value, names=(r"\bfit\b",))


@pytest.fixture(scope="module")
def adapters(models, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the MLP stops before converging: irrelevant here
        mlp = MLPClassifier(hidden_layer_sizes=(4,), max_iter=50, random_state=0).fit(data.X, data.y2)
    gb = GradientBoostingClassifier(n_estimators=3, max_depth=2, random_state=0).fit(data.X, data.y2)
    return {
        "torch": lambda: TorchAdapter(models["torch"][0]),
        "linear": lambda: LinearAdapter(models["linear"][0]),
        "xgboost": lambda: XGBoostAdapter(models["xgboost"][0]),
        "sklearn-mlp": lambda: SKLearnMLPAdapter(mlp),
        "gradient-boosting": lambda: GradientBoostingAdapter(gb),
    }


@pytest.mark.parametrize("kind", ["torch", "linear", "xgboost", "sklearn-mlp", "gradient-boosting"])
@PROPERTY
@given(case=faulty_X())
def test_adapters_refuse_bad_X(adapters, kind, case):
    fault, X = case
    assume(not (kind in ("xgboost", "gradient-boosting") and fault == "nan"))
    refused(lambda: adapters[kind]().forward(_in_family_dtype(X, kind)))


@pytest.mark.parametrize(
    "make,pattern",
    [
        (lambda m: TorchAdapter("net"), r"nn\.Module"),
        (lambda m: TorchAdapter(m["torch"][0], last_layer="fc"), r"last_layer='fc'"),
        (lambda m: TorchAdapter(m["torch"][0], last_layer="1"), r"last_layer='1'"),
        (lambda m: TorchAdapter(m["torch"][0], batch_size=0), r"\bbatch_size\b"),
        (lambda m: TorchAdapter(m["torch"][0], batch_size=2.5), r"\bbatch_size\b"),
        (lambda m: TorchAdapter(m["torch"][0], loss="hinge"), r"loss='hinge'"),
        (lambda m: TorchAdapter(nn.Sequential(nn.ReLU())), r"nn\.Linear"),
        (lambda m: LinearAdapter(LogisticRegression()), r"not fitted"),
        (lambda m: LinearAdapter(m["torch"][0]), r"Sequential"),
        (lambda m: XGBoostAdapter(xgboost.XGBClassifier()), r"not fitted"),
        (lambda m: XGBoostAdapter(m["linear"][0]), r"LogisticRegression"),
        (lambda m: SKLearnMLPAdapter(MLPClassifier()), r"not fitted"),
        (lambda m: GradientBoostingAdapter(GradientBoostingClassifier()), r"not fitted"),
        (lambda m: skrep.make_adapter(m["linear"][0], batch_size=3), r"batch_size"),
    ],
    ids=[
        "not-a-module",
        "unknown-layer",
        "layer-not-linear",
        "batch-size-0",
        "batch-size-float",
        "unknown-loss",
        "no-linear",
        "unfitted-linear",
        "linear-given-a-network",
        "unfitted-xgboost",
        "xgboost-given-linear",
        "unfitted-mlp",
        "unfitted-gradient-boosting",
        "options-for-linear",
    ],
)
def test_adapters_refuse_unreadable_models(models, make, pattern):
    refused(lambda: make(models), names=(pattern,))


def _cleaner(kind, net):
    lr = LogisticRegression()
    return {
        "cleaner": lambda: LabelCleaner(estimator=lr),
        "clean-clf": lambda: CleanLabelsClassifier(lr, fraction=0.5),  # the explainer runs on 2 rows too
        "selector": lambda: RepresenterSelector(estimator=lr),
        "cleaner-torch": lambda: LabelCleaner(RepresenterPoints(net, refit_on="labels")),
        "selector-torch": lambda: RepresenterSelector(RepresenterPoints(net)),
    }[kind]()


# faults that reach an estimator fitted by the cleaner: its own (sklearn's) message decides
_ESTIMATOR_DECIDES = {"3-D", "text"}


@pytest.mark.parametrize("kind", ["cleaner", "clean-clf", "selector", "cleaner-torch", "selector-torch"])
@PROPERTY
@given(on_y=st.booleans(), data=st.data())
def test_cleaners_and_selector_refuse_bad_data(models, kind, on_y, data):
    net, Xt, y3 = models["torch"]
    torch_model = kind.endswith("-torch")
    _, X, y = models["torch" if torch_model else "linear"]
    if on_y:
        # a new label is another class for an estimator fitted here, and text labels are labels
        faults = Y_FAULTS if torch_model else ("short", "long", "2-D", "nan", "None", "scalar")
        fault, bad = data.draw(faulty_y(y, _n_classes("torch" if torch_model else "linear"), faults))
        assume(not (fault == "2-D" and bad.shape[1] == 1))  # a column vector is raveled, with sklearn's warning
        refused(lambda: _cleaner(kind, net).fit(X, bad), names=(r"\by\b",))
    else:
        # a width is a fault only for a fixed model; an estimator fitted here takes any width, but two classes
        faults = X_FAULTS if torch_model else tuple(f for f in X_FAULTS if f != "width")
        fault, bad = data.draw(faulty_X(faults, min_rows=2))
        names = None if fault in _ESTIMATOR_DECIDES and not torch_model else X_NAMED
        bad = _in_family_dtype(bad, "torch" if torch_model else "linear")
        refused(lambda: _cleaner(kind, net).fit(bad, np.arange(_rows(bad)) % 2), names=names)


def test_cleaners_accept_nan_for_trees(data):
    # NaN is a missing value that trees route: the cleaner leaves it to the estimator, which takes it
    X = data.X.copy()
    X[::7, 2] = np.nan
    xgb = xgboost.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1, random_state=0)
    template = InfluenceFunctions(None, damping=1e-3)
    cleaner = LabelCleaner(template, estimator=xgb, fraction=0.1).fit(X, data.y2)
    by_hand = InfluenceFunctions(clone(xgb).fit(X, data.y2), damping=1e-3).fit(X, data.y2).self_influence()
    assert np.isfinite(cleaner.scores_).all()
    np.testing.assert_array_equal(cleaner.scores_, by_hand)
    refused(lambda: LabelCleaner(estimator=LogisticRegression()).fit(X, data.y2))  # a linear model does not


@pytest.fixture(scope="module")
def neurons(models):
    net, X, _ = models["torch"]
    return NeuronInfluence(net, Slice("1"), ClassQoI(0)).fit(X)


@PROPERTY
@given(where=st.sampled_from(["fit", "explain", "visualize"]), case=faulty_X())
def test_neuron_influence_refuses_bad_X(neurons, where, case):
    _, X = case
    X = _in_family_dtype(X, "torch")
    calls = {
        "fit": lambda: clone(neurons).fit(X),
        "explain": lambda: neurons.explain(X),
        "visualize": lambda: neurons.visualize(0, X),
    }
    refused(calls[where])


# ---- the command line -------------------------------------------------------------------------------
class _Payload:
    """Pickles as a call to open(marker, 'w'): loading it runs code, which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


_HEADER = ["id", "a", "b", "c", "d", "e", "label"]


def _write_csv(path, rows, header=_HEADER):
    with open(path, "w") as f:
        f.write("\n".join(",".join(map(str, row)) for row in [header, *rows]) + ("\n" if rows else ""))


def _table(X, y, prefix):
    return [[f"{prefix}{i}", *(repr(float(v)) for v in X[i]), int(y[i])] for i in range(len(X))]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, data):
    d = tmp_path_factory.mktemp("cli")
    _write_csv(d / "train.csv", _table(data.X[:50], data.y2[:50], "r"))
    _write_csv(d / "test.csv", _table(data.X[50:], data.y2[50:], "t"))
    joblib.dump(LogisticRegression().fit(data.X[:50], data.y2[:50]), d / "model.joblib")
    joblib.dump({"not": "a model"}, d / "dict.joblib")
    (d / "corrupt.joblib").write_bytes(b"not a pickle")
    (d / "model.txt").write_text("?")
    (d / "broken.json").write_text('{"learner": ')
    net = nn.Sequential(nn.Linear(D, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(net, d / "net.pt")
    torch.save(net.state_dict(), d / "ck.pt")
    torch.save({"0.weight": _Payload(d / "ran")}, d / "code.pt")
    return d


def _run_cli(argv):
    """(exit status, stderr) of the skrep command."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return code, err.getvalue()


def _cli_case(draw, base, fault):
    """(argv, pattern the message must match) for one user error."""
    d = Path(tempfile.mkdtemp(dir=base))
    files = {"train": base / "train.csv", "test": base / "test.csv"}
    model, extra = base / "model.joblib", ["--trust-model-file"]
    out, pattern = d / "out.csv", None
    if fault in ("cell", "drop-column", "ragged", "header-only", "empty-file", "missing-file"):
        which = draw(st.sampled_from(["train", "test"]))
        rows = [line.split(",") for line in files[which].read_text().splitlines()]
        header, body = rows[0], rows[1:]
        if fault == "cell":
            r, c = draw(st.integers(0, len(body) - 1)), draw(st.integers(1, D))
            body[r][c] = draw(st.sampled_from(["abc", "", "inf", "-inf", "1e999", "1.5.2"]))
        elif fault == "drop-column":
            c = draw(st.integers(1, len(header) - 1))  # a feature or the label column
            header, body = (
                [h for j, h in enumerate(header) if j != c],
                [[v for j, v in enumerate(row) if j != c] for row in body],
            )
            assume(not (which == "test" and c == len(_HEADER) - 1))  # test labels are optional
        elif fault == "ragged":
            body[draw(st.integers(0, len(body) - 1))].pop()
        elif fault == "header-only":
            body = []
        path = d / f"{which}.csv"
        if fault == "empty-file":
            path.write_text("")
        elif fault != "missing-file":
            _write_csv(path, body, header)
        files[which] = path
        pattern = rf"{which}\.csv|\bX\b"
    elif fault == "model":
        model, extra, pattern = draw(
            st.sampled_from(
                [
                    (base / "model.joblib", [], r"--trust-model-file"),
                    (base / "dict.joblib", extra, r"cannot explain a builtins\.dict"),
                    (base / "corrupt.joblib", extra, r"corrupt\.joblib"),
                    (base / "model.txt", extra, r"model\.txt"),
                    (base / "broken.json", extra, r"broken\.json"),
                    (base / "missing.joblib", extra, r"missing\.joblib"),
                ]
            )
        )
    elif fault == "out":
        out = draw(st.sampled_from([d / "out.txt", d / "no-folder" / "out.csv"]))
        pattern = r"--out"
    elif fault == "tracin":
        extra, pattern = draw(
            st.sampled_from(
                [
                    (["--trust-model-file", "--method", "tracin", "--checkpoint", str(base / "ck.pt")], r"tracin"),
                    (["--trust-model-file", "--method", "tracin"], r"--checkpoint"),
                    (["--method", "tracin", "--checkpoint", str(base / "code.pt")], r"code\.pt"),
                    (["--method", "tracin", "--checkpoint", str(base / "ck.pt"), "--learning-rate", "nan"], "learning"),
                    (["--method", "tracin", "--checkpoint", str(base / "ck.pt"), "--learning-rate", "-1"], "learning"),
                ]
            )
        )
        if pattern != "tracin":
            model, extra = base / "net.pt", ["--trust-model-file", *extra]
    else:  # argparse: a bad choice or number
        extra = draw(st.sampled_from([["--method", "bogus"], ["--top-k", "0"], ["--top-k", "x"]]))
    argv = ["explain", "--model", str(model), "--train", str(files["train"]), "--test", str(files["test"])]
    argv += ["--target", "label", "--id-column", "id", "--out", str(out), "--quiet", *extra]
    return argv, pattern


@PROPERTY
@given(
    fault=st.sampled_from(
        [
            "cell",
            "drop-column",
            "ragged",
            "header-only",
            "empty-file",
            "missing-file",
            "model",
            "out",
            "tracin",
            "usage",
        ]
    ),
    data=st.data(),
)
def test_cli_user_errors_exit_2_in_one_line(cli_files, fault, data):
    argv, pattern = _cli_case(data.draw, cli_files, fault)
    code, err = _run_cli(argv)
    assert code == 2, err
    assert "Traceback" not in err
    if pattern is None:  # argparse: usage, then the error
        assert "error:" in err
        return
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skrep: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert not (cli_files / "ran").exists()


# ---- 2. numerical safety -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def network64(data):
    """An untrained (so indefinite) float64 MLP with per-sample gradients and its Hessian, by torch.func."""
    net = _mlp(1).double()
    X = torch.as_tensor(data.X)
    y = torch.as_tensor(data.y3)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(flat, x, t):
        pieces = flat.split([s.numel() for s in shapes])
        params = {n: v.reshape(s) for n, v, s in zip(names, pieces, shapes, strict=True)}
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), t)

    H = torch.func.hessian(loss)(theta, X, y)
    G = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(theta, X[:, None], y[:, None])
    return SimpleNamespace(net=net, X=data.X, y=data.y3, H=H, G=G)


def _influence(H, G, rows, damping=0.0):
    """(1/n) g_t^T (H + damping)^+ g_i on the positive eigenspace (psd_inverse's rule), float64."""
    evals, Q = torch.linalg.eigh(H + damping * torch.eye(len(H), dtype=H.dtype))
    keep = evals > 1e-10 * evals.abs().max()
    inverse = (Q[:, keep] / evals[keep]) @ Q[:, keep].T
    return (G[rows] @ inverse @ G.T / len(G)).numpy()


def test_indefinite_hessian_exact_warns(network64):
    s = network64
    lowest = float(torch.linalg.eigvalsh(s.H).min())
    assert lowest < 0  # the premise: an untrained network's Hessian has negative curvature
    with pytest.warns(RuntimeWarning, match=r"damping=0 is indefinite") as record:
        inf = InfluenceFunctions(s.net, params="all").fit(s.X, s.y)
    message = str(next(w.message for w in record if "indefinite" in str(w.message)))
    stated = float(re.search(r"lowest eigenvalue is (\S+)\)", message).group(1))
    assert stated == pytest.approx(lowest, rel=1e-2)
    # documented: inverted on the positive eigenspace
    np.testing.assert_allclose(inf.explain(s.X[:5], s.y[:5]).values, _influence(s.H, s.G, slice(5)), rtol=1e-6)
    # the damping the warning advises makes the Hessian definite: no warning, the damped inverse
    suggested = float(re.search(r"pass damping >= (\S+) to", message).group(1))
    assert suggested > -lowest
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        damped = InfluenceFunctions(s.net, params="all", damping=suggested).fit(s.X, s.y)
    values = damped.explain(s.X[:5], s.y[:5]).values
    np.testing.assert_allclose(values, _influence(s.H, s.G, slice(5), suggested), rtol=1e-6)
    np.testing.assert_allclose(
        damped.self_influence(), np.diag(_influence(s.H, s.G, slice(None), suggested)), rtol=1e-6
    )


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_indefinite_hessian_cg_lissa_raise(network64, solver):
    s = network64
    inf = InfluenceFunctions(s.net, params="all", solver=solver, lissa_depth=300, random_state=0).fit(s.X, s.y)
    error = refused(lambda: inf.explain(s.X[:3], s.y[:3]), names=(rf"solver='{solver}', damping=0\b",))
    assert "raise damping" in str(error)
    if solver == "cg":  # with enough damping CG solves the same system as the exact inverse
        damping = 2 * -float(torch.linalg.eigvalsh(s.H).min())
        cg = InfluenceFunctions(s.net, params="all", solver="cg", damping=damping).fit(s.X, s.y)
        expected = _influence(s.H, s.G, slice(3), damping)
        np.testing.assert_allclose(cg.explain(s.X[:3], s.y[:3]).values, expected, rtol=1e-5, atol=1e-12)


def test_singular_head_hessian_loses_nothing(data):
    # a duplicated column: H is singular along (e_0 - e_dup), where no gradient has weight
    X2 = np.c_[data.X, data.X[:, 0]]
    dup = LogisticRegression(C=0.5).fit(X2, data.y2)
    merged = copy.deepcopy(dup)
    merged.coef_ = np.c_[dup.coef_[:, :1] + dup.coef_[:, -1:], dup.coef_[:, 1:-1]]
    merged.n_features_in_ = D
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        singular = InfluenceFunctions(dup, l2=0.0).fit(X2, data.y2)
    assert singular.dropped_ == 1
    regular = InfluenceFunctions(merged, l2=0.0).fit(data.X, data.y2)
    assert regular.dropped_ == 0
    got = singular.explain(X2[:8], data.y2[:8]).values
    np.testing.assert_allclose(got, regular.explain(data.X[:8], data.y2[:8]).values, rtol=1e-6, atol=1e-12)


def _big_logits(net):
    big = copy.deepcopy(net)
    with torch.no_grad():
        big[2].weight.mul_(1e4)
        big[2].bias.mul_(1e4)
    return big


@pytest.mark.parametrize("method", ["rps", "lje", "if", "if-all", "tracin", "tracin-all"])
def test_overflowing_logits_give_finite_values(models, method):
    net, X, y = models["torch"]
    big = _big_logits(net)
    explainer = {
        "rps": lambda: RepresenterPoints(big),
        "lje": lambda: RepresenterLJE(big),
        "if": lambda: InfluenceFunctions(big),
        "if-all": lambda: InfluenceFunctions(big, params="all", damping=1.0),
        "tracin": lambda: TracIn(big, [big.state_dict()]),
        "tracin-all": lambda: TracIn(big, [big.state_dict()], params="all"),
    }[method]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the saturated softmax makes the head Hessian singular
        explainer.fit(X, y)
        E = explainer.explain(X[:10], y[:10])
        assert np.isfinite(E.values).all() and np.isfinite(explainer.self_influence()).all()
    with torch.no_grad():
        logits = big(torch.as_tensor(X[:10]))
    assert logits.abs().max() > 1e3  # the premise: logits far beyond exp's float32 range
    if method.startswith(("rps", "lje")):  # the predicted class's logit, and its decomposition
        np.testing.assert_allclose(E.output, logits.max(1).values.numpy(), rtol=1e-5)
        assert np.isfinite(E.reconstruction).all() and np.isfinite(explainer.score(X))
    else:  # the loss at the label
        expected = F.cross_entropy(logits.double(), torch.as_tensor(y[:10]), reduction="none").numpy()
        np.testing.assert_allclose(E.output, expected, rtol=1e-4)


def test_score_is_finite_for_huge_outputs(fitted, models):
    _, X, _ = models["linear"]
    explainer = fitted["linear", "rps"]
    huge = 1e160 * X[:10]  # finite logits of about 1e160
    assert np.isfinite(explainer.explain(huge).values).all()
    score = explainer.score(huge)
    assert np.isfinite(score) and -1 <= score <= 1


def test_large_features_refit_in_float64(models):
    net, X, y = models["torch"]
    X = 1e4 * X  # float32 Hessian products' round-off (~1e-7 * 1e8) swamps the penalty's 2 lam = 6e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        rps = RepresenterPoints(net).fit(X, y)
    assert rps.grad_norm_ <= rps.tol
    assert np.isfinite(rps.explain(X[:5]).values).all()


def _rps_objective_gradient(net, X, head, lam):
    """Gradient of (1/n) sum_i CE(softmax targets_i, [phi_i, 1] @ head) + lam ||head||^2, float64, by autograd."""
    with torch.no_grad():  # the network's own float32 features and outputs, then float64
        x = torch.as_tensor(X)
        phi = net[:2](x).double()
        targets = torch.softmax(net(x).double(), 1)
    f = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype)], 1)
    theta = head.clone().requires_grad_(True)
    value = -(targets * torch.log_softmax(f @ theta, 1)).sum(1).mean() + lam * (theta**2).sum()
    (grad,) = torch.autograd.grad(value, theta)
    return grad


def test_unconverged_refit_warns_grad_norm(models):
    net, X, y = models["torch"]
    with pytest.warns(ConvergenceWarning, match=r"after 1 Newton steps") as record:
        rps = RepresenterPoints(net, max_iter=1).fit(X, y)
    stated = float(re.search(r"largest gradient entry is (\S+) after", str(record[0].message)).group(1))
    reached = float(_rps_objective_gradient(net, X, rps.head_, rps.lam).abs().max())
    assert reached > rps.tol  # the premise: one step does not converge
    assert stated == pytest.approx(reached, rel=1e-2)
    assert rps.grad_norm_ == pytest.approx(reached, rel=1e-6)
    assert np.isfinite(rps.explain(X[:5]).values).all()


_LOW_PRECISION_METHODS = {
    "rps": lambda m: RepresenterPoints(m),
    "lje": lambda m: RepresenterLJE(m),
    "if": lambda m: InfluenceFunctions(m),
    "if-all": lambda m: InfluenceFunctions(m, params="all", damping=1.0),
    "tracin": lambda m: TracIn(m, [m.state_dict()]),
    "tracin-all": lambda m: TracIn(m, [m.state_dict()], params="all"),
}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("method", list(_LOW_PRECISION_METHODS))
def test_low_precision_networks_run_in_float32(models, dtype, method):
    net, X, y = models["torch"]
    low = copy.deepcopy(net).to(dtype)
    full = copy.deepcopy(low).float()  # the same weights, computed in float32
    make = _LOW_PRECISION_METHODS[method]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        a, b = make(low).fit(X, y), make(full).fit(X, y)
    assert a.train_features_.dtype == torch.float32
    got, expected = a.explain(X[:10], y[:10]).values, b.explain(X[:10], y[:10]).values
    assert got.dtype in (np.float32, np.float64) and np.isfinite(got).all()
    # the network's own rounding (its inputs and activations in low precision) is all that differs
    tol = 8 * torch.finfo(dtype).eps
    assert np.abs(got - expected).max() <= tol * np.abs(expected).max()
    si, si_full = a.self_influence(), b.self_influence()
    assert np.abs(si - si_full).max() <= tol * np.abs(si_full).max()
    assert all(p.dtype == dtype for p in low.parameters())  # the user's network is left as it was


# ---- 3. persistence ----------------------------------------------------------------------------------
def _persisted(kind, models, data):
    """(fitted object, function of it giving arrays to compare)."""
    net, Xt, y3 = models["torch"]
    states = [net.state_dict(), {k: 0.9 * v for k, v in net.state_dict().items()}]

    def explanation(X, y=None):
        return lambda e: [e.explain(X, y).values, *e.explain(X, y, top_k=3).proponents(3), e.self_influence()]

    torch_models = {
        "rps": RepresenterPoints(net),
        "lje": RepresenterLJE(net),
        "lje-cg": RepresenterLJE(net, solver="cg"),
        "if-head": InfluenceFunctions(net),
        "if-all": InfluenceFunctions(net, params="all", damping=1.0),
        "if-all-cg": InfluenceFunctions(net, params="all", solver="cg", damping=1.0),
        "tracin": TracIn(net, states, [0.1, 0.05]),
        "tracin-all-projected": TracIn(net, states, 0.1, params="all", projection_dim=16, random_state=0),
    }
    if kind in torch_models:
        return torch_models[kind].fit(Xt, y3), explanation(Xt[:6], y3[:6])
    if kind == "rps-xgboost":
        return RepresenterPoints(models["xgboost"][0]).fit(data.X, data.y2), explanation(data.X[:6])
    if kind == "rps-linear":
        return RepresenterPoints(models["linear"][0]).fit(data.X, data.y2), explanation(data.X[:6])
    if kind == "label-cleaner":
        cleaner = LabelCleaner(estimator=LogisticRegression(), fraction=0.1).fit(data.X, data.y2)
        return cleaner, lambda c: [c.scores_, c.flagged_, c.y_resampled_, c.explainer_.explain(data.X[:6]).values]
    if kind == "selector":
        selector = RepresenterSelector(RepresenterPoints(net), n_points=9).fit(Xt, y3)
        return selector, lambda s: [s.scores_, s.sample_indices_, s.explainer_.explain(Xt[:6]).values]
    neurons = NeuronInfluence(net, Slice("1"), ClassQoI(0)).fit(Xt)
    return neurons, lambda n: [n.influences_, n.explain(Xt[:6]), n.visualize(0, Xt[:3])]


PERSISTED = [
    "rps",
    "lje",
    "lje-cg",
    "if-head",
    "if-all",
    "if-all-cg",
    "tracin",
    "tracin-all-projected",
    "rps-xgboost",
    "rps-linear",
    "label-cleaner",
    "selector",
    "neurons",
]


@pytest.mark.parametrize("kind", PERSISTED)
def test_pickle_and_joblib_round_trips(models, data, tmp_path, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fitted_object, arrays_of = _persisted(kind, models, data)
        before = arrays_of(fitted_object)
        joblib.dump(fitted_object, tmp_path / "fitted.joblib")
        copies = {
            "pickle": pickle.loads(pickle.dumps(fitted_object)),
            "joblib": joblib.load(tmp_path / "fitted.joblib"),
        }
        for how, loaded in copies.items():
            after = arrays_of(loaded)
            for a, b in zip(before, after, strict=True):
                assert np.array_equal(a, b), f"{kind} after {how}"


# ---- 4. determinism ------------------------------------------------------------------------------------
def _seeded(kind, seed, models, data):
    """Arrays computed with random_state=seed, from scratch."""
    net, Xt, y3 = models["torch"]
    lr = models["linear"][0]
    X, y = data.X, data.y2
    states = [net.state_dict()]
    if kind.startswith("tracin"):
        options = {
            "tracin-gaussian": dict(params="all", projection_dim=8),
            "tracin-fc-fast": dict(params="all", projection_dim=9, projection="fc-fast"),
            "tracin-hnsw": dict(index="hnsw"),
        }[kind]
        tracin = TracIn(net, states, 0.1, random_state=seed, **options).fit(Xt, y3)
        top = tracin.explain(Xt[:5], y3[:5], top_k=3).proponents(3)
        if kind == "tracin-hnsw":
            return [*top, tracin.self_influence()]
        return [tracin.explain(Xt[:5], y3[:5]).values, *top, tracin.self_influence()]
    if kind.startswith("if-"):
        solver = kind[3:]
        options = dict(lissa_depth=50, sketch_steps=30, sketch_dim=12, rank=4, stochastic_batch_size=16)
        inf = InfluenceFunctions(lr, solver=solver, damping=1e-2, random_state=seed, **options).fit(X, y)
        return [inf.explain(X[:5], y[:5]).values, inf.self_influence()]
    template = InfluenceFunctions(None, solver="sketch", damping=1e-2, sketch_steps=30, random_state=seed)
    if kind == "label-cleaner":
        cleaner = LabelCleaner(template, estimator=LogisticRegression(), fraction=0.2).fit(X, y)
        return [cleaner.scores_, cleaner.flagged_]
    if kind == "clean-labels-classifier":
        clf = CleanLabelsClassifier(LogisticRegression(), template, fraction=0.2).fit(X, y)
        return [clf.scores_, clf.flagged_, clf.predict_proba(X)]
    selector = RepresenterSelector(template, estimator=LogisticRegression(), strategy="self_influence").fit(X, y)
    return [selector.scores_, selector.sample_indices_]


# the seed changes the results of all but these: Lanczos from another start reaches the same eigenpairs,
# and HNSW's levels change which candidates are visited, not (on 60 points) the neighbours it finds
_SEED_INVARIANT = {"if-arnoldi", "tracin-hnsw"}


@pytest.mark.parametrize(
    "kind",
    [
        "tracin-gaussian",
        "tracin-fc-fast",
        "tracin-hnsw",
        "if-lissa",
        "if-sketch",
        "if-arnoldi",
        "label-cleaner",
        "clean-labels-classifier",
        "selector",
    ],
)
def test_same_random_state_is_bit_identical(models, data, kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the short LiSSA recursion has not settled
        first, second, other = (_seeded(kind, seed, models, data) for seed in (0, 0, 1))
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)
    if kind not in _SEED_INVARIANT:  # the seed is really used: the check above could fail
        assert not np.array_equal(first[0], other[0])


# ---- 5. loading --------------------------------------------------------------------------------------
def test_tracin_reads_checkpoints_weights_only(models, tmp_path, monkeypatch):
    net, X, y = models["torch"]
    states = [net.state_dict(), {k: 0.5 * v for k, v in net.state_dict().items()}]
    paths = []
    for j, state in enumerate(states):
        torch.save(state, tmp_path / f"ck{j}.pt")
        paths.append(tmp_path / f"ck{j}.pt")
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    from_files = TracIn(net, paths, [0.1, 0.2]).fit(X, y).explain(X[:4], y[:4]).values
    monkeypatch.undo()
    assert calls == [True, True]
    np.testing.assert_array_equal(from_files, TracIn(net, states, [0.1, 0.2]).fit(X, y).explain(X[:4], y[:4]).values)


def test_tracin_refuses_a_checkpoint_with_code(models, tmp_path):
    net, X, y = models["torch"]
    marker = tmp_path / "ran"
    state = dict(net.state_dict())
    state["0.weight"] = _Payload(marker)
    torch.save(state, tmp_path / "code.pt")
    error = refused(lambda: TracIn(net, [tmp_path / "code.pt"]).fit(X, y), names=(r"code\.pt",))
    assert "weights_only=True" in str(error) and "open" in str(error)
    assert not marker.exists()
    torch.load(tmp_path / "code.pt", weights_only=False)  # the premise: loading it any other way runs the code
    assert marker.exists()


def test_cli_runs_no_pickle_without_trust(cli_files, tmp_path):
    marker = tmp_path / "ran"
    joblib.dump(_Payload(marker), tmp_path / "code.joblib")
    argv = ["self-influence", "--model", str(tmp_path / "code.joblib"), "--train", str(cli_files / "train.csv")]
    argv += ["--target", "label", "--id-column", "id", "--out", str(tmp_path / "out.csv"), "--quiet"]
    code, err = _run_cli(argv)
    assert code == 2 and "--trust-model-file" in err and "Traceback" not in err
    assert not marker.exists()
    # with the flag the file is loaded, and its code runs: what the refusal protects against
    code, err = _run_cli([*argv, "--trust-model-file"])
    assert marker.exists() and code == 2  # a file handle is not a model
    trusted = [*argv[:2], str(cli_files / "model.joblib"), *argv[3:], "--trust-model-file"]
    assert _run_cli(trusted)[0] == 0 and (tmp_path / "out.csv").exists()
