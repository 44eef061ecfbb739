"""Small generated tabular tasks for the tree-ensemble tests."""

import numpy as np
from sklearn.datasets import make_classification, make_regression


def binary(n=300, seed=0):
    return make_classification(n, 8, n_informative=5, random_state=seed)


def three(n=300, seed=0):
    return make_classification(n, 8, n_informative=5, n_classes=3, random_state=seed)


def regression(n=300, seed=0):
    X, y = make_regression(n, 8, noise=5.0, random_state=seed)
    return X, y + 40.0  # a mean far from 0: the estimated base margin matters


def with_nan(X, seed=0):
    X = X.copy()
    X[np.random.default_rng(seed).random(X.shape) < 0.1] = np.nan
    return X
