"""Observation and info wrappers that give every MiniGrid/BabyAI env rimrl's dict observation.

Observation format (the contract policies rely on), a ``gymnasium.spaces.Dict``:

- ``"grid"``: ``Box(0, [10, 5, 2], (view, view, 3), uint8)`` -- MiniGrid's egocentric encoding,
  channels (object index, colour index, state index) from ``minigrid.core.constants``, indexed
  ``grid[x, y]`` with the agent at ``(view // 2, view - 1)`` facing towards ``y = 0``. Because
  ``high`` is not 255, SB3 does not treat it as an image (no transpose, no division by 255).
- ``"direction"``: ``Box(0, 3, (1,), uint8)`` -- the agent's absolute heading (0 = east, 1 = south,
  2 = west, 3 = north).
- ``"target"``: ``Box(0, [10, 5], (2,), uint8)`` -- (object index, colour index) of the object to
  pick up. Present only when the unwrapped env has a ``target_encoding()`` method (the rimrl
  pick-up suites) or when ``include_target=True``; other MiniGrid/BabyAI envs get only
  ``"grid"`` and ``"direction"``.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

MAX_OBJECT_IDX = max(OBJECT_TO_IDX.values())
MAX_COLOR_IDX = max(COLOR_TO_IDX.values())
MAX_STATE_IDX = max(STATE_TO_IDX.values())

GRID_KEY, DIRECTION_KEY, TARGET_KEY = "grid", "direction", "target"


def grid_space(view_size: int = 7) -> spaces.Box:
    """``Box(0, [max object, max colour, max state], (view_size, view_size, 3), uint8)``."""
    high = np.broadcast_to(
        np.array([MAX_OBJECT_IDX, MAX_COLOR_IDX, MAX_STATE_IDX], dtype=np.uint8), (view_size, view_size, 3)
    )
    return spaces.Box(low=0, high=high.copy(), shape=(view_size, view_size, 3), dtype=np.uint8)


def direction_space() -> spaces.Box:
    """``Box(0, 3, (1,), uint8)``."""
    return spaces.Box(low=0, high=3, shape=(1,), dtype=np.uint8)


def target_space() -> spaces.Box:
    """``Box(0, [max object, max colour], (2,), uint8)``."""
    return spaces.Box(
        low=0, high=np.array([MAX_OBJECT_IDX, MAX_COLOR_IDX], dtype=np.uint8), shape=(2,), dtype=np.uint8
    )


def grid_dict_space(view_size: int = 7, include_target: bool = True) -> spaces.Dict:
    """The rimrl MiniGrid observation space (see the module docstring)."""
    entries: dict[str, spaces.Space] = {GRID_KEY: grid_space(view_size), DIRECTION_KEY: direction_space()}
    if include_target:
        entries[TARGET_KEY] = target_space()
    return spaces.Dict(entries)


def has_target_encoding(env: gym.Env) -> bool:
    """Whether ``env.unwrapped`` can report its target (a callable ``target_encoding()``)."""
    return callable(getattr(env.unwrapped, "target_encoding", None))


def has_grid_dict_obs(env: gym.Env) -> bool:
    """Whether ``env`` already emits the rimrl dict observation (so it must not be wrapped twice)."""
    space = env.observation_space
    return isinstance(space, spaces.Dict) and GRID_KEY in space.spaces and DIRECTION_KEY in space.spaces


class GridDictObsWrapper(gym.ObservationWrapper):
    """Turn MiniGrid's ``{"image", "direction", "mission"}`` observation into rimrl's dict format.

    Works on any MiniGrid/BabyAI env with the default egocentric ``"image"``. The ``"mission"``
    string is dropped; the target (when known) is given as indices instead.

    Args:
        env: a MiniGrid env (possibly wrapped) whose observation has ``"image"`` and ``"direction"``.
        include_target: add ``"target"``. ``None`` (default): add it iff the unwrapped env has a
            ``target_encoding()`` method. ``True`` on an env without one raises ``ValueError``.
    """

    def __init__(self, env: gym.Env, include_target: bool | None = None) -> None:
        super().__init__(env)
        inner = env.observation_space
        if not (isinstance(inner, spaces.Dict) and "image" in inner.spaces and "direction" in inner.spaces):
            raise ValueError(
                f"env must have MiniGrid's dict observation with 'image' and 'direction', got {inner}"
            )
        image_shape = inner["image"].shape
        if len(image_shape) != 3 or image_shape[0] != image_shape[1] or image_shape[2] != 3:
            raise ValueError(f"env's 'image' must have shape (view, view, 3), got {image_shape}")
        knows_target = has_target_encoding(env)
        if include_target is None:
            include_target = knows_target
        elif include_target and not knows_target:
            raise ValueError("include_target=True but the unwrapped env has no target_encoding() method")
        self.include_target = bool(include_target)
        self.observation_space = grid_dict_space(image_shape[0], self.include_target)

    def observation(self, observation: dict[str, Any]) -> dict[str, np.ndarray]:
        obs = {
            GRID_KEY: np.asarray(observation["image"], dtype=np.uint8),
            DIRECTION_KEY: np.array([observation["direction"]], dtype=np.uint8),
        }
        if self.include_target:
            obs[TARGET_KEY] = self.env.unwrapped.target_encoding()
        return obs


class SuccessInfoWrapper(gym.Wrapper):
    """Guarantee ``info["success"]`` on every step (needed by ``Monitor(info_keywords=("success",))``).

    Envs that set it themselves (the pick-up suites) are left alone; for other MiniGrid envs success
    means MiniGrid's convention: the episode terminated with a positive reward. The same flag is
    copied to ``info["is_success"]``, the key SB3 reads at episode ends for its ``success_rate`` log.
    """

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "success" not in info:
            info["success"] = bool(terminated and float(reward) > 0.0)
        info["is_success"] = info["success"]
        return obs, reward, terminated, truncated, info
