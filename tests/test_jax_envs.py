"""rimrl.jax.envs (issue 17, item 3): the distractor suite in JAX against the gymnasium suite.

The random streams differ, so the two share layouts through ``state_from_gym``: from the state of
a gymnasium episode, both versions take the same actions and must give the same observations,
rewards, terminations, truncations and successes at every step. The JAX layout sampler is checked
against the variant specs and against the gymnasium sampler's statistics.
"""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="rimrl.jax needs the jax extra: pip install 'rimrl[jax]'")
import jax.numpy as jnp  # noqa: E402

from rimrl.envs import VARIANT_SPECS  # noqa: E402
from rimrl.jax.envs import make_pickup, state_from_gym  # noqa: E402

IDS = ["rimrl/Pickup-Train-v0", "rimrl/Pickup-MoreNovel-v0", "rimrl/PickupInstructed-Novel-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_same_state_and_actions_give_the_same_steps(env_id: str) -> None:
    env = gym.make(env_id, max_steps=40)  # truncations within the test's episodes too
    jenv = dataclasses.replace(make_pickup(env_id), max_steps=40)
    step = jax.jit(jenv.step)
    rng = np.random.default_rng(0)
    outcomes = {"success": 0, "distractor": 0, "truncated": 0}
    for episode in range(12):
        obs, _ = env.reset(seed=episode)
        state = state_from_gym(env)
        for key, value in jenv.observation(state).items():
            np.testing.assert_array_equal(np.asarray(value), obs[key])
        for _ in range(60):
            action = int(rng.integers(3)) if rng.random() < 0.8 else 3
            obs, reward, terminated, truncated, info = env.step(action)
            state, j_obs, j_reward, j_terminated, j_truncated, j_success = step(state, jnp.asarray(action))
            for key, value in j_obs.items():
                np.testing.assert_array_equal(np.asarray(value), obs[key], err_msg=f"{env_id} episode {episode} {key}")
            assert float(j_reward) == pytest.approx(float(reward), abs=1e-6)
            assert (bool(j_terminated), bool(j_truncated), bool(j_success)) == (terminated, truncated, info["success"])
            if terminated or truncated:
                outcomes["success" if info["success"] else "distractor" if terminated else "truncated"] += 1
                break
    assert outcomes["success"] + outcomes["distractor"] > 0 and sum(outcomes.values()) == 12


def _layout_stats(grids: np.ndarray, agents: np.ndarray, targets_pos: np.ndarray) -> tuple[np.ndarray, float]:
    objects = np.isin(grids[..., 0], [5, 6, 7]).sum(axis=(1, 2)) - 1
    distance = np.abs(agents - targets_pos).sum(axis=1).mean()
    return objects, float(distance)


@pytest.mark.parametrize("env_id", ["rimrl/Pickup-Train-v0", "rimrl/PickupInstructed-More-v0"])
def test_layouts_follow_the_variant_and_the_gymnasium_sampler(env_id: str) -> None:
    spec, jenv = VARIANT_SPECS[env_id], make_pickup(env_id)
    states, obs = jax.jit(jax.vmap(jenv.reset))(jax.random.split(jax.random.PRNGKey(0), 600))
    grids, targets = np.asarray(states.grid), np.asarray(states.target)
    assert bool(jax.vmap(jenv.target_reachable)(states).all())
    allowed_targets = {desc.encode() for desc in spec.targets}
    for grid, target, target_pos, agent in zip(grids, targets, np.asarray(states.target_pos),
                                              np.asarray(states.agent_pos), strict=True):
        assert tuple(target) in allowed_targets
        assert tuple(grid[tuple(target_pos)][:2]) == tuple(target)
        assert tuple(grid[tuple(agent)]) == (1, 0, 0)  # the agent stands on an empty cell
        kinds = [tuple(cell[:2]) for cell in grid.reshape(-1, 3) if cell[0] in (5, 6, 7)]
        kinds.remove(tuple(target))
        pool = {desc.encode() for desc in spec.distractor_kinds(spec.targets[[d.encode() for d in spec.targets].index(tuple(target))])}
        assert set(kinds) <= pool
    counts, distance = _layout_stats(grids, np.asarray(states.agent_pos), np.asarray(states.target_pos))
    assert counts.min() == spec.num_distractors[0] and counts.max() == spec.num_distractors[1]
    assert np.asarray(obs["direction"]).max() == 3 and len(np.unique(targets, axis=0)) == len(spec.targets)

    env = gym.make(env_id)
    gym_grids, gym_agents, gym_targets = [], [], []
    for seed in range(600):
        env.reset(seed=seed)
        gym_grids.append(env.unwrapped.grid.encode())
        gym_agents.append(env.unwrapped.agent_pos)
        gym_targets.append(env.unwrapped.target_obj.cur_pos)
    gym_counts, gym_distance = _layout_stats(np.array(gym_grids), np.array(gym_agents), np.array(gym_targets))
    assert abs(counts.mean() - gym_counts.mean()) < 0.2  # uniform counts: sd of a mean of 600 ~ 0.03
    assert abs(distance - gym_distance) < 0.35  # agent-target Manhattan distance, sd of a mean ~ 0.08


def test_autoreset_starts_a_new_episode_where_one_ended() -> None:
    jenv = make_pickup("rimrl/Pickup-Train-v0")
    state, _ = jenv.reset(jax.random.PRNGKey(1))
    step = jax.jit(jenv.step_autoreset)
    key = jax.random.PRNGKey(2)
    for t in range(200):
        key, sub = jax.random.split(key)
        new_state, obs, reward, done, truncated, success, terminal_obs = step(sub, state, jnp.asarray(t % 4))
        if bool(done):
            assert int(new_state.step_count) == 0 and int(new_state.carrying[0]) == 1
            assert not np.array_equal(np.asarray(terminal_obs["grid"]), np.asarray(obs["grid"]))
            return
        assert int(new_state.step_count) == int(state.step_count) + 1
        state = new_state
    raise AssertionError("no episode ended in 200 steps")


def test_only_suite_ids_are_accepted() -> None:
    with pytest.raises(ValueError, match="distractor suites only"):
        make_pickup("CartPole-v1")
