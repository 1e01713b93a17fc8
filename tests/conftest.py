import os

import pytest
import torch

# Two threads on the 2-core machines CI runs on; OMP_NUM_THREADS, when set, wins (one thread per process when
# several test processes share the cores).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def sd_pipe():
    from dipgo import zoo

    return zoo.load("mnist-sd")[0]


@pytest.fixture(scope="session")
def dit_pipe():
    from dipgo import zoo

    return zoo.load("mnist-dit")[0]

