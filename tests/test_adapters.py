"""Adapters reproduce the model's own output from phi @ weight + bias."""

import numpy as np
import pytest
import torch
from models import LSTMClassifier, SmallResNet
from sklearn.datasets import make_classification, make_regression
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, SGDClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from skrep.adapters import LinearAdapter, TorchAdapter, make_adapter


def _trained_resnet():
    torch.manual_seed(0)
    net = SmallResNet()
    x = torch.randn(64, 1, 8, 8)
    net.train()
    net(x)  # move BatchNorm running statistics away from their defaults
    return net.eval(), torch.randn(37, 1, 8, 8)


def _lstm():
    torch.manual_seed(0)
    return LSTMClassifier(bidirectional=True).eval(), torch.randint(0, 20, (37, 12))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval(), torch.randn(37, 6)


@pytest.mark.parametrize("make", [_mlp, _trained_resnet, _lstm], ids=["mlp", "resnet", "lstm"])
@pytest.mark.parametrize("source", ["array", "tensor", "loader", "loader_xy", "loader_dict"])
def test_torch_adapter_reproduces_output(make, source):
    net, x = make()
    with torch.no_grad():
        expected = net(x)
    inputs = {
        "array": x.numpy(),
        "tensor": x,
        "loader": DataLoader(x, batch_size=10),
        "loader_xy": DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=10),
        "loader_dict": DataLoader([{"tokens" if make is _lstm else "x": xi} for xi in x], batch_size=10),
    }[source]
    if source == "loader_dict":
        name = "tokens" if make is _lstm else "x"
        inner = net
        net = _KwargModel(inner, name)
    adapter = TorchAdapter(net, batch_size=8)
    phi, logits = adapter.forward(inputs)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(phi @ adapter.weight + adapter.bias, expected, atol=1e-5, rtol=0)
    assert phi.shape == (len(x), adapter.weight.shape[0])


class _KwargModel(nn.Module):
    def __init__(self, inner, name):
        super().__init__()
        self.inner, self.name = inner, name

    def forward(self, **kw):
        return self.inner(kw[self.name])


def test_torch_adapter_finds_head_by_execution_not_registration_order():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(5, 3)  # registered first, runs last
            self.hidden = nn.Linear(4, 5)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x)))

    adapter = TorchAdapter(Net())
    adapter.forward(torch.randn(3, 4))
    assert adapter.head_name == "out"


def test_torch_adapter_restores_training_mode_and_keeps_weights():
    net, x = _trained_resnet()
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    TorchAdapter(net).forward(x)
    assert net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_loader_labels_are_returned():
    net, x = _mlp()
    y = torch.arange(len(x)) % 4
    _, _, labels = TorchAdapter(net).forward(DataLoader(TensorDataset(x, y), batch_size=5), return_labels=True)
    np.testing.assert_array_equal(labels, y.numpy())


def test_model_with_softmax_after_head_is_refused():
    net = nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match="after it"):
        TorchAdapter(net).forward(torch.randn(2, 4))


def test_model_without_linear_is_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        TorchAdapter(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten()))


def test_named_head_must_exist_and_be_linear():
    net, _ = _mlp()
    with pytest.raises(ValueError, match="not a submodule"):
        TorchAdapter(net, last_layer="fc")
    with pytest.raises(TypeError, match="not an nn.Linear"):
        TorchAdapter(net, last_layer="1")


def test_wrong_feature_count_gives_clear_error():
    net, _ = _mlp()
    with pytest.raises(ValueError, match="could not be applied"):
        TorchAdapter(net).forward(np.zeros((3, 5), dtype=np.float32))


def _binary():
    return make_classification(n_samples=120, n_features=6, random_state=0)


@pytest.mark.parametrize(
    "model,data,loss,k",
    [
        (LogisticRegression(), _binary, "logistic", 1),
        (
            LogisticRegression(max_iter=1000),
            lambda: make_classification(150, 6, n_informative=4, n_classes=3, random_state=0),
            "softmax",
            3,
        ),
        (SGDClassifier(loss="log_loss", random_state=0), _binary, "logistic", 1),
        (Ridge(alpha=2.0), lambda: make_regression(100, 5, random_state=0), "squared", 1),
        (LinearRegression(), lambda: make_regression(100, 5, n_targets=2, random_state=0), "squared", 2),
    ],
)
def test_linear_adapter_reproduces_decision_function(model, data, loss, k):
    X, y = data()
    model.fit(X, y)
    adapter = make_adapter(model)
    assert isinstance(adapter, LinearAdapter)
    assert adapter.loss.name == loss and adapter.weight.shape == (X.shape[1], k)
    phi, logits = adapter.forward(X)
    own = model.decision_function(X) if hasattr(model, "decision_function") else model.predict(X)
    np.testing.assert_allclose(logits.numpy(), np.reshape(own, (len(X), -1)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose((phi @ adapter.weight + adapter.bias).numpy(), logits.numpy(), atol=1e-10)


def test_linear_adapter_through_pipeline():
    X, y = _binary()
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    phi, logits = make_adapter(pipe).forward(X)
    np.testing.assert_allclose(phi.numpy(), pipe[0].transform(X))
    np.testing.assert_allclose(logits.numpy()[:, 0], pipe.decision_function(X), atol=1e-12)


def test_linear_l2_penalty_in_skrep_units():
    X, y = _binary()
    lr = LogisticRegression(C=0.5).fit(X, y)
    assert make_adapter(lr).penalty_l2(len(X)) == pytest.approx(1 / (0.5 * len(X)))
    assert make_adapter(Ridge(alpha=3.0).fit(X, y)).penalty_l2(len(X)) == pytest.approx(3.0 / len(X))


def test_unsupported_models_are_refused():
    X, y = _binary()
    with pytest.raises(TypeError, match="cannot explain a sklearn.svm"):
        make_adapter(LinearSVC().fit(X, y))
    with pytest.raises(ValueError, match="not twice differentiable"):
        make_adapter(SGDClassifier(loss="hinge").fit(X, y))
    X3, y3 = make_classification(150, 6, n_informative=4, n_classes=3, random_state=0)
    with pytest.raises(ValueError, match="one-vs-rest"):
        make_adapter(SGDClassifier(loss="log_loss").fit(X3, y3))
    with pytest.raises(NotFittedError, match="not fitted"):
        make_adapter(LogisticRegression())
