"""Recurrent cores with one contract: ``out, (h, c) = core(x, state=None, episode_starts=None)``.

Pure torch: nothing here imports stable-baselines3.
"""

from __future__ import annotations

from rimrl.cores.base import RecurrentCore, State
from rimrl.cores.grouped import GroupedGRUCell, GroupedLinear, GroupedLSTMCell, make_grouped_cell
from rimrl.cores.recurrent import GRU, LSTM
from rimrl.cores.rim import RIM
from rimrl.cores.srm import SRM

CORES: dict[str, type[RecurrentCore]] = {"lstm": LSTM, "gru": GRU, "rim": RIM, "srm": SRM}


def make_core(name: str, input_size: int, hidden_size: int, **kwargs) -> RecurrentCore:
    """Build a core by name (``"lstm"``, ``"gru"``, ``"rim"``, ``"srm"``).

    ``kwargs`` go to the core's constructor; LSTM and GRU take none.
    """
    try:
        core_class = CORES[name]
    except KeyError:
        raise ValueError(f"core must be one of {sorted(CORES)}, got {name!r}") from None
    try:
        return core_class(input_size, hidden_size, **kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments for core {name!r}: {error}") from None


__all__ = [
    "CORES",
    "GRU",
    "LSTM",
    "RIM",
    "SRM",
    "GroupedGRUCell",
    "GroupedLSTMCell",
    "GroupedLinear",
    "RecurrentCore",
    "State",
    "make_core",
    "make_grouped_cell",
]
