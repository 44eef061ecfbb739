"""``skrep demo``: a small network on sklearn's digits, explained by its training points.

Everything runs offline on bundled data in well under a minute on a laptop CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

__all__ = ["DigitsData", "load_digits_data", "make_mlp", "train_classifier", "train_mlp", "run_demo"]


@dataclass
class DigitsData:
    """Standardized digits split; ``flipped`` marks training labels that were corrupted."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    flipped: np.ndarray
    y_train_clean: np.ndarray


def load_digits_data(flip_fraction: float = 0.0, random_state: int = 0) -> DigitsData:
    """Sklearn digits, 1,437 train / 360 test, standardized; optionally flip some training labels."""
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=360, random_state=random_state)
    scaler = StandardScaler().fit(X_train)
    X_train = scaler.transform(X_train).astype(np.float32)
    X_test = scaler.transform(X_test).astype(np.float32)
    rng = np.random.default_rng(random_state)
    flipped = np.zeros(len(y_train), dtype=bool)
    noisy = y_train.copy()
    n_flip = int(round(flip_fraction * len(y_train)))
    if n_flip:
        idx = rng.choice(len(y_train), n_flip, replace=False)
        noisy[idx] = (y_train[idx] + rng.integers(1, 10, n_flip)) % 10
        flipped[idx] = True
    return DigitsData(X_train, noisy, X_test, y_test, flipped, y_train)


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
    random_state: int = 0,
) -> nn.Module:
    """Train :func:`make_mlp` with Adam (decoupled from skrep; any trained network would do)."""
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
        random_state=random_state,
    )


def run_demo(quick: bool = False, random_state: int = 0, print_fn=print) -> dict:
    """Train, explain five test digits with each method, look for flipped labels.

    Prints what it finds and returns the numbers.
    """
    from . import RepresenterLJE, RepresenterPoints

    t0 = time.perf_counter()
    data = load_digits_data(flip_fraction=0.1, random_state=random_state)
    wd = 1e-4
    model = train_mlp(
        data.X_train, data.y_train, epochs=10 if quick else 30, weight_decay=wd, random_state=random_state
    )
    acc = float((model(torch.as_tensor(data.X_test)).argmax(1).numpy() == data.y_test).mean())
    print_fn(
        f"Trained an MLP 64-128-10 (Adam, weight decay {wd}) on sklearn digits with {data.flipped.sum()} "
        f"of {len(data.y_train)} training labels flipped: test accuracy {acc:.3f} "
        f"({time.perf_counter() - t0:.1f} s)."
    )
    explainers = {
        "RepresenterPoints (RPS-L2, lam=3e-3)": RepresenterPoints(model),
        "RepresenterLJE (l2 = the weight decay)": RepresenterLJE(model, l2=wd, penalize_bias=True),
    }
    results: dict = {"accuracy": acc}
    for name, explainer in explainers.items():
        t0 = time.perf_counter()
        explainer.fit(data.X_train, data.y_train)
        E = explainer.explain(data.X_test[:5], top_k=3)
        fidelity = explainer.score(data.X_test)
        seconds = time.perf_counter() - t0
        si = explainer.self_influence()
        found = data.flipped[np.argsort(-si)[: len(si) // 10]].sum() / data.flipped.sum()
        auc = roc_auc_score(data.flipped, si)
        print_fn(
            f"\n{name}: fit + explain {seconds:.2f} s; fidelity to the model's logits (Pearson) "
            f"{fidelity:.4f}; self-influence finds {found:.0%} of the flipped labels in the top 10% "
            f"(random: 10%), AUC {auc:.3f}."
        )
        _print_points(E, data, print_fn)
        results[explainer._method] = {
            "fidelity": fidelity,
            "found_at_10pct": float(found),
            "auc": float(auc),
            "seconds": seconds,
        }
    return results


def _print_points(E, data: DigitsData, print_fn) -> None:
    pi, pv = E.proponents(3)
    oi, ov = E.opponents(3)
    for t in range(E.n_test):
        print_fn(
            f"  test #{t}: true {data.y_test[t]}, predicted {E.target[t]}; "
            f"values add up to {E.reconstruction[t]:.2f} (model logit {E.output[t]:.2f})"
        )
        for name, idx, val in (("proponents", pi[t], pv[t]), ("opponents ", oi[t], ov[t])):
            cells = ", ".join(
                f"#{i} label {data.y_train[i]}{'*' if data.flipped[i] else ''} ({v:+.3f})"
                for i, v in zip(idx, val, strict=True)
            )
            print_fn(f"    {name}: {cells}")
