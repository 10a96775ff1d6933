"""A module-scoped, autouse fixture for tests of small torch models: import it into a test module
(``from torch_threads import single_thread``) to run that module's tests on one intra-op thread."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
