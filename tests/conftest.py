"""Shared test settings and data."""

import pytest
import torch

from jestkit.data.fashion_mnist import load_fashion_mnist


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One torch thread for the whole suite: its tensors are small, and on a 2-core machine
    shared with spawned processes (the distributed tests) a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fashion_train():
    """The real Fashion-MNIST training split (`make test` installs it; missing files fail)."""
    return load_fashion_mnist("train")
