"""SB3 policies that hold a rimrl core, and the token encoders they read observations with.

``RecurrentPPO(RIMPolicy, env)`` works with sb3-contrib's unmodified ``RecurrentPPO``, and so do
the names (``RecurrentPPO("RIMPolicy", env)``) once ``rimrl`` is imported: SB3 looks a policy name
up in the algorithm's ``policy_aliases``, to which this package adds :data:`POLICY_ALIASES`. A
core of your own (:func:`rimrl.cores.register_core`) runs in
``RecurrentPPO(ModularRecurrentPolicy, env, policy_kwargs={"core": "mycore"})``.
"""

from typing import Any

from rimrl.policies.encoders import (
    AtariTokenEncoder,
    MiniGridTokenEncoder,
    TokenEncoder,
    VectorTokenEncoder,
    encoder_spec,
    is_minigrid_space,
    make_encoder,
)
from rimrl.policies.modular import (
    CORE_NAMES,
    DEFAULT_CORE_KWARGS,
    DEFAULT_HIDDEN_SIZE,
    GRUPolicy,
    LSTMPolicy,
    ModularRecurrentPolicy,
    ProjectedCore,
    RIMPolicy,
    SRMPolicy,
)

#: Policy classes by core name.
POLICIES: dict[str, type[ModularRecurrentPolicy]] = {
    "lstm": LSTMPolicy,
    "gru": GRUPolicy,
    "rim": RIMPolicy,
    "srm": SRMPolicy,
}


#: The policy names ``RecurrentPPO("RIMPolicy", env)`` accepts after ``import rimrl``.
POLICY_ALIASES: dict[str, type[ModularRecurrentPolicy]] = {
    "LSTMPolicy": LSTMPolicy,
    "GRUPolicy": GRUPolicy,
    "RIMPolicy": RIMPolicy,
    "SRMPolicy": SRMPolicy,
    "ModularRecurrentPolicy": ModularRecurrentPolicy,
}


def register_policy_aliases() -> None:
    """Add :data:`POLICY_ALIASES` to ``sb3_contrib.RecurrentPPO.policy_aliases`` (SB3's name lookup
    for the ``policy`` argument). Names sb3-contrib already uses are never replaced. Idempotent."""
    from sb3_contrib import RecurrentPPO

    for name, policy in POLICY_ALIASES.items():
        RecurrentPPO.policy_aliases.setdefault(name, policy)


register_policy_aliases()


def policy_for_core(core: str) -> tuple[type[ModularRecurrentPolicy], dict[str, Any]]:
    """The policy class and the ``policy_kwargs`` it needs for ``core``.

    Built-in cores have their own class (``"rim"`` -> ``(RIMPolicy, {})``); a registered core runs
    in :class:`ModularRecurrentPolicy` with ``{"core": core}``, which saved models record.

    :raises rimrl.cores.UnknownCoreError: ``core`` is not registered.
    """
    from rimrl.cores import core_spec

    core_spec(core)
    if core in POLICIES:
        return POLICIES[core], {}
    return ModularRecurrentPolicy, {"core": core}


__all__ = [
    "CORE_NAMES",
    "DEFAULT_CORE_KWARGS",
    "DEFAULT_HIDDEN_SIZE",
    "POLICIES",
    "POLICY_ALIASES",
    "AtariTokenEncoder",
    "GRUPolicy",
    "LSTMPolicy",
    "MiniGridTokenEncoder",
    "ModularRecurrentPolicy",
    "ProjectedCore",
    "RIMPolicy",
    "SRMPolicy",
    "TokenEncoder",
    "VectorTokenEncoder",
    "encoder_spec",
    "is_minigrid_space",
    "make_encoder",
    "policy_for_core",
    "register_policy_aliases",
]
