"""Loss derivatives in the logits against autograd in float64."""

import pytest
import torch

from skrep.losses import get_loss


@pytest.mark.parametrize("name,k", [("softmax", 4), ("logistic", 1), ("squared", 3)])
def test_grad_and_hvp_match_autograd(name, k):
    loss = get_loss(name)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, k, dtype=torch.float64, generator=g) * 3
    if name == "softmax":
        t = loss.targets(torch.randint(0, k, (7,), generator=g), k, torch.float64)
    elif name == "logistic":
        t = loss.targets(torch.rand(7, generator=g), k, torch.float64)
    else:
        t = torch.randn(7, k, dtype=torch.float64, generator=g)
    v = torch.randn(7, k, dtype=torch.float64, generator=g)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss.value(zz, t).sum(), zz, create_graph=True)
    (hv,) = torch.autograd.grad((grad * v).sum(), zz)
    torch.testing.assert_close(loss.grad(z, t), grad.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss.hvp(z, v), hv, rtol=1e-12, atol=1e-12)


def test_softmax_is_stable_for_huge_logits():
    loss = get_loss("softmax")
    z = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.float64)
    t = loss.targets(torch.tensor([1]), 3, torch.float64)
    assert torch.isfinite(loss.value(z, t)).all() and torch.isfinite(loss.grad(z, t)).all()


def test_logistic_selector_flips_class_zero():
    loss = get_loss("logistic")
    sel = loss.selector(torch.tensor([0, 1]), 1, torch.float64)
    assert sel.ravel().tolist() == [-1.0, 1.0]


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="hinge"):
        get_loss("hinge")
