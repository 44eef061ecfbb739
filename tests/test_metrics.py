"""skrep.metrics on tiny cases worked out by hand."""

import numpy as np
import pytest
from sklearn.dummy import DummyClassifier
from sklearn.neighbors import KNeighborsClassifier

from skrep.metrics import deletion_curve, label_fix_accuracy, mislabel_detection


def test_mislabel_detection_by_hand():
    # 10 points, wrong labels at 0, 3, 7; ranking by score: 3, 9, 0, 5, 7, 1, 2, 4, 6, 8
    scores = np.array([0.8, 0.4, 0.3, 0.95, 0.2, 0.6, 0.1, 0.5, 0.0, 0.9])
    wrong = np.zeros(10, dtype=bool)
    wrong[[0, 3, 7]] = True
    out = mislabel_detection(scores, wrong, checked=(0.1, 0.2, 0.3, 0.5, 1.0))
    # top 1: {3} -> 1/3; top 2: {3, 9} -> 1/3; top 3: + 0 -> 2/3; top 5: + 5, 7 -> 3/3
    assert out["recall"] == pytest.approx({0.1: 1 / 3, 0.2: 1 / 3, 0.3: 2 / 3, 0.5: 1.0, 1.0: 1.0})
    # AUC: of the 3 x 7 (wrong, right) pairs the wrong point scores higher in 7 (0.95 beats all),
    # 6 (0.8 beats all but 0.9) and 5 (0.5 beats 0.4, 0.3, 0.2, 0.1, 0.0)
    assert out["auc"] == pytest.approx(18 / 21)
    assert out["n_mislabeled"] == 3


def test_mislabel_detection_counts_ties_by_their_chance():
    # checking 2 of 4 points whose scores are all equal finds half of the one wrong label on average
    out = mislabel_detection([1.0, 1.0, 1.0, 1.0], [False, True, False, False], checked=(0.5,))
    assert out["recall"][0.5] == pytest.approx(0.5)
    assert out["auc"] == pytest.approx(0.5)
    # a tie straddling the cut: top-2 of [3, 2, 2, 0] takes the 3 and one of the two 2s
    out = mislabel_detection([3.0, 2.0, 2.0, 0.0], [True, True, False, True], checked=(0.5,))
    assert out["recall"][0.5] == pytest.approx((1 + 0.5) / 3)


def test_mislabel_detection_validates():
    with pytest.raises(ValueError, match="both wrong and right"):
        mislabel_detection([1.0, 2.0], [False, False])
    with pytest.raises(ValueError, match="boolean array"):
        mislabel_detection([1.0, 2.0], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        mislabel_detection([1.0, np.nan], [False, True])
    with pytest.raises(ValueError, match=r"checked must be fractions"):
        mislabel_detection([1.0, 2.0], [False, True], checked=(1.5,))


def test_label_fix_accuracy_by_hand():
    # 1-nearest neighbour on a line: training points 0..5; the labels at 1 and 4 are wrong
    X = np.arange(6.0)[:, None]
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_noisy = np.array([0, 1, 0, 1, 0, 1])
    X_test = np.array([[0.9], [1.1], [3.9], [4.1]])  # nearest training points 1, 1, 4, 4
    y_test = np.array([0, 0, 1, 1])
    scores = np.array([0.0, 0.5, 0.1, 0.2, 0.9, 0.3])  # order: 4, 1, 5, 3, 2, 0
    acc = label_fix_accuracy(
        KNeighborsClassifier(1), X, y_noisy, y_true, X_test, y_test, scores, checked=(0.0, 1 / 6, 1 / 3, 1.0)
    )
    # nothing fixed: test points near 1 and 4 take the wrong labels -> 0/4; fixing point 4 -> 2/4;
    # points 4 and 1 -> 4/4; all -> 4/4
    assert acc == {0.0: 0.0, 1 / 6: 0.5, 1 / 3: 1.0, 1.0: 1.0}


def test_label_fix_accuracy_validates():
    X = np.zeros((3, 1))
    with pytest.raises(ValueError, match="equal length"):
        label_fix_accuracy(DummyClassifier(), X, [0, 1, 0], [0, 1], X, [0, 1, 0], [1, 2, 3])
    with pytest.raises(ValueError, match="one per point"):
        label_fix_accuracy(DummyClassifier(), X, [0, 1, 0], [0, 1, 1], X, [0, 1, 0], [1, 2])


def test_deletion_curve_by_hand():
    # the majority class decides DummyClassifier's prediction: removing the top-scored 1s flips it
    X = np.zeros((7, 1))
    y = np.array([1, 1, 1, 1, 0, 0, 0])
    scores = np.array([4.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.0])  # order: 0, 1, 6, 2, 3, 4, 5
    curve = deletion_curve(DummyClassifier(), X, y, np.zeros((2, 1)), [1, 1], scores, n_removed=[0, 1, 2, 3])
    # remaining 1s vs 0s: 4:3 -> 1; 3:3 -> tie, the smaller label 0; 2:3 -> 0; 2:2 (point 6 gone) -> 0
    np.testing.assert_array_equal(curve["n_removed"], [0, 1, 2, 3])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 0.0, 0.0, 0.0])
    # log loss of the prior's probability of class 1: 4/7, 3/6, 2/5, 2/4
    loss = deletion_curve(DummyClassifier(), X, y, np.zeros((2, 1)), [1, 1], scores, [0, 1, 2, 3], metric="log_loss")
    np.testing.assert_allclose(loss["log_loss"], -np.log([4 / 7, 3 / 6, 2 / 5, 2 / 4]))
    custom = deletion_curve(DummyClassifier(), X, y, X[:1], [1], scores, [0, 2], metric=lambda m, X, y: len(m.classes_))
    np.testing.assert_array_equal(custom["score"], [2, 2])


def test_deletion_curve_validates():
    X, y = np.zeros((3, 1)), [0, 1, 0]
    with pytest.raises(ValueError, match="n_removed must be counts"):
        deletion_curve(DummyClassifier(), X, y, X, y, [1, 2, 3], n_removed=[3])
    with pytest.raises(ValueError, match="metric must be"):
        deletion_curve(DummyClassifier(), X, y, X, y, [1, 2, 3], n_removed=[0], metric="f1")
