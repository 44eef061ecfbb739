"""``skrep demo``: a small network on sklearn's digits, explained by its training points.

An MLP is trained on sklearn's digits with 10% of the training labels flipped; every explainer
(representer points, LJE, influence functions, TracIn over the checkpoints saved while
training) explains a few test digits and ranks the training set by self-influence, and the
results go to a self-contained HTML report. Everything runs offline on bundled data, in seconds
on a laptop CPU.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from .explanation import Explanation
from .plotting import mislabel_curve

__all__ = [
    "DemoResult",
    "DigitsData",
    "MethodResult",
    "load_digits_data",
    "make_mlp",
    "run_demo",
    "train_classifier",
    "train_mlp",
]


@dataclass
class DigitsData:
    """Standardized digits split; ``flipped`` marks training labels that were corrupted.

    ``images_train`` and ``images_test`` hold the same points as raw 8 x 8 pixel images.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    flipped: np.ndarray
    y_train_clean: np.ndarray
    images_train: np.ndarray | None = None
    images_test: np.ndarray | None = None


def load_digits_data(flip_fraction: float = 0.0, random_state: int = 0) -> DigitsData:
    """Sklearn digits, 1,437 train / 360 test, standardized; optionally flip some training labels.

    A flipped label is replaced by a different class drawn uniformly.

    Examples
    --------
    >>> data = load_digits_data(flip_fraction=0.1)
    >>> data.X_train.shape, int(data.flipped.sum()), bool((data.y_train != data.y_train_clean).all(where=data.flipped))
    ((1437, 64), 144, True)
    """
    digits = load_digits()
    X, y = digits.data, digits.target
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=360, random_state=random_state)
    scaler = StandardScaler().fit(X[idx_train])
    X_train = scaler.transform(X[idx_train]).astype(np.float32)
    X_test = scaler.transform(X[idx_test]).astype(np.float32)
    y_train, y_test = y[idx_train], y[idx_test]
    rng = np.random.default_rng(random_state)
    flipped = np.zeros(len(y_train), dtype=bool)
    noisy = y_train.copy()
    n_flip = int(round(flip_fraction * len(y_train)))
    if n_flip:
        idx = rng.choice(len(y_train), n_flip, replace=False)
        noisy[idx] = (y_train[idx] + rng.integers(1, 10, n_flip)) % 10
        flipped[idx] = True
    return DigitsData(
        X_train, noisy, X_test, y_test, flipped, y_train, digits.images[idx_train], digits.images[idx_test]
    )


def make_mlp(n_in: int = 64, hidden: int = 128, n_out: int = 10) -> nn.Module:
    """An MLP ``n_in - hidden - ReLU - n_out``; its final nn.Linear is the explained head."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def train_classifier(
    model: nn.Module,
    X,
    y,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    optimizer: str = "adam",
    checkpoints: list | None = None,
    checkpoint_every: int = 5,
    random_state: int = 0,
) -> nn.Module:
    """Train any classifier on cross-entropy with Adam or SGD.

    ``weight_decay`` is the optimizer's coupled L2, so the objective is
    ``mean CE + weight_decay / 2 ||params||^2`` (pass it to LJE as ``l2``). With a list as
    ``checkpoints``, a copy of the state dict is appended every ``checkpoint_every`` epochs
    (what TracIn needs).
    """
    torch.manual_seed(random_state)
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[optimizer]
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    Xt, yt = torch.as_tensor(X), torch.as_tensor(y, dtype=torch.long)
    gen = torch.Generator().manual_seed(random_state)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        for s in range(0, len(Xt), batch_size):
            b = perm[s : s + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(Xt[b]), yt[b]).backward()
            opt.step()
        if checkpoints is not None and (epoch + 1) % checkpoint_every == 0:
            checkpoints.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model.eval()


def train_mlp(
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 30,
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    hidden: int = 128,
    batch_size: int = 64,
    checkpoints: list | None = None,
    checkpoint_every: int = 5,
    random_state: int = 0,
) -> nn.Module:
    """Train :func:`make_mlp` with Adam (decoupled from skrep; any trained network would do).

    Examples
    --------
    >>> data = load_digits_data()
    >>> saved = []
    >>> model = train_mlp(data.X_train, data.y_train, epochs=2, checkpoints=saved, checkpoint_every=1)
    >>> len(saved), model(torch.as_tensor(data.X_test[:3])).shape
    (2, torch.Size([3, 10]))
    """
    torch.manual_seed(random_state)
    model = make_mlp(X.shape[1], hidden, int(y.max()) + 1)
    return train_classifier(
        model,
        np.asarray(X, dtype=np.float32),
        y,
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        checkpoints=checkpoints,
        checkpoint_every=checkpoint_every,
        random_state=random_state,
    )


@dataclass
class MethodResult:
    """One explainer's share of the demo.

    Attributes
    ----------
    name, explains : str
        The explainer's class name, and what its values explain.
    explanation : Explanation
        The top-k proponents and opponents of the shown test digits.
    self_influence : ndarray of shape (n_train,)
    found_at_10pct, auc : float
        Share of the flipped labels among the 10% most self-influential training points, and the
        ROC AUC of self-influence as a detector of flipped labels.
    seconds : dict
        Wall time of each step ('fit', 'explain', 'self-influence', 'reconstruction').
    fidelity : float or None
        ``score`` on the test set (Pearson with the model's logits), for methods that decompose them.
    reconstruction : (ndarray, ndarray) or None
        ``reconstruct`` of the test set: decomposed and model logits, each (n_test, 10).
    """

    name: str
    explains: str
    explanation: Explanation
    self_influence: np.ndarray
    found_at_10pct: float
    auc: float
    seconds: dict[str, float]
    fidelity: float | None = None
    reconstruction: tuple[np.ndarray, np.ndarray] | None = None


@dataclass
class DemoResult:
    """Everything :func:`run_demo` measured.

    Attributes
    ----------
    data : DigitsData
    predicted : ndarray of shape (n_test,)
        The model's predictions on the test set.
    shown : ndarray
        Indices of the explained test digits.
    accuracy, train_seconds : float
    epochs : int
    weight_decay : float
    methods : list of MethodResult
    report : Path or None
        The HTML report written.
    """

    data: DigitsData
    predicted: np.ndarray
    shown: np.ndarray
    accuracy: float
    epochs: int
    weight_decay: float
    train_seconds: float
    methods: list[MethodResult] = field(default_factory=list)
    report: Path | None = None


_WEIGHT_DECAY, _LR, _TOP_K = 1e-4, 1e-2, 4


def run_demo(
    out: str | Path = "skrep-demo",
    *,
    quick: bool = False,
    random_state: int = 0,
    verbose: int = 0,
    print_fn: Any = print,
) -> DemoResult:
    """Train a digits MLP on 10% flipped labels, run every explainer, write an HTML report.

    Parameters
    ----------
    out : str or Path, default='skrep-demo'
        Folder of the report (created if needed); the report is ``out/report.html``.
    quick : bool, default=False
        Train for 10 epochs instead of 30.
    random_state : int, default=0
        Seeds the split, the flipped labels and the training.
    verbose : int, default=0
        Progress bars of the explainers when > 0.
    print_fn : callable, default=print
        Receives one summary line per step.

    Returns
    -------
    DemoResult

    Examples
    --------
    >>> result = run_demo("skrep-demo", quick=True)  # doctest: +SKIP
    >>> result.report  # doctest: +SKIP
    PosixPath('skrep-demo/report.html')
    """
    from . import InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn
    from .report import write_demo_report

    if importlib.util.find_spec("matplotlib") is None:  # say so before training, not after
        raise ImportError('skrep demo draws its report with matplotlib: pip install "skrep[plot]"')
    data = load_digits_data(flip_fraction=0.1, random_state=random_state)
    epochs = 10 if quick else 30
    checkpoints: list = []
    t0 = time.perf_counter()
    model = train_mlp(
        data.X_train,
        data.y_train,
        epochs=epochs,
        lr=_LR,
        weight_decay=_WEIGHT_DECAY,
        checkpoints=checkpoints,
        random_state=random_state,
    )
    train_seconds = time.perf_counter() - t0
    with torch.no_grad():
        predicted = model(torch.as_tensor(data.X_test)).argmax(1).numpy()
    wrong = np.flatnonzero(predicted != data.y_test)
    # three test digits, and the first the model gets wrong: its opponents are worth seeing
    shown = np.unique(np.concatenate([np.arange(3), wrong[:1]]))
    result = DemoResult(
        data=data,
        predicted=predicted,
        shown=shown,
        accuracy=float((predicted == data.y_test).mean()),
        epochs=epochs,
        weight_decay=_WEIGHT_DECAY,
        train_seconds=train_seconds,
    )
    print_fn(
        f"Trained an MLP 64-128-10 ({epochs} epochs of Adam) on sklearn digits with {data.flipped.sum()} of "
        f"{len(data.y_train)} training labels flipped: test accuracy {result.accuracy:.3f} ({train_seconds:.1f} s)."
    )
    # the weight decay is the model's own L2 penalty: LJE and influence functions include it
    explainers = {
        "RepresenterPoints": (RepresenterPoints(model, verbose=verbose), "logit of the predicted class"),
        "RepresenterLJE": (
            RepresenterLJE(model, l2=_WEIGHT_DECAY, penalize_bias=True, verbose=verbose),
            "logit of the predicted class",
        ),
        "InfluenceFunctions": (
            InfluenceFunctions(model, l2=_WEIGHT_DECAY, penalize_bias=True, verbose=verbose),
            "loss at the predicted label",
        ),
        "TracIn": (
            TracIn(model, checkpoints, _LR, params="all", verbose=verbose),
            f"loss at the predicted label, all layers, {len(checkpoints)} checkpoints",
        ),
    }
    for name, (explainer, explains) in explainers.items():
        method = _run_method(name, explains, explainer, data, shown)
        result.methods.append(method)
        fidelity = "" if method.fidelity is None else f"fidelity to the model's logits {method.fidelity:.4f}; "
        print_fn(
            f"{name}: {fidelity}checking the top 10% by self-influence finds {method.found_at_10pct:.0%} of the "
            f"flipped labels (random: 10%); {sum(method.seconds.values()):.2f} s."
        )
    result.report = write_demo_report(result, Path(out) / "report.html")
    return result


def _run_method(name: str, explains: str, explainer: Any, data: DigitsData, shown: np.ndarray) -> MethodResult:
    seconds = {}
    t0 = time.perf_counter()
    explainer.fit(data.X_train, data.y_train)
    seconds["fit"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    E = explainer.explain(data.X_test[shown], top_k=_TOP_K)
    seconds["explain"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    si = explainer.self_influence()
    seconds["self-influence"] = time.perf_counter() - t0
    fidelity = reconstruction = None
    if E.reconstruction is not None:  # the method decomposes the logits: check that they add up
        t0 = time.perf_counter()
        reconstruction = explainer.reconstruct(data.X_test)
        fidelity = explainer.score(data.X_test)
        seconds["reconstruction"] = time.perf_counter() - t0
    _, found = mislabel_curve(si, data.flipped)
    return MethodResult(
        name=name,
        explains=explains,
        explanation=E,
        self_influence=si,
        found_at_10pct=float(found[round(0.1 * len(si))]),
        auc=float(roc_auc_score(data.flipped, si)),
        seconds=seconds,
        fidelity=fidelity,
        reconstruction=reconstruction,
    )
