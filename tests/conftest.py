import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SKELACT_SHARED_DATA",
                                  Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """Path to ../shared/data (real NW-UCLA and NTU samples); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads():
    import torch
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def synthetic_store(tmp_path_factory) -> Path:
    """A small built-in synthetic dataset, generated once per test session."""
    from skelact.data.synthetic import prepare_synthetic
    out = tmp_path_factory.mktemp("synthetic") / "store"
    prepare_synthetic(out=out, seed=0, num_samples=480)
    return out
