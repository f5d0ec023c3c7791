"""Test-wide settings."""

import torch

# Small recurrent ops gain nothing from intra-op threads, and on a shared 2-core machine OpenMP
# barriers make them orders of magnitude slower; one thread keeps the suite fast and repeatable.
torch.set_num_threads(1)
