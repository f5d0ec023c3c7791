"""rimrl.envs: the MiniGrid distractor suites, Atari behind SB3's VecEnv, and ``make_env``.

Importing this package registers the suite ids with gymnasium (``rimrl/Pickup-Train-v0``, ...)
and the memory benchmarks (``CartPoleNoVel-v1``, ``PendulumNoVel-v1``, ``LunarLanderNoVel-v3``).
See ``docs/envs.md`` for the variant table and the observation format.
"""

from rimrl.envs.atari import (
    AleVecEnv,
    atari_gym_id,
    make_atari_vec_env,
    make_sb3_atari_vec_env,
    resolve_atari_game,
)
from rimrl.envs.factory import (
    default_deterministic,
    env_family,
    is_atari,
    is_minigrid,
    make_env,
    make_minigrid_env,
)
from rimrl.envs.memory import MEMORY_TASKS, MaskVelocityWrapper, register_memory_tasks
from rimrl.envs.oracle import plan_path_to_face, plan_pickup, run_oracle_episode
from rimrl.envs.pickup import RED_BALL, ObjectDesc, PickupEnv
from rimrl.envs.variants import (
    DISTRACTOR_SUITES,
    SUITE_SPECS,
    VARIANT_SPECS,
    VARIANTS,
    VariantSpec,
    make_variant_env,
    register_suites,
    suite_of,
    variant_spec,
)
from rimrl.envs.wrappers import GridDictObsWrapper, SuccessInfoWrapper, grid_dict_space

register_suites()
register_memory_tasks()

__all__ = [
    "DISTRACTOR_SUITES",
    "MEMORY_TASKS",
    "RED_BALL",
    "SUITE_SPECS",
    "VARIANTS",
    "VARIANT_SPECS",
    "AleVecEnv",
    "GridDictObsWrapper",
    "MaskVelocityWrapper",
    "ObjectDesc",
    "PickupEnv",
    "SuccessInfoWrapper",
    "VariantSpec",
    "atari_gym_id",
    "default_deterministic",
    "env_family",
    "grid_dict_space",
    "is_atari",
    "is_minigrid",
    "make_atari_vec_env",
    "make_env",
    "make_minigrid_env",
    "make_sb3_atari_vec_env",
    "make_variant_env",
    "plan_path_to_face",
    "plan_pickup",
    "register_memory_tasks",
    "register_suites",
    "resolve_atari_game",
    "run_oracle_episode",
    "suite_of",
    "variant_spec",
]
