import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets of ../shared/data (METAGRAD_TEST_DATA overrides). Missing data fails."""
    path = Path(os.environ.get("METAGRAD_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    assert (path / "omniglot").is_dir(), f"test data not found at {path}; set METAGRAD_TEST_DATA"
    return path
