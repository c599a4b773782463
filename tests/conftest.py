"""Shared test settings and data: one torch thread, the real Fashion-MNIST files, a small slice
of them as caption data (helpers.POOL), and one reference trained on it once for the session."""

import pytest
import torch
from helpers import MODEL, POOL

from jestkit.engine.config import TrainingConfig
from jestkit.fashion.fashion_mnist import load_fashion_mnist
from jestkit.fashion.prepare import prepare_caption_data
from jestkit.fashion.reference import train_reference


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


@pytest.fixture(scope="session")
def data():
    return prepare_caption_data(POOL)


@pytest.fixture(scope="session")
def reference_dir(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    train_reference(
        data,
        MODEL,
        TrainingConfig(steps=80, batch_size=64, eval_every=None),
        "sigmoid",
        out,
        progress=False,
    )
    return out
