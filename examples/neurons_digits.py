"""Neurons and training points behind digit predictions (runs in seconds on a CPU).

An MLP trained on sklearn's digits is explained two ways and drawn in one PNG grid:

- by its hidden units: distributional influence (Leino et al. 2018) of each unit on the predicted
  class's logit along the path from a blank (all-mean) digit, and each top unit's Integrated
  Gradients on the input;
- by its training points: the representer decomposition (Yeh et al. 2018) splits the gradient of the
  predicted logit into one SmoothGrad sensitivity map per training point (section 4.4), shown for the
  top 4 proponents.

It also extracts a class expert: the network keeping 48 of its 128 hidden units, chosen by their
class-conditional influence.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

from skrep import RepresenterPoints
from skrep.demo import load_digits_data, train_mlp
from skrep.neurons import (
    ClassDoI,
    ClassQoI,
    GaussianDoI,
    LinearPathDoI,
    NeuronInfluence,
    Slice,
    expert_precision_recall,
    plot_image_grid,
)


def main(quick: bool = False, out: str | None = None) -> Path:
    data = load_digits_data()
    model = train_mlp(data.X_train, data.y_train, weight_decay=1e-4, epochs=10 if quick else 30)
    rps = RepresenterPoints(model).fit(data.X_train, data.y_train)
    print(f"fidelity of the representer decomposition (Pearson of centered logits): {rps.score(data.X_test):.4f}")

    tests = np.arange(3 if quick else 5)
    X = data.X_test[tests]
    E = rps.explain(X, top_k=4)
    top, values = E.proponents(4)
    # SmoothGrad noise of 15% of the inputs' range, as the paper's maps
    smooth = GaussianDoI(0.15 * float(np.ptp(data.X_train)), n_samples=8 if quick else 32, random_state=0)
    maps = rps.sensitivity_maps(X, top, smoothgrad=smooth)
    everything = np.arange(rps.n_train_)

    rows, titles, signed = [], [], []
    for r, t in enumerate(tests):
        c = int(E.target[r])
        # standardized digits: 0 is the mean digit, the path's blank starting point
        units = NeuronInfluence(model, Slice("1"), ClassQoI(c), LinearPathDoI(0.0, steps=32)).fit(X[r : r + 1])
        chi = units.explain(X[r : r + 1])[0]
        best = np.argsort(-chi)[:4]
        print(
            f"test digit {t} (label {data.y_test[t]}, predicted {c}): most influential hidden units "
            + ", ".join(f"{j} ({chi[j]:+.3f})" for j in best)
        )
        print(
            "  top proponents (training index, label, value): "
            + ", ".join(f"{i} ({data.y_train[i]}, {v:+.3f})" for i, v in zip(top[r], values[r], strict=True))
        )
        total = rps.sensitivity_maps(X[r], everything, smoothgrad=smooth).sum(0)
        rows += [
            [data.images_test[t], *data.images_train[top[r]]],
            [total, *maps[r]],
            [None, *(units.visualize(j, X[r : r + 1])[0] for j in best)],
        ]
        titles += [
            [
                f"test {t}: pred {c}",
                *(f"#{i} y={data.y_train[i]} {v:+.2f}" for i, v in zip(top[r], values[r], strict=True)),
            ],
            ["sum of all maps", *(f"map of #{i}" for i in top[r])],
            [None, *(f"unit {j} IG" for j in best)],
        ]
        signed += [[False] * 5, [True] * 5, [True] * 5]

    path = Path(out) if out else Path(tempfile.mkdtemp(prefix="skrep-")) / "neurons_digits.png"
    plot_image_grid(rows, titles=titles, signed=signed, image_shape=(8, 8), path=path)
    print(f"saved the grid (digits, proponents; SmoothGrad maps per proponent; top units' IG) to {path}")

    c = int(E.target[0])
    essence = NeuronInfluence(model, Slice("0"), ClassQoI(c), ClassDoI(data.X_train, data.y_train, c)).fit()
    r = expert_precision_recall(essence.compress(essence.experts(alpha=16, beta=32)), data.X_test, data.y_test)
    print(
        f"class-{c} expert (48 of 128 hidden units, by class-conditional influence): precision "
        f"{r['precision']:.3f}, recall {r['recall']:.3f}; whole model {r['precision_original']:.3f}, "
        f"{r['recall_original']:.3f}"
    )
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer epochs, digits and noise samples")
    parser.add_argument("--out", help="where to save the PNG grid (default: a new temporary directory)")
    args = parser.parse_args()
    main(args.quick, args.out)
