"""Scripted shortest-path solver for :class:`~rimrl.envs.pickup.PickupEnv` (privileged: full grid).

Used by the tests to show every generated episode is solvable, and usable as an upper-bound
baseline (its return is the best achievable) in evaluations.
"""

from __future__ import annotations

from collections import deque

import gymnasium as gym
from minigrid.core.constants import DIR_TO_VEC

from rimrl.envs.pickup import PickupEnv

LEFT, RIGHT, FORWARD, PICKUP = 0, 1, 2, 3

State = tuple[int, int, int]  # (x, y, direction)


def _pickup_env(env: gym.Env) -> PickupEnv:
    base = env.unwrapped
    if not isinstance(base, PickupEnv):
        raise ValueError(f"env must wrap a PickupEnv, got {type(base).__name__}")
    return base


def plan_path_to_face(env: gym.Env, cell: tuple[int, int]) -> list[int] | None:
    """Shortest turn/forward sequence after which the agent faces ``cell`` (None if impossible).

    Breadth-first search over (position, direction) states through free cells of the full grid.
    """
    base = _pickup_env(env)
    grid = base.grid
    goal = (int(cell[0]), int(cell[1]))
    start: State = (int(base.agent_pos[0]), int(base.agent_pos[1]), int(base.agent_dir))
    parents: dict[State, tuple[State, int] | None] = {start: None}
    frontier = deque([start])
    while frontier:
        state = frontier.popleft()
        x, y, d = state
        dx, dy = DIR_TO_VEC[d]
        fx, fy = x + int(dx), y + int(dy)
        if (fx, fy) == goal:
            actions: list[int] = []
            while (link := parents[state]) is not None:
                state, action = link
                actions.append(action)
            return actions[::-1]
        front = grid.get(fx, fy)
        successors: list[tuple[State, int]] = [((x, y, (d - 1) % 4), LEFT), ((x, y, (d + 1) % 4), RIGHT)]
        if front is None or front.can_overlap():
            successors.append(((fx, fy, d), FORWARD))
        for nxt, action in successors:
            if nxt not in parents:
                parents[nxt] = (state, action)
                frontier.append(nxt)
    return None


def plan_pickup(env: gym.Env) -> list[int] | None:
    """Shortest action sequence that picks up the target: walk until facing it, then pick up.

    Returns None if the target cannot be reached (never the case for generated episodes).
    """
    base = _pickup_env(env)
    if base.target_obj is None or base.target_obj.cur_pos is None or base.carrying is not None:
        raise ValueError("env has no target on the grid (reset it; do not call after a pick-up)")
    path = plan_path_to_face(env, tuple(base.target_obj.cur_pos))
    return None if path is None else [*path, PICKUP]


def run_oracle_episode(env: gym.Env, seed: int | None = None) -> tuple[float, bool, int]:
    """Reset ``env`` with ``seed`` and play :func:`plan_pickup`'s plan: (return, success, steps)."""
    env.reset(seed=seed)
    plan = plan_pickup(env)
    if plan is None:
        return 0.0, False, 0
    total, success, steps = 0.0, False, 0
    for action in plan:
        _, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
        success = bool(info["success"])
        if terminated or truncated:
            break
    return total, success, steps
