"""rimrl: modular recurrent cores (RIMs, S2RMs) for sb3-contrib's RecurrentPPO.

Importing ``rimrl`` registers the MiniGrid distractor suite and the memory benchmarks with
gymnasium (``gymnasium.make("rimrl/Pickup-Train-v0")``, ``"CartPoleNoVel-v1"``) and rimrl's policy
names with sb3-contrib (``RecurrentPPO("RIMPolicy", env)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rimrl import envs as envs  # registers the suite ids
from rimrl import policies as policies  # registers the policy names

if TYPE_CHECKING:
    from sb3_contrib import RecurrentPPO

__version__ = "0.1.0"


def load(path: str, env: Any = None, device: str = "auto", safe: bool | None = None) -> RecurrentPPO:
    """Load a saved agent (``model.zip`` or a run directory); see ``rimrl.agents.load_agent``.

    ``safe=None`` (default): from the pickle-free ``X.weights.pt`` + ``X.spec.json`` when they
    exist; otherwise a zip in a run directory is unpickled with a warning and a bare zip is
    refused. ``safe=True`` never unpickles; ``safe=False`` unpickles (only for files you trust).
    """
    from rimrl.agents import load_agent

    return load_agent(path, env=env, device=device, safe=safe)


__all__ = ["__version__", "envs", "load", "policies"]
