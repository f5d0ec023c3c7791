"""Hyperparameter presets per env family and core; build and load RecurrentPPO agents.

>>> model = make_agent("rimrl/Pickup-Train-v0", core="rim", seed=0)   # doctest: +SKIP
>>> model.learn(100_000).save("runs/rim")                              # doctest: +SKIP
>>> model = load_agent("runs/rim", env=model.get_env())                # doctest: +SKIP
"""

from rimrl.agents.factory import AgentLoadError, infer_family, load_agent, make_agent
from rimrl.agents.presets import (
    CONFIG_DIR_ENV,
    FAMILIES,
    LinearDecay,
    allowed_core_kwargs,
    allowed_hyperparams,
    allowed_policy_kwargs,
    config_dir,
    load_preset,
    parse_schedule,
    preset_n_envs,
    resolve_family,
    resolve_hyperparams,
)
from rimrl.agents.safe import SpecError, UnsafeLoadWarning, load_safe, save_weights

__all__ = [
    "CONFIG_DIR_ENV",
    "FAMILIES",
    "AgentLoadError",
    "LinearDecay",
    "SpecError",
    "UnsafeLoadWarning",
    "allowed_core_kwargs",
    "allowed_hyperparams",
    "allowed_policy_kwargs",
    "config_dir",
    "infer_family",
    "load_agent",
    "load_preset",
    "load_safe",
    "make_agent",
    "parse_schedule",
    "preset_n_envs",
    "resolve_family",
    "resolve_hyperparams",
    "save_weights",
]
