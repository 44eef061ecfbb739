"""Explain an XGBoost classifier on sklearn's breast-cancer table, and find flipped labels.

The ensemble is seen exactly as a linear head on leaf indicators (XGBoostAdapter): LJE splits the
model's own margin over the training rows. For the rows whose labels were flipped on purpose,
two self-influences are compared: the influence function's, on the final leaves, and
BoostingTracIn's, which replays the boosting rounds (a mislabelled row keeps pulling the early
rounds toward its label before the trees memorize it).
"""

import argparse

import numpy as np
import xgboost
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

from skrep import BoostingTracIn, InfluenceFunctions, RepresenterLJE


def main(quick: bool = False) -> None:
    data = load_breast_cancer(as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.2, random_state=0)
    y_train = y_train.to_numpy()
    # trained to convergence (default learning rate 0.3): LJE's values add up to the margin as far
    # as the ensemble is a stationary point of its training loss
    n_trees = 60 if quick else 100
    model = xgboost.XGBClassifier(n_estimators=n_trees, max_depth=3).fit(X_train, y_train)

    lje = RepresenterLJE(model).fit(X_train, y_train)
    full = lje.explain(X_test)
    fidelity = np.corrcoef(full.reconstruction, full.output)[0, 1]
    print(f"LJE fidelity (Pearson of values.sum + prior with the model's margin): {fidelity:.4f}")
    frame = lje.explain(X_test[:3], top_k=3).to_frame(3, train_labels=y_train)
    rows = X_train.iloc[frame.train_index.to_numpy(), :4].reset_index(drop=True)
    print("top proponents and opponents of the first test row, with their first features:")
    table = frame.join(rows)
    print(table[table.test == 0].to_string(index=False))

    # flip 10% of the training labels, refit, and rank the rows by self-influence
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(y_train), len(y_train) // 10, replace=False)
    noisy = y_train.copy()
    noisy[flipped] = 1 - noisy[flipped]
    noisy_model = xgboost.XGBClassifier(n_estimators=n_trees, max_depth=3).fit(X_train, noisy)
    print("flipped labels found by checking the top 10% by self-influence (random: 10%):")
    for name, explainer in [
        ("influence function, final leaves", InfluenceFunctions(noisy_model, damping=1e-3)),
        ("BoostingTracIn, boosting rounds", BoostingTracIn(noisy_model)),
    ]:
        scores = explainer.fit(X_train, noisy).self_influence()
        found = np.isin(np.argsort(-scores)[: len(flipped)], flipped).mean()
        print(f"  {name}: {found:.0%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
