import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def sd_pipe():
    from dipgo import zoo

    return zoo.load("mnist-sd")[0]


@pytest.fixture(scope="session")
def dit_pipe():
    from dipgo import zoo

    return zoo.load("mnist-dit")[0]

