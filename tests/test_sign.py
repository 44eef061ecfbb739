"""The sign convention, checked the same way for the methods that explain a test loss.

A copy of a test point in the training set, labelled as the model predicts it, supports the
prediction (positive value); labelled otherwise, it is the strongest opponent. (A confidently
predicted copy has a small loss gradient, so it is a proponent but not always the strongest
one: influence scales with gradient size.)
"""

import numpy as np
import pytest
import torch

from skrep import InfluenceFunctions, TracIn


@pytest.mark.parametrize("method", ["tracin", "influence"])
def test_duplicate_of_test_point_supports_or_opposes_by_its_label(digits, digits_mlp, method):
    x = digits.X_test[:10]
    pred = digits_mlp(torch.as_tensor(x)).argmax(1).numpy()
    n = len(digits.X_train)
    dup = n + np.arange(10)
    X = np.vstack([digits.X_train, x])
    if method == "tracin":
        explainer = TracIn(digits_mlp, [digits_mlp.state_dict()], 0.1, params="all")
    else:
        explainer = InfluenceFunctions(digits_mlp, l2=1e-4, penalize_bias=True, damping=1e-3)
    E = explainer.fit(X, np.concatenate([digits.y_train, pred])).explain(x, pred)
    assert np.all(E.values[np.arange(10), dup] > 0)
    E = explainer.fit(X, np.concatenate([digits.y_train, (pred + 1) % 10])).explain(x, pred, top_k=1)
    opp, val = E.opponents(1)
    np.testing.assert_array_equal(opp[:, 0], dup)
    assert np.all(val < 0)
