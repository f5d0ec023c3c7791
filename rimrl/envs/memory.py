"""The standard memory benchmarks: classic-control tasks with their velocities hidden.

``CartPoleNoVel-v1``, ``PendulumNoVel-v1`` and ``LunarLanderNoVel-v3`` are ``CartPole-v1``,
``Pendulum-v1`` and ``LunarLander-v3`` whose velocity entries are set to zero in every
observation, as rl-zoo3's ``ppo_lstm`` tasks have them (same shapes, same names with gymnasium's
current base versions). Without the velocities, a policy must infer them from the past
observations it remembers, so a recurrent core is needed to solve them. The ids are registered
with gymnasium when :mod:`rimrl.envs` is imported. ``LunarLanderNoVel-v3`` needs Box2D
(``pip install 'rimrl[box2d]'``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

__all__ = ["MEMORY_TASKS", "MaskVelocityWrapper", "MemoryTask", "make_no_velocity_env", "register_memory_tasks"]


class MemoryTask(NamedTuple):
    """A velocity-free task: the base env id and the observation entries that are velocities."""

    base_id: str
    velocity_indices: tuple[int, ...]


#: id -> (base id, velocity indices). CartPole: (x, x_dot, theta, theta_dot); Pendulum:
#: (cos theta, sin theta, theta_dot); LunarLander: (x, y, vx, vy, angle, angular velocity, leg, leg).
MEMORY_TASKS: dict[str, MemoryTask] = {
    "CartPoleNoVel-v1": MemoryTask("CartPole-v1", (1, 3)),
    "PendulumNoVel-v1": MemoryTask("Pendulum-v1", (2,)),
    "LunarLanderNoVel-v3": MemoryTask("LunarLander-v3", (2, 3, 5)),
}


class MaskVelocityWrapper(gym.ObservationWrapper):
    """Sets the observation entries ``velocity_indices`` to zero (the shape is unchanged).

    :param env: an env with a 1-d ``Box`` observation space.
    :param velocity_indices: the entries to hide.
    """

    def __init__(self, env: gym.Env, velocity_indices: Sequence[int]) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"MaskVelocityWrapper needs a 1-d Box observation space, got {space}")
        indices = [int(i) for i in velocity_indices]
        if not indices or any(not 0 <= i < space.shape[0] for i in indices):
            raise ValueError(f"velocity_indices must be non-empty and within [0, {space.shape[0]}), got {indices}")
        # The space keeps the base env's bounds (0 lies within them), as rl-zoo3's wrapper does.
        self.velocity_indices = np.asarray(indices)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        observation = np.array(observation, copy=True)
        observation[self.velocity_indices] = 0
        return observation


def make_no_velocity_env(base_id: str, velocity_indices: Sequence[int], **kwargs: Any) -> gym.Env:
    """``gym.make(base_id, **kwargs)`` with its velocities hidden (the registered ids' entry point)."""
    return MaskVelocityWrapper(gym.make(base_id, **kwargs), velocity_indices)


def register_memory_tasks() -> None:
    """Register :data:`MEMORY_TASKS` with gymnasium (idempotent)."""
    for env_id, (base_id, indices) in MEMORY_TASKS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="rimrl.envs.memory:make_no_velocity_env",
                kwargs={"base_id": base_id, "velocity_indices": indices},
            )
