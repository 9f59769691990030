import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (likelihood_checks)

import pytest
import torch


@pytest.fixture
def float64():
    """float64 default dtype and torch seed 0 for one test (exact likelihood checks); restored afterwards.
    Test files opt in with `pytestmark = pytest.mark.usefixtures("float64")`."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models only pay overhead for more (and stall when other jobs share the cores)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
