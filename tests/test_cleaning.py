"""LabelCleaner and CleanLabelsClassifier against the same steps written out by hand."""

import numpy as np
import pytest
import torch
import xgboost
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skrep.adapters
from skrep import InfluenceFunctions, RepresenterLJE, RepresenterPoints, TracIn
from skrep.cleaning import CleanLabelsClassifier, LabelCleaner
from skrep.demo import load_digits_data

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def noisy():
    """600 digits scaled to [0, 1], with 60 labels moved to another class."""
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16, y[:600].copy()
    rng = np.random.default_rng(0)
    flipped = rng.choice(600, 60, replace=False)
    y[flipped] = (y[flipped] + rng.integers(1, 10, 60)) % 10
    wrong = np.zeros(600, dtype=bool)
    wrong[flipped] = True
    return X, y, wrong


def _logreg():
    return LogisticRegression(max_iter=2000)


def _by_hand(X, y, explainer, fraction):
    """Fit, explain, take the top fraction by self-influence (no class is emptied on this data)."""
    model = _logreg().fit(X, y)
    scores = clone(explainer).set_params(model=model).fit(X, y).self_influence()
    top = np.argsort(-scores, kind="stable")[: int(round(fraction * len(y)))]
    flagged = np.zeros(len(y), dtype=bool)
    flagged[top] = True
    return model, scores, flagged


def test_label_cleaner_drops_the_top_self_influence(noisy):
    X, y, wrong = noisy
    explainer = InfluenceFunctions(None, damping=1e-3)
    cleaner = LabelCleaner(explainer, estimator=_logreg(), fraction=0.1)
    X_res, y_res = cleaner.fit_resample(X, y)
    _, scores, flagged = _by_hand(X, y, explainer, 0.1)
    np.testing.assert_allclose(cleaner.scores_, scores, rtol=1e-10)
    np.testing.assert_array_equal(cleaner.flagged_, flagged)
    np.testing.assert_array_equal(X_res, X[~flagged])
    np.testing.assert_array_equal(y_res, y[~flagged])
    assert cleaner.explainer_ is not explainer and explainer.model is None  # the template is untouched
    assert wrong[flagged].mean() > 0.7  # most flagged labels are wrong (a tenth are, at random)


def test_label_cleaner_relabels_with_the_models_prediction(noisy):
    X, y, _ = noisy
    cleaner = LabelCleaner(RepresenterLJE(None), estimator=_logreg(), fraction=0.05, action="relabel")
    X_res, y_res = cleaner.fit_resample(X, y)
    model, _, flagged = _by_hand(X, y, RepresenterLJE(None), 0.05)
    expected = y.copy()
    expected[flagged] = model.predict(X[flagged])
    np.testing.assert_array_equal(cleaner.flagged_, flagged)
    np.testing.assert_array_equal(y_res, expected)
    assert X_res.shape == X.shape


def test_label_cleaner_explains_a_given_model_without_copying_it(noisy):
    X, y, _ = noisy
    model = _logreg().fit(X, y)
    cleaner = LabelCleaner(InfluenceFunctions(model, damping=1e-3), fraction=0.1).fit(X, y)
    assert cleaner.explainer_.model is model
    _, _, flagged = _by_hand(X, y, InfluenceFunctions(None, damping=1e-3), 0.1)
    np.testing.assert_array_equal(cleaner.flagged_, flagged)


def test_label_cleaner_with_tracin_on_a_torch_model():
    d = load_digits_data(0.0)
    X, y = d.X_train[:200], d.y_train[:200]
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    checkpoints = [{k: v.clone() for k, v in net.state_dict().items()}]
    cleaner = LabelCleaner(TracIn(net, checkpoints, 0.1), fraction=0.1, action="relabel")
    _, y_res = cleaner.fit_resample(X, y)
    predicted = net(torch.as_tensor(X)).argmax(1).numpy()
    np.testing.assert_array_equal(y_res[cleaner.flagged_], predicted[cleaner.flagged_])
    np.testing.assert_array_equal(y_res[~cleaner.flagged_], y[~cleaner.flagged_])
    assert cleaner.explainer_.model is net


def test_every_class_keeps_a_point():
    X = np.arange(12.0)[:, None]
    y = np.array([0] * 9 + [1] * 3)

    def class_one_first(explainer, X, y):
        return y + np.arange(len(y)) / 100  # class 1 ranks first

    cleaner = LabelCleaner(InfluenceFunctions(None), estimator=_logreg(), fraction=0.5, scoring=class_one_first)
    _, y_res = cleaner.fit_resample(X, y)
    # 6 points go: 11 and 10 of class 1 (9, its last point, stays), then 8, 7, 6, 5 of class 0
    np.testing.assert_array_equal(np.flatnonzero(cleaner.flagged_), [5, 6, 7, 8, 10, 11])
    assert sorted(set(y_res)) == [0, 1]


def test_imblearn_pipeline_drops_the_flagged_rows(noisy):
    imblearn_pipeline = pytest.importorskip("imblearn.pipeline")
    X, y, _ = noisy
    pipe = imblearn_pipeline.Pipeline(
        [("clean", LabelCleaner(InfluenceFunctions(None, damping=1e-3), estimator=_logreg())), ("clf", _logreg())]
    ).fit(X, y)
    _, _, flagged = _by_hand(X, y, InfluenceFunctions(None, damping=1e-3), 0.1)
    reference = _logreg().fit(X[~flagged], y[~flagged])
    np.testing.assert_allclose(pipe[-1].coef_, reference.coef_, rtol=1e-6, atol=1e-8)
    # at predict time the cleaner is skipped
    np.testing.assert_array_equal(pipe.predict(X), reference.predict(X))


def test_clean_labels_classifier_is_fit_explain_clean_refit(noisy):
    X, y, _ = noisy
    for action in ("drop", "relabel"):
        clf = CleanLabelsClassifier(_logreg(), InfluenceFunctions(None, damping=1e-3), fraction=0.1, action=action)
        clf.fit(X, y)
        model, scores, flagged = _by_hand(X, y, InfluenceFunctions(None, damping=1e-3), 0.1)
        if action == "drop":
            reference = _logreg().fit(X[~flagged], y[~flagged])
        else:
            fixed = y.copy()
            fixed[flagged] = model.predict(X[flagged])
            reference = _logreg().fit(X, fixed)
        np.testing.assert_array_equal(clf.flagged_, flagged)
        np.testing.assert_allclose(clf.scores_, scores, rtol=1e-10)
        np.testing.assert_allclose(clf.predict_proba(X), reference.predict_proba(X), rtol=1e-6, atol=1e-9)
        assert clf.score(X, y) == reference.score(X, y)
        assert clf.explainer_.model is not clf.estimator and clf.explainer_.model.coef_.shape == (10, 64)
        np.testing.assert_array_equal(clf.classes_, np.arange(10))


def test_more_rounds_and_no_cleaning(noisy):
    X, y, _ = noisy
    clf = CleanLabelsClassifier(_logreg(), fraction=0.05, max_rounds=2).fit(X, y)
    assert clf.n_rounds_ == 2 and clf.flagged_.sum() == 60
    # round 2 flags the top 5% of what round 1 kept, as seen by a model refit on it
    _, _, first = _by_hand(X, y, InfluenceFunctions(None, damping=1e-3), 0.05)
    kept = np.flatnonzero(~first)
    _, _, second = _by_hand(X[kept], y[kept], InfluenceFunctions(None, damping=1e-3), 30 / len(kept))
    np.testing.assert_array_equal(np.flatnonzero(clf.flagged_), np.sort(np.r_[np.flatnonzero(first), kept[second]]))
    plain = CleanLabelsClassifier(_logreg(), fraction=0.0).fit(X, y)
    assert plain.explainer_ is None and not plain.flagged_.any()
    np.testing.assert_allclose(plain.decision_function(X), _logreg().fit(X, y).decision_function(X))


def test_clean_labels_classifier_in_pipeline_and_cross_validation(noisy):
    X, y, _ = noisy
    clf = CleanLabelsClassifier(_logreg(), RepresenterPoints(None, refit_on="labels"))
    assert clf.get_params()["explainer__lam"] == 3e-3
    pipe = make_pipeline(StandardScaler(), clf)
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and scores.min() > 0.6
    search = GridSearchCV(clf, {"explainer__lam": [1e-3, 1e-2]}, cv=2).fit(X, y)
    assert search.best_estimator_.explainer.lam == search.best_params_["explainer__lam"]
    assert search.best_estimator_.explainer_.lam == search.best_params_["explainer__lam"]


def test_grid_search_over_fraction_in_two_processes(noisy):
    X, y, _ = noisy
    X, y = X[:300], y[:300]
    clf = CleanLabelsClassifier(_logreg(), fraction=0.1)
    search = GridSearchCV(clf, {"fraction": [0.0, 0.1]}, cv=2, n_jobs=2, error_score="raise").fit(X, y)
    by_hand = [cross_val_score(clone(clf).set_params(fraction=f), X, y, cv=2).mean() for f in (0.0, 0.1)]
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], by_hand)
    assert search.best_params_["fraction"] == (0.0, 0.1)[int(np.argmax(by_hand))]


def test_mlp_estimator_is_explained_through_its_last_hidden_layer(noisy):
    X, y, _ = noisy
    mlp = MLPClassifier((32,), alpha=1e-2, max_iter=300, random_state=0)
    clf = CleanLabelsClassifier(mlp, RepresenterPoints(None), fraction=0.05)
    with pytest.warns(Warning):  # the MLP stops at max_iter
        clf.fit(X[:300], y[:300])
    assert isinstance(clf.explainer_.adapter_, skrep.adapters.SKLearnMLPAdapter)
    assert clf.explainer_.model.coefs_[0].shape == (64, 32)
    assert clf.flagged_.sum() == 15


def test_xgboost_estimator(noisy):
    X, y, wrong = noisy
    xgb = xgboost.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0)
    clf = CleanLabelsClassifier(xgb, RepresenterPoints(None, refit_on="labels"), fraction=0.1).fit(X, y)
    assert isinstance(clf.explainer_.adapter_, skrep.adapters.XGBoostAdapter)
    assert clf.flagged_.sum() == 60 and wrong[clf.flagged_].mean() > 0.3
    assert clf.predict_proba(X).shape == (600, 10)


def test_skorch_estimator(noisy):
    skorch = pytest.importorskip("skorch")
    X, y, _ = noisy
    net = skorch.NeuralNetClassifier(
        torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)),
        criterion=torch.nn.CrossEntropyLoss,
        max_epochs=5,
        lr=0.1,
        train_split=None,
        verbose=0,
    )
    clf = CleanLabelsClassifier(net, InfluenceFunctions(None, damping=1e-3), fraction=0.1)
    clf.fit(X.astype(np.float32), y)
    assert isinstance(clf.explainer_.adapter_, skrep.adapters.TorchAdapter)
    assert clf.flagged_.sum() == 60


def test_digits_with_20_percent_noise_gain_3_points():
    plain, cleaned = [], []
    for seed in range(5):
        d = load_digits_data(0.2, random_state=seed)
        plain.append(_logreg().fit(d.X_train, d.y_train).score(d.X_test, d.y_test))
        clf = CleanLabelsClassifier(_logreg(), InfluenceFunctions(None, damping=1e-3), fraction=0.2)
        cleaned.append(clf.fit(d.X_train, d.y_train).score(d.X_test, d.y_test))
    gain = np.mean(cleaned) - np.mean(plain)
    print(f"\n[CleanLabelsClassifier, digits 20% flipped] plain {np.mean(plain):.3f}, cleaned {np.mean(cleaned):.3f}")
    assert gain >= 0.03


def test_parameter_errors(noisy):
    X, y, _ = noisy
    model = _logreg().fit(X, y)
    with pytest.raises(ValueError, match="leave the explainer's model None"):
        CleanLabelsClassifier(_logreg(), RepresenterPoints(model)).fit(X, y)
    with pytest.raises(ValueError, match="no model to explain"):
        LabelCleaner(RepresenterPoints(None)).fit(X, y)
    with pytest.raises(TypeError, match="explainer must be a skrep explainer"):
        LabelCleaner(_logreg(), estimator=_logreg()).fit(X, y)
    with pytest.raises(ValueError, match="fraction == 1"):
        LabelCleaner(estimator=_logreg(), fraction=1.0).fit(X, y)
    with pytest.raises(ValueError, match="action must be one of"):
        LabelCleaner(estimator=_logreg(), action="fix").fit(X, y)
    with pytest.raises(ValueError, match="scoring must be 'self_influence' or a callable"):
        LabelCleaner(estimator=_logreg(), scoring="loss").fit(X, y)
    with pytest.raises(ValueError, match="one finite number per training point"):
        LabelCleaner(estimator=_logreg(), scoring=lambda e, X, y: np.zeros(3)).fit(X, y)
    with pytest.raises(ValueError, match="estimator is None"):
        CleanLabelsClassifier(None).fit(X, y)
