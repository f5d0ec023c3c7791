"""Recurrent cores with one contract: ``out, (h, c) = core(x, state=None, episode_starts=None)``.

The built-in cores are ``"lstm"``, ``"gru"``, ``"rim"`` and ``"srm"``; :func:`register_core` adds
your own (see :mod:`rimrl.cores.registry`). Pure torch: nothing here imports stable-baselines3.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from rimrl.cores.base import RecurrentCore, State
from rimrl.cores.grouped import GroupedGRUCell, GroupedLinear, GroupedLSTMCell, make_grouped_cell
from rimrl.cores.recurrent import GRU, LSTM
from rimrl.cores.registry import (
    BUILTIN_CORES,
    CoreSpec,
    UnknownCoreError,
    core_names,
    core_spec,
    is_registered,
    register_core,
    unregister_core,
)
from rimrl.cores.registry import _register_builtin as _builtin
from rimrl.cores.rim import RIM
from rimrl.cores.srm import SRM
from rimrl.cores.stack import StackedCore

#: Core factories by name: the built-in classes plus every :func:`register_core` (kept in step
#: with the registry; read :func:`core_spec` for the rest of a core's registration).
CORES: dict[str, Callable[..., nn.Module]] = {}

# Built-in cores and what the policy needs to know about them (docs/policies.md):
# - RIM reads one vector by default: the paper and every released RIM RL code feed the core one
#   embedding per step; fed 51 MiniGrid cell tokens its attention starts uniform and the agent
#   stayed at chance ("What RIM reads"). SRM's kernel localises attention over positioned
#   tokens: it needs the set.
# - Width 192 = 6 units x 32 for the modular cores (the RIM paper's 6 units); the flat cores use
#   128, which keeps them cheap.
# - Dropout is off for RL: PPO collects rollouts in eval mode and trains in train mode, so
#   attention dropout would make the trained policy differ from the one that produced the data
#   and bias the importance ratio.
_builtin(CoreSpec("lstm", LSTM, ("vector",), 128, {}, "lstm", builtin=True))
_builtin(CoreSpec("gru", GRU, ("vector",), 128, {}, "gru", builtin=True))
_builtin(CoreSpec("rim", RIM, ("vector", "tokens"), 192, {"input_dropout": 0.0, "comm_dropout": 0.0}, "rim",
                  builtin=True))
_builtin(CoreSpec("srm", SRM, ("tokens",), 192, {}, "srm", builtin=True))


def make_core(name: str, input_size: int, hidden_size: int, **kwargs: Any) -> nn.Module:
    """Build a core by name (a built-in ``"lstm"``, ``"gru"``, ``"rim"``, ``"srm"``, or a registered one).

    ``kwargs`` go to the core's constructor/factory; LSTM and GRU take ``num_layers`` and
    torch's ``nn.LSTM``/``nn.GRU`` arguments (``dropout``, ``bias``, ...). The result maps
    ``x`` ``(T, B, input_size)`` to ``out`` ``(T, B, hidden_size)``. To stack any core use
    ``core_spec(name).build_layers(input_size, hidden_size, num_layers, **kwargs)``.

    :raises UnknownCoreError: (a ``ValueError``) ``name`` is not registered.
    :raises ValueError: bad arguments, or a registered factory whose module breaks the contract.
    """
    return core_spec(name).build(input_size, hidden_size, **kwargs)


__all__ = [
    "BUILTIN_CORES",
    "CORES",
    "GRU",
    "LSTM",
    "RIM",
    "SRM",
    "GroupedGRUCell",
    "GroupedLSTMCell",
    "GroupedLinear",
    "RecurrentCore",
    "CoreSpec",
    "StackedCore",
    "State",
    "UnknownCoreError",
    "core_names",
    "core_spec",
    "is_registered",
    "make_core",
    "make_grouped_cell",
    "register_core",
    "unregister_core",
]
