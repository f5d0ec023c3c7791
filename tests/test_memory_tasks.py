"""Issue 14 (item 3): the standard memory benchmarks CartPoleNoVel-v1, PendulumNoVel-v1 and
LunarLanderNoVel-v3 (rimrl.envs.memory), their presets, and benchmarks/memory.py end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rimrl.agents import resolve_hyperparams
from rimrl.envs import MEMORY_TASKS, MaskVelocityWrapper, env_family, is_minigrid, make_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env_id", list(MEMORY_TASKS))
def test_velocities_are_hidden_and_everything_else_is_the_base_env(env_id: str) -> None:
    if env_id.startswith("LunarLander"):
        pytest.importorskip("Box2D", reason="LunarLanderNoVel-v3 needs box2d (the dev extra installs it)")
    base_id, hidden = MEMORY_TASKS[env_id]
    masked, base = gym.make(env_id), gym.make(base_id)
    assert masked.observation_space == base.observation_space
    assert masked.spec.max_episode_steps == base.spec.max_episode_steps
    (obs, _), (base_obs, _) = masked.reset(seed=3), base.reset(seed=3)
    masked.action_space.seed(3)
    seen_velocity = False
    for _ in range(30):
        shown = np.setdiff1d(np.arange(base_obs.shape[0]), hidden)
        np.testing.assert_array_equal(obs[list(hidden)], 0)
        np.testing.assert_array_equal(obs[shown], base_obs[shown])
        seen_velocity |= bool(np.any(base_obs[list(hidden)] != 0))
        action = masked.action_space.sample()
        obs, reward, terminated, truncated, _ = masked.step(action)
        base_obs, base_reward, base_terminated, base_truncated, _ = base.step(action)
        assert (reward, terminated, truncated) == (base_reward, base_terminated, base_truncated)
        if terminated or truncated:
            break
    assert seen_velocity  # the base env did have velocities to hide


def test_memory_tasks_are_vector_envs_with_rl_zoo_presets() -> None:
    assert env_family("CartPoleNoVel-v1") == "vector" and not is_minigrid("CartPoleNoVel-v1")
    cartpole = resolve_hyperparams("CartPoleNoVel-v1", "rim")
    assert (cartpole["n_envs"], cartpole["n_steps"], cartpole["batch_size"], cartpole["n_epochs"]) == (8, 32, 256, 20)
    assert cartpole["learning_rate"](1.0) == pytest.approx(1e-3) and cartpole["learning_rate"](0.5) == pytest.approx(5e-4)
    assert cartpole["policy_kwargs"]["core_kwargs"]["k"] == 4  # the family's core settings stay
    pendulum = resolve_hyperparams("PendulumNoVel-v1", "srm")
    assert pendulum["use_sde"] is True and pendulum["sde_sample_freq"] == 4 and pendulum["n_envs"] == 4
    assert resolve_hyperparams("LunarLanderNoVel-v3", "gru")["n_envs"] == 16
    assert resolve_hyperparams("CartPole-v1", "rim")["n_steps"] == 64  # other ids keep the family preset
    venv = make_env("CartPoleNoVel-v1", n_envs=2, seed=0)
    obs = venv.reset()
    assert obs.shape == (2, 4) and np.all(obs[:, [1, 3]] == 0)
    venv.close()


def test_the_wrapper_refuses_what_it_cannot_mask() -> None:
    with pytest.raises(ValueError, match="1-d Box"):
        MaskVelocityWrapper(gym.make("FrozenLake-v1"), [0])
    with pytest.raises(ValueError, match=r"within \[0, 4\)"):
        MaskVelocityWrapper(gym.make("CartPole-v1"), [4])


def test_memory_benchmark_trains_evaluates_tabulates_and_resumes(tmp_path: Path, monkeypatch) -> None:
    """sb3-contrib's policy and a rimrl core on a tiny CartPoleNoVel budget, then a rerun that trains nothing."""
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(sys, "argv", ["memory.py"])
    from benchmarks import memory

    argv = ["--envs", "CartPoleNoVel-v1", "--cores", "ref", "gru", "--seeds", "0", "--steps", "CartPoleNoVel-v1=256",
            "--episodes", "2", "--workers", "1", "--out", str(tmp_path)]
    assert memory.main(argv) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert [(r["core"], r["num_timesteps"]) for r in report["rows"]] == [("ref", 256), ("gru", 256)]
    for row in report["rows"]:
        assert np.isfinite(row["mean_return"]) and row["train_return"] is not None
    text = (tmp_path / "results.md").read_text()
    assert "sb3-contrib MlpLstmPolicy" in text and "| CartPoleNoVel-v1 | gru |" in text and "--steps" in text
    cached = (tmp_path / "CartPoleNoVel-v1" / "gru" / "seed0" / memory.EVAL_FILE).read_text()
    model_time = (tmp_path / "CartPoleNoVel-v1" / "ref" / "seed0" / "model.zip").stat().st_mtime_ns
    assert memory.main(argv) == 0  # nothing retrained, evaluations reused
    assert (tmp_path / "CartPoleNoVel-v1" / "ref" / "seed0" / "model.zip").stat().st_mtime_ns == model_time
    assert (tmp_path / "CartPoleNoVel-v1" / "gru" / "seed0" / memory.EVAL_FILE).read_text() == cached
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == report["rows"]
