"""RPS-LJE on a small ResNet trained on procedurally drawn shapes (no download; about a minute on a CPU).

Images are 16x16 grey pictures of a disc, a square, a cross or a ring at random positions and
sizes, with noise. The ResNet ends in global average pooling and an ``nn.Linear`` head, which
``TorchAdapter`` finds by itself.
"""

import argparse

import numpy as np
import torch
from torch import nn

from skrep import RepresenterLJE
from skrep.demo import train_classifier

SHAPES = ("disc", "square", "cross", "ring")


def draw_shapes(n: int, size: int = 16, random_state: int = 0):
    rng = np.random.default_rng(random_state)
    yy, xx = np.mgrid[:size, :size]
    X = np.empty((n, 1, size, size), dtype=np.float32)
    y = rng.integers(0, len(SHAPES), n)
    for i, label in enumerate(y):
        cx, cy = rng.uniform(5, size - 5, 2)
        r = rng.uniform(2.5, 4.5)
        dist = np.hypot(xx - cx, yy - cy)
        img = {
            0: dist <= r,
            1: (abs(xx - cx) <= r * 0.8) & (abs(yy - cy) <= r * 0.8),
            2: ((abs(xx - cx) <= 1) & (abs(yy - cy) <= r)) | ((abs(yy - cy) <= 1) & (abs(xx - cx) <= r)),
            3: (dist <= r) & (dist >= r - 1.5),
        }[int(label)]
        X[i, 0] = img + 0.3 * rng.normal(size=(size, size))
    return X, y


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def small_resnet(c: int = 16, n_classes: int = len(SHAPES)) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1),
        nn.ReLU(),
        Block(c),
        Block(c),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, n_classes),
    )


def settle_head(model: nn.Module, X, y, weight_decay: float) -> None:
    """Finish training the head full-batch (L-BFGS, backbone fixed) on the same objective.

    Minibatch Adam leaves the head far from a stationary point of its objective (here the
    largest gradient entry is about 0.6); LJE's expansion, like the representer theorem, is
    exact at a stationary point, so a converged model is explained far more faithfully.
    """
    head = model[-1]
    with torch.no_grad():
        feats = model[:-1](torch.as_tensor(X))
    target = torch.as_tensor(y)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(feats), target)
        loss = loss + 0.5 * weight_decay * sum((p**2).sum() for p in head.parameters())
        loss.backward()
        return loss

    opt.step(closure)


def main(quick: bool = False) -> None:
    X, y = draw_shapes(600 if quick else 2000)
    Xt, yt = draw_shapes(200, random_state=1)
    torch.manual_seed(0)
    model = train_classifier(small_resnet(), X, y, epochs=4 if quick else 40, lr=3e-3, weight_decay=1e-4)
    settle_head(model, X, y, weight_decay=1e-4)
    acc = (model(torch.as_tensor(Xt)).argmax(1).numpy() == yt).mean()
    lje = RepresenterLJE(model, l2=1e-4, penalize_bias=True).fit(X, y)
    E = lje.explain(Xt, top_k=5)
    print(f"ResNet test accuracy {acc:.3f}; LJE fidelity (Pearson of centered logits) {lje.score(Xt):.4f}")
    pro, val = E.proponents(3)
    for t in range(4):
        names = ", ".join(f"#{i} {SHAPES[y[i]]} ({v:+.3f})" for i, v in zip(pro[t], val[t], strict=True))
        print(f"test {t} ({SHAPES[yt[t]]}, predicted {SHAPES[E.target[t]]}): proponents {names}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
