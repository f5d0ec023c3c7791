"""rimrl.jax: rimrl's recurrent cores (RIM, SRM, LSTM, GRU) in JAX, parity-tested against torch.

Needs the optional extra: ``pip install 'rimrl[jax]'`` (CPU wheels of jax and jaxlib). See
docs/jax.md.

>>> import torch; from rimrl.cores import RIM                           # doctest: +SKIP
>>> from rimrl.jax import from_torch
>>> core, params = from_torch(RIM(64, 96, num_units=6, k=4).eval())
>>> out, (h, c), active = jax.jit(core)(params, x)                     # x (T, B, 64)
"""

from __future__ import annotations

try:
    import jax  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("rimrl.jax needs JAX: pip install 'rimrl[jax]' (or pip install jax)") from error

from rimrl.jax.convert import from_torch, jax_core_for, load_into_torch, torch_names
from rimrl.jax.cores import GRU, LSTM, RIM, SRM, JaxCore, ModularSettings

__all__ = ["GRU", "LSTM", "RIM", "SRM", "JaxCore", "ModularSettings", "from_torch", "jax_core_for",
           "load_into_torch", "torch_names"]
