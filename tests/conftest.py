import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers (likelihood_checks)

import numpy as np
import pytest
import torch

from pixelar.config import TrainConfig
from pixelar.threads import num_threads


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
    with num_threads(1):
        yield


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory) -> str:
    """Dataset name of an 8x8 grayscale npz file with train/test splits and 4 classes."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        y_train=np.arange(20) % 4,
        x_test=rng.integers(0, 256, (12, 8, 8), dtype=np.uint8),
        y_test=np.arange(12) % 4,
    )
    return f"npz:{path}"


@pytest.fixture
def cfg(npz_data) -> TrainConfig:
    """A tiny training run on npz_data: "train" carves max(1, 20 // 10) = 2 images off as val, so 18 images,
    2 full batches of 8 per epoch; 6 steps, a checkpoint every 3."""
    return TrainConfig(
        size="tiny",
        dataset=npz_data,
        batch_size=8,
        max_steps=6,
        checkpoint_every=3,
        log_every=1,
        eval_batch_size=16,
        sample_n=0,
        lr=5e-3,
    )
