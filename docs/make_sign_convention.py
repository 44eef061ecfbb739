"""Draw docs/sign_convention.png, the README's picture of skrep's sign convention.

The demo's MLP, trained on clean digits, explained by RepresenterLJE: the logit of a test
digit's predicted class is split into one value per training digit. Proponents (value > 0)
support the prediction, opponents (value < 0) oppose it.

Usage: python docs/make_sign_convention.py  (needs matplotlib; about ten seconds)
"""

from pathlib import Path

import numpy as np

from skrep import RepresenterLJE
from skrep.demo import load_digits_data, train_mlp

PICTURE = Path(__file__).with_name("sign_convention.png")


def main(path: Path = PICTURE) -> Path:
    """Train, explain, draw; returns the path of the picture."""
    data = load_digits_data()
    model = train_mlp(data.X_train, data.y_train, weight_decay=1e-4)
    lje = RepresenterLJE(model, l2=1e-4, penalize_bias=True).fit(data.X_train, data.y_train)
    E = lje.explain(data.X_test[:50], top_k=5)
    # a typical case: every proponent carries the predicted label, no opponent does
    pro_same = data.y_train[E.proponents(5)[0]] == E.target[:, None]
    opp_same = data.y_train[E.opponents(5)[0]] == E.target[:, None]
    t = int(np.flatnonzero(pro_same.all(1) & ~opp_same.any(1))[0])
    fig = E.plot(t, 5, images=data.images_train, labels=data.y_train, test_image=data.images_test[t])
    fig.suptitle(
        f"values[t, i] > 0: proponents, support the logit of the predicted class {E.target[t]}; "
        "values[t, i] < 0: opponents",
        fontsize=9,
    )
    fig.savefig(path, dpi=90)
    return path


if __name__ == "__main__":
    print(main())
