import os

import pytest
import torch

from prunegreedy.config import DataConfig
from prunegreedy.data.registry import load_dataset

# Tests use only the bundled sample and small tensors: one thread keeps them quick and repeatable.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    os.environ["PRUNEGREEDY_CACHE"] = str(path)  # CLI runs in tests never touch ~/.cache
    return path


@pytest.fixture(scope="session")
def sample(cache_dir):
    return load_dataset(DataConfig(name="cifar10-sample", cache_dir=str(cache_dir)))
