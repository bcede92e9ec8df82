import os

# One thread per process (also for the CLI and torchrun subprocesses the tests start): these
# tests run many small operators, for which a second thread only adds waiting, and on a shared
# 2-core machine two threads stall each other (docs/performance.md).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets of ../shared/data (METAGRAD_TEST_DATA overrides). Missing data fails."""
    path = Path(os.environ.get("METAGRAD_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    assert (path / "omniglot").is_dir(), f"test data not found at {path}; set METAGRAD_TEST_DATA"
    return path
