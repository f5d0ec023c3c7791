"""SB3 policies that hold a rimrl core, and the token encoders they read observations with.

``RecurrentPPO(RIMPolicy, env)`` works with sb3-contrib's unmodified ``RecurrentPPO``.
"""

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

__all__ = [
    "CORE_NAMES",
    "DEFAULT_CORE_KWARGS",
    "DEFAULT_HIDDEN_SIZE",
    "POLICIES",
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
]
