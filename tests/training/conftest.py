"""The training tests' fixtures: the small slice of the real data (helpers.POOL), and one
reference trained on it once for the whole session."""

import pytest
from helpers import MODEL, POOL

from jestkit.data.prepare import prepare_caption_data
from jestkit.training.config import TrainingConfig
from jestkit.training.reference import train_reference


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
