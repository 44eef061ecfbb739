"""RPS-LJE on an MLP trained on sklearn's digits (runs in seconds on a CPU).

The MLP is trained by Adam with weight decay 1e-4, which is an L2 penalty on every parameter:
LJE takes it as ``l2`` so that ``values.sum(1) + prior`` reconstructs the model's own logits.
"""

import argparse

import numpy as np

from skrep import RepresenterLJE, RepresenterPoints
from skrep.demo import load_digits_data, train_mlp


def main(quick: bool = False) -> None:
    data = load_digits_data()
    model = train_mlp(data.X_train, data.y_train, weight_decay=1e-4, epochs=10 if quick else 30)
    lje = RepresenterLJE(model, l2=1e-4, penalize_bias=True).fit(data.X_train, data.y_train)
    rps = RepresenterPoints(model).fit(data.X_train, data.y_train)
    E = lje.explain(data.X_test, top_k=5)
    print(
        f"fidelity (Pearson of all centered logits): LJE {lje.score(data.X_test):.4f}, "
        f"RPS-L2 {rps.score(data.X_test):.4f}"
    )
    err = np.abs(E.reconstruction - E.output).max() / np.abs(E.output).max()
    print(f"LJE: values.sum + prior vs the model's logit, max relative error {err:.3g}")
    print("top proponents and opponents of the first two test digits:")
    frame = E.to_frame(3, train_labels=data.y_train)
    print(frame[frame.test < 2].to_string(index=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
