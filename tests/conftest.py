import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from skrep.demo import load_digits_data, train_mlp


@pytest.fixture(scope="session")
def digits():
    return load_digits_data(flip_fraction=0.0, random_state=0)


@pytest.fixture(scope="session")
def digits_mlp(digits):
    """64-128-10 MLP trained with Adam and weight decay 1e-4 on clean digits."""
    return train_mlp(digits.X_train, digits.y_train, weight_decay=1e-4, random_state=0)


@pytest.fixture(scope="session")
def digits_logreg(digits):
    return LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(digits.X_train, digits.y_train)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """For modules of many tiny fits: thread pools (BLAS, torch) cost more than they give there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)
