import numpy as np
import pandas as pd

from skrep import Explanation


def test_dense_proponents_opponents_and_frame():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(4, 30))
    e = Explanation(values=values, n_train=30, target=np.zeros(4, int), prior=np.full(4, 0.5))
    idx, val = e.proponents(5)
    np.testing.assert_array_equal(idx, np.argsort(-values, 1)[:, :5])
    np.testing.assert_array_equal(val, np.take_along_axis(values, idx, 1))
    idx, val = e.opponents(5)
    np.testing.assert_array_equal(idx, np.argsort(values, 1)[:, :5])
    np.testing.assert_allclose(e.reconstruction, values.sum(1) + 0.5)
    frame = e.to_frame(3, train_labels=np.arange(30) % 3)
    assert isinstance(frame, pd.DataFrame) and len(frame) == 4 * 2 * 3
    first = frame[(frame.test == 0) & (frame.kind == "proponent")]
    assert first["train_index"].tolist() == np.argsort(-values[0])[:3].tolist()
    assert (first["train_label"] == first["train_index"] % 3).all()
