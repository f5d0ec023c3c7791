"""Test-wide settings."""

import pytest
import torch

# Small recurrent ops gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
# barriers make them orders of magnitude slower; one thread keeps the suite fast and repeatable.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one intra-op thread, whatever the test before it set."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
