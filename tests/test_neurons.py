"""Distributional influence of neurons (Leino et al. 2018) against independent computations."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from torch import nn

from skrep.neurons import (
    ClassDoI,
    ClassExpert,
    ClassQoI,
    ComparativeQoI,
    GaussianDoI,
    LinearPathDoI,
    NeuronInfluence,
    PointDoI,
    Slice,
    binary_logits,
    expert_precision_recall,
    plot_image_grid,
)
from tests.models import LSTMClassifier, SmallResNet


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _input_gradient(model, X, qoi):
    x = torch.as_tensor(X).requires_grad_(True)
    (g,) = torch.autograd.grad(qoi(model(x)).sum(), x)
    return g.numpy()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    net = SmallResNet(in_ch=1, c=4, n_classes=3).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so eval-mode BN is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))


# ---- the measure -------------------------------------------------------------------------------
def test_point_doi_at_the_input_is_the_plain_gradient(digits, digits_mlp):
    X = digits.X_test[:20]
    chi = NeuronInfluence(digits_mlp, Slice(None), ClassQoI(3), PointDoI()).fit(X).explain(X)
    np.testing.assert_allclose(chi, _input_gradient(digits_mlp, X, lambda out: out[:, 3]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("where", ["input", "affine slice"])
def test_linear_path_is_complete(digits, digits_mlp, where):
    """sum_j (z_j(x) - z_j(b)) chi_j = q(x) - q(b) where the path is straight in z (Integrated Gradients).

    Every test digit explains the logit of its own class, 64 midpoint steps from the darkest digit.
    """
    baseline = digits.X_train.min(0)
    slice_, h = (Slice(None), lambda x: x) if where == "input" else (Slice("0"), digits_mlp[0])
    gaps, changes = [], []
    for c in range(10):
        X = digits.X_test[digits.y_test == c]
        chi = NeuronInfluence(digits_mlp, slice_, ClassQoI(c), LinearPathDoI(baseline, steps=64)).fit(X).explain(X)
        with torch.no_grad():
            z, zb = h(torch.as_tensor(X)).numpy(), h(torch.as_tensor(baseline[None])).numpy()
            dq = (digits_mlp(torch.as_tensor(X))[:, c] - digits_mlp(torch.as_tensor(baseline[None]))[:, c]).numpy()
        gaps.append(((z - zb) * chi).sum(1) - dq)
        changes.append(dq)
    gap, change = np.abs(np.concatenate(gaps)), np.abs(np.concatenate(changes))
    assert gap.sum() / change.sum() < 0.01
    # the midpoint rule misses ReLU kinks by up to a step: a point with a small change can be off more
    assert np.mean(gap / change < 0.01) >= 0.99


def test_slice_invariance_across_an_identity_split(digits, digits_mlp):
    """j-equivalent slices (Axiom 4): a ReLU's output, an Identity after it, the same tensor in a re-nested model."""
    X = digits.X_test[:15]
    split = nn.Sequential(nn.Sequential(digits_mlp[0], digits_mlp[1]), nn.Identity(), nn.Sequential(digits_mlp[2]))
    doi = GaussianDoI(0.3, n_samples=4, random_state=0)
    results = [
        NeuronInfluence(model, Slice(name), ComparativeQoI(1, 7), doi).fit(X).explain(X)
        for model, name in [(digits_mlp, "1"), (split, "0"), (split, "1"), (split, "0.1")]
    ]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_comparative_qoi_is_the_difference_of_class_qois(digits, digits_mlp):
    X = digits.X_test[:15]
    doi = GaussianDoI(0.5, n_samples=6, random_state=3)

    def chi(qoi):
        return NeuronInfluence(digits_mlp, Slice("0"), qoi, doi).fit(X).explain(X)

    np.testing.assert_allclose(chi(ComparativeQoI(2, 5)), chi(ClassQoI(2)) - chi(ClassQoI(5)), rtol=1e-5, atol=1e-6)
    # any callable is a quantity of interest
    np.testing.assert_array_equal(chi(lambda out: out[:, 2]), chi(ClassQoI(2)))


def test_class_doi_averages_the_class_points(digits, digits_mlp):
    """chi over ClassDoI = mean over the class's points of the point gradients (distribution linearity)."""
    X, y = digits.X_train, digits.y_train
    prob = lambda out: out.softmax(1)[:, 4]  # noqa: E731 (a non-linear quantity, so the DoI matters)
    ni = NeuronInfluence(digits_mlp, Slice(None), prob, ClassDoI(X, y, 4)).fit()
    expected = _input_gradient(digits_mlp, X[y == 4], prob).mean(0)
    np.testing.assert_allclose(ni.influences_, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ni.explain(), ni.influences_)
    np.testing.assert_allclose(ni.activations_, X[y == 4].mean(0), rtol=1e-6, atol=1e-6)


def test_gaussian_doi_is_seeded_and_exact_where_the_gradient_is_constant(digits, digits_mlp):
    X = digits.X_test[:8]
    doi = GaussianDoI(0.4, n_samples=10, random_state=0)
    first = NeuronInfluence(digits_mlp, Slice(None), ClassQoI(0), doi).fit(X).explain(X)
    np.testing.assert_array_equal(NeuronInfluence(digits_mlp, Slice(None), ClassQoI(0), doi).fit(X).explain(X), first)
    other = NeuronInfluence(digits_mlp, Slice(None), ClassQoI(0), GaussianDoI(0.4, 10, random_state=1))
    assert not np.allclose(other.fit(X).explain(X), first)
    # after the ReLU the logits are linear: every noisy sample has the gradient W[c]
    chi = NeuronInfluence(digits_mlp, Slice("1"), ClassQoI(0), doi).fit(X).explain(X)
    np.testing.assert_allclose(chi, np.broadcast_to(digits_mlp[2].weight[0].detach().numpy(), chi.shape), rtol=1e-6)


def test_fit_averages_the_points_distributions(digits, digits_mlp):
    X = digits.X_test[:30]
    ni = NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(6), batch_size=7).fit(X)
    np.testing.assert_allclose(ni.influences_, ni.explain(X).mean(0), rtol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(ni.activations_, digits_mlp[0](torch.as_tensor(X)).numpy().mean(0), rtol=1e-5)


# ---- captum, where the definitions coincide ------------------------------------------------------
def test_captum_layer_gradient_and_internal_influence(digits, digits_mlp):
    captum_layer = pytest.importorskip("captum.attr")
    X = digits.X_test[:12]
    x = torch.as_tensor(X)
    # LayerGradientXActivation without the activation factor is the layer gradient: PointDoI
    lga = captum_layer.LayerGradientXActivation(digits_mlp, digits_mlp[0], multiply_by_inputs=False)
    ours = NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(5)).fit(X).explain(X)
    np.testing.assert_allclose(ours, lga.attribute(x, target=5).detach().numpy(), rtol=1e-5, atol=1e-6)
    # InternalInfluence integrates the layer gradient along the input path: LinearPathDoI, midpoint rule
    ii = captum_layer.InternalInfluence(digits_mlp, digits_mlp[1])
    theirs = ii.attribute(x, baselines=torch.zeros_like(x), target=5, n_steps=16, method="riemann_middle")
    ours = NeuronInfluence(digits_mlp, Slice("1"), ClassQoI(5), LinearPathDoI(0.0, steps=16)).fit(X).explain(X)
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_captum_on_convolution_channels(resnet, images):
    captum_layer = pytest.importorskip("captum.attr")
    # a channel's influence is the layer gradient summed over positions
    lga = captum_layer.LayerGradientXActivation(resnet, resnet.blocks[0], multiply_by_inputs=False)
    theirs = lga.attribute(images, target=2).detach().sum((2, 3)).numpy()
    ours = NeuronInfluence(resnet, Slice("blocks.0"), ClassQoI(2)).fit(images).explain(images)
    assert ours.shape == (len(images), 4)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    ii = captum_layer.InternalInfluence(resnet, resnet.stem[0])
    theirs = ii.attribute(images, baselines=0.0, target=1, n_steps=8, method="riemann_middle").detach().sum((2, 3))
    ours = NeuronInfluence(resnet, Slice("stem.0"), ClassQoI(1), LinearPathDoI(0.0, 8)).fit(images).explain(images)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-6)


# ---- convolutional and recurrent slices ------------------------------------------------------------
def test_conv_slice_neurons_compress_and_visualize(resnet, images):
    per_element = NeuronInfluence(resnet, Slice("blocks.0", neuron_axis=None), ClassQoI(0)).fit(images)
    per_channel = NeuronInfluence(resnet, Slice("blocks.0"), ClassQoI(0)).fit(images)
    assert per_element.n_neurons_ == 4 * 8 * 8
    np.testing.assert_allclose(
        per_element.explain(images).reshape(-1, 4, 64).sum(2), per_channel.explain(images), rtol=1e-5, atol=1e-6
    )
    # compress: the same network with the other channels zeroed by hand
    mask = np.array([True, False, True, False])
    with torch.no_grad():
        h = resnet.blocks[0](resnet.stem(images)) * torch.as_tensor(mask, dtype=torch.float32)[None, :, None, None]
        by_hand = binary_logits(resnet.fc(resnet.pool(resnet.blocks[1](h)).flatten(1)), 0)
        np.testing.assert_allclose(per_channel.compress(mask)(images), by_hand, rtol=1e-5, atol=1e-6)
    # visualize with PointDoI: gradient times input of the channel's summed activation
    x = images.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(resnet.blocks[0](resnet.stem(x))[:, 1].sum(), x)
    np.testing.assert_allclose(per_channel.visualize(1, images), (g * images).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_hidden_slices(bidirectional):
    torch.manual_seed(0)
    net = LSTMClassifier(bidirectional=bidirectional).eval()
    tokens = torch.randint(0, 20, (9, 7))
    # the head reads h_n of the last layer: its influence is the head's weight row, exactly
    chi = NeuronInfluence(net, Slice("lstm", select="h_n"), ClassQoI(1)).fit(tokens).explain(tokens)
    np.testing.assert_allclose(chi, np.broadcast_to(net.fc.weight[1].detach().numpy(), chi.shape), rtol=1e-6)
    # every step's output feeds nothing the classifier reads: no influence
    out = NeuronInfluence(net, Slice("lstm", select="output"), ClassQoI(1)).fit(tokens)
    assert out.n_neurons_ == net.fc.in_features and np.all(out.explain(tokens) == 0)
    # the embedding output, per dimension summed over time, against autograd
    emb = net.emb(tokens).detach().requires_grad_(True)
    _, (h, _) = net.lstm(emb)
    h = torch.cat([h[-2], h[-1]], 1) if bidirectional else h[-1]
    (g,) = torch.autograd.grad(net.fc(h)[:, 1].sum(), emb)
    chi = NeuronInfluence(net, Slice("emb"), ClassQoI(1)).fit(tokens).explain(tokens)
    np.testing.assert_allclose(chi, g.sum(1).numpy(), rtol=1e-5, atol=1e-6)
    # the same tensor seen as the LSTM's input is a j-equivalent slice
    at_input = NeuronInfluence(net, Slice("lstm", at="input"), ClassQoI(1)).fit(tokens).explain(tokens)
    np.testing.assert_array_equal(at_input, chi)


# ---- experts (Leino et al. 2018, 3.3.1) ------------------------------------------------------------
def test_influence_experts_beat_activation_experts(digits, digits_mlp):
    """Class experts keeping at most half of the hidden units, swept over (alpha, beta) as in the paper.

    The slice is the hidden layer's pre-activation: after the ReLU the logits are linear, so there the
    influence is the head's weight row whatever the distribution. Activation experts keep the units
    with the largest mean |activation| over the class, in the same numbers.
    """
    grid = [(a, b) for a in (8, 16, 32) for b in (0, 8, 16, 32)]
    passes = {"influence": 0, "activation": 0}
    for c in range(10):
        ni = NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(c), ClassDoI(digits.X_train, digits.y_train, c)).fit()
        by_activation = np.argsort(-np.abs(ni.activations_), kind="stable")
        masks = {
            "influence": [ni.experts(a, b) for a, b in grid],
            "activation": [np.isin(np.arange(128), by_activation[:k]) for k in sorted({a + b for a, b in grid})],
        }
        for kind, candidates in masks.items():
            for mask in candidates:
                r = expert_precision_recall(ni.compress(mask), digits.X_test, digits.y_test, batch_size=512)
                if r["recall"] >= r["recall_original"] and r["precision"] >= r["precision_original"] - 0.05:
                    passes[kind] += 1
                    break
    assert passes["influence"] >= 7, passes
    assert passes["activation"] < passes["influence"], passes


def test_experts_mask_and_metric(digits, digits_mlp):
    ni = NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(2), ClassDoI(digits.X_train, digits.y_train, 2)).fit()
    mask = ni.experts(alpha=5, beta=3)
    order = np.argsort(ni.influences_)
    np.testing.assert_array_equal(np.flatnonzero(mask), np.sort(np.r_[order[-5:], order[:3]]))
    expert = ni.compress(mask)
    assert isinstance(expert, ClassExpert) and expert.target == 2
    # the full mask is the original model's binary classifier p_2 > 1/2
    full = expert_precision_recall(ni.compress(np.ones(128, bool)), digits.X_test, digits.y_test)
    p = digits_mlp(torch.as_tensor(digits.X_test)).softmax(1)[:, 2].detach().numpy()
    truth, pred = digits.y_test == 2, p > 0.5
    assert full["recall"] == full["recall_original"] == (pred & truth).sum() / truth.sum()
    assert full["precision"] == full["precision_original"] == (pred & truth).sum() / pred.sum()


# ---- visualization --------------------------------------------------------------------------------
def test_visualize_with_a_path_is_complete_for_the_neuron(digits, digits_mlp):
    X = digits.X_test[:5]
    ni = NeuronInfluence(digits_mlp, Slice("1"), ClassQoI(0), LinearPathDoI(0.0, steps=64)).fit(X)
    j = int(np.argmax(np.abs(ni.influences_)))
    maps = ni.visualize(j, X)
    assert maps.shape == X.shape
    with torch.no_grad():
        z, zb = digits_mlp[0](torch.as_tensor(X))[:, j].numpy(), float(digits_mlp[0](torch.zeros(1, 64))[0, j])
    # the ReLU's kink costs the midpoint rule at most one step of the pre-activation's change
    bound = np.abs(z - zb) / 64 + 1e-5
    assert np.all(np.abs(maps.sum(1) - (np.maximum(z, 0) - max(zb, 0))) <= bound)


def test_plot_image_grid_writes_a_png(tmp_path, digits):
    path = tmp_path / "grid.png"
    fig = plot_image_grid(
        [[digits.X_test[0], digits.X_test[1] - digits.X_test[0]], [None, digits.X_test[2]]],
        titles=[["a", "b"], [None, "c"]],
        signed=[[False, True], [False, True]],
        image_shape=(8, 8),
        path=path,
    )
    assert path.stat().st_size > 0 and len(fig.axes) == 4
    with pytest.raises(ValueError, match="image_shape"):
        plot_image_grid([[digits.X_test[0]]])


# ---- estimator API and errors ----------------------------------------------------------------------
def test_clone_keeps_the_model_and_params(digits_mlp):
    ni = NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(1), GaussianDoI(0.1, 5, random_state=0), batch_size=32)
    twin = clone(ni)
    assert twin.model is digits_mlp and twin.batch_size == 32 and repr(twin.slice) == "Slice('0')"
    assert "sigma=0.1" in repr(twin.doi)


def test_bad_inputs_give_clear_errors(digits, digits_mlp):
    X, y = digits.X_test[:10], digits.y_test[:10]
    with pytest.raises(ValueError, match="no module of that name"):
        NeuronInfluence(digits_mlp, Slice("fc9"), ClassQoI(0)).fit(X)
    with pytest.raises(TypeError, match="module_name"):
        Slice(3)
    with pytest.raises(ValueError, match="model's input already"):
        Slice(None, at="input")
    with pytest.raises(ValueError, match="neuron_axis"):
        NeuronInfluence(digits_mlp, Slice("0", neuron_axis=3), ClassQoI(0)).fit(X)
    with pytest.raises(TypeError, match="qoi must be"):
        NeuronInfluence(digits_mlp, Slice("0"), 3).fit(X)
    with pytest.raises(TypeError, match="doi must be"):
        NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(0), doi="gauss").fit(X)
    with pytest.raises(TypeError, match="Slice"):
        NeuronInfluence(digits_mlp, "0", ClassQoI(0)).fit(X)
    with pytest.raises(TypeError, match="nn.Module"):
        NeuronInfluence("model", Slice("0"), ClassQoI(0)).fit(X)
    with pytest.raises(ValueError, match="class index"):
        ClassQoI(-1)
    with pytest.raises(ValueError, match="two different classes"):
        ComparativeQoI(2, 2)
    with pytest.raises(ValueError, match="output column 12"):
        NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(12)).fit(X)
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        NeuronInfluence(digits_mlp, Slice("0"), lambda out: out).fit(X)
    with pytest.raises(ValueError, match="sigma"):
        GaussianDoI(0.0)
    with pytest.raises(ValueError, match="steps"):
        LinearPathDoI(0.0, steps=0)
    with pytest.raises(ValueError, match="baseline"):
        NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(0), LinearPathDoI(np.zeros(3))).fit(X)
    with pytest.raises(ValueError, match="one label per point"):
        ClassDoI(X, y[:5], 1)
    with pytest.raises(ValueError, match="no point of class 11"):
        ClassDoI(X, y, 11)
    ni = NeuronInfluence(digits_mlp, Slice("0"), ClassQoI(0), ClassDoI(X, y, int(y[0])))
    with pytest.raises(NotFittedError):
        ni.explain()
    with pytest.raises(ValueError, match="carries its own points"):
        ni.fit(X)
    ni.fit()
    with pytest.raises(ValueError, match="without X"):
        ni.explain(X)
    with pytest.raises(ValueError, match="alpha"):
        ni.experts(0, 0)
    with pytest.raises(ValueError, match="boolean array"):
        ni.compress(np.ones(5, bool))
    with pytest.raises(ValueError, match="neuron"):
        ni.visualize(128, X)
    point = NeuronInfluence(digits_mlp, Slice("0"), lambda out: out[:, 0]).fit(X)
    with pytest.raises(ValueError, match="target="):
        point.compress(np.ones(128, bool))
    with pytest.raises(ValueError, match="needs X"):
        point.explain()
    with pytest.raises(ValueError, match="layout"):
        point.explain(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="mask"):
        ClassExpert(digits_mlp, Slice("0"), [1, 0], 1)
    with pytest.raises(TypeError, match="ClassExpert"):
        expert_precision_recall(digits_mlp, X, y)
    conv1d = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    signals = torch.randn(4, 2, 6)
    with pytest.raises(ValueError, match="neuron_axis=1 for channels"):
        NeuronInfluence(conv1d, Slice("1"), ClassQoI(0)).fit(signals)
    assert NeuronInfluence(conv1d, Slice("1", neuron_axis=1), ClassQoI(0)).fit(signals).n_neurons_ == 3
    assert NeuronInfluence(conv1d, Slice("0"), ClassQoI(0)).fit(signals).n_neurons_ == 3
    net = LSTMClassifier().eval()
    tokens = torch.randint(0, 20, (4, 5))
    with pytest.raises(ValueError, match="select="):
        NeuronInfluence(net, Slice("lstm"), ClassQoI(0)).fit(tokens)
    with pytest.raises(ValueError, match="c_n"):
        Slice("", select="c_n").bind(nn.GRU(3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        NeuronInfluence(net, Slice("emb"), ClassQoI(0), GaussianDoI(0.1, 3)).fit(tokens)
    with pytest.raises(TypeError, match="integers"):
        NeuronInfluence(net, Slice(None), ClassQoI(0)).fit(tokens)
