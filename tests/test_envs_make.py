"""rimrl.envs.make_env, is_atari, env_family."""

from __future__ import annotations

import glob

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rimrl.envs import (
    DISTRACTOR_SUITES,
    VARIANT_SPECS,
    AleVecEnv,
    env_family,
    is_atari,
    make_env,
    make_minigrid_env,
)

TRAIN_ID = DISTRACTOR_SUITES["pickup"]["train"]


def test_suite_vec_env_shapes_and_episode_info() -> None:
    venv = make_env(TRAIN_ID, n_envs=3, seed=0)
    assert isinstance(venv, DummyVecEnv)
    obs = venv.reset()
    assert obs["grid"].shape == (3, 7, 7, 3) and obs["grid"].dtype == np.uint8
    assert obs["direction"].shape == (3, 1) and obs["target"].shape == (3, 2)
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(300):
        obs, rewards, dones, infos = venv.step(rng.integers(0, 4, 3))
        for done, info in zip(dones, infos, strict=True):
            assert "success" in info and info["is_success"] == info["success"]  # SB3's success_rate key
            if done:
                assert "terminal_observation" in info and "episode" in info
                episodes.append(info["episode"])
    assert episodes and all({"r", "l", "t", "success"} <= set(ep) for ep in episodes)
    assert all(ep["success"] == (ep["r"] > 0) for ep in episodes)
    venv.close()


def test_env_i_gets_seed_plus_i() -> None:
    venv = make_env(TRAIN_ID, n_envs=3, seed=5)
    obs = venv.reset()
    for i in range(3):
        single = make_minigrid_env(TRAIN_ID)
        expected, _ = single.reset(seed=5 + i)
        assert np.array_equal(obs["grid"][i], expected["grid"])
        assert np.array_equal(venv.envs[i].unwrapped.grid.encode(), single.unwrapped.grid.encode())
    again = make_env(TRAIN_ID, n_envs=3, seed=5).reset()
    assert all(np.array_equal(obs[k], again[k]) for k in obs)


def test_monitor_dir_writes_csv(tmp_path) -> None:
    venv = make_env(TRAIN_ID, n_envs=2, seed=0, monitor_dir=str(tmp_path / "monitor"))
    venv.reset()
    for _ in range(200):
        venv.step(np.array([3, 3]))  # pick-up spam: episodes end quickly
    venv.close()
    files = sorted(glob.glob(str(tmp_path / "monitor" / "*.monitor.csv")))
    assert len(files) == 2
    with open(files[0]) as handle:
        lines = handle.read().splitlines()
    assert lines[1].split(",")[:4] == ["r", "l", "t", "success"]


def test_plain_minigrid_id_and_env_kwargs() -> None:
    venv = make_env("MiniGrid-Fetch-8x8-N3-v0", n_envs=2, seed=0, render_mode="rgb_array")
    assert set(venv.observation_space.spaces) == {"grid", "direction"}
    obs = venv.reset()
    assert obs["grid"].shape == (2, 7, 7, 3)
    _, _, _, infos = venv.step(np.array([0, 1]))
    assert all("success" in info for info in infos)
    assert venv.get_attr("render_mode") == ["rgb_array", "rgb_array"]
    venv.close()


def test_subproc_minigrid() -> None:
    venv = make_env(DISTRACTOR_SUITES["pickup-instructed"]["novel"], n_envs=2, seed=1, vec_env="subproc")
    assert isinstance(venv, SubprocVecEnv)
    obs = venv.reset()
    assert obs["target"].shape == (2, 2)
    venv.step(np.array([2, 2]))
    venv.close()


def test_atari_defaults_to_ale_adapter() -> None:
    venv = make_env("Breakout", n_envs=2, seed=0)
    assert isinstance(venv, AleVecEnv) and isinstance(venv, VecEnv)
    assert venv.observation_space.shape == (1, 84, 84)
    venv.close()


def test_family_and_atari_detection() -> None:
    for env_id in VARIANT_SPECS:
        assert env_family(env_id) == "minigrid" and not is_atari(env_id)
    assert env_family("MiniGrid-Fetch-8x8-N3-v0") == "minigrid"
    assert env_family("BabyAI-GoToLocal-v0") == "minigrid"
    for atari_id in (
        "Breakout",
        "breakout",
        "ALE/Breakout-v5",
        "BreakoutNoFrameskip-v4",
        "MsPacman",
        "ALE/Pong-v5",
    ):
        assert is_atari(atari_id) and env_family(atari_id) == "atari"
    assert not is_atari("CartPole-v1") and not is_atari("MiniGrid-Fetch-8x8-N3-v0")


def test_unknown_id_error_suggests_close_ids() -> None:
    with pytest.raises(ValueError) as excinfo:
        make_env("Qqqzzx-v9")
    message = str(excinfo.value)
    assert "unknown env id 'Qqqzzx-v9'" in message and "--gym-packages" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(ValueError, match=r"unknown env id 'CartPol-v1'; did you mean CartPole-v1\?"):
        env_family("CartPol-v1")
    with pytest.raises(ValueError, match=r"did you mean rimrl/Pickup-Train-v0\?"):
        make_env("rimrl/Pickup-Trian-v0")


def test_any_gymnasium_id_is_a_vector_or_image_env() -> None:
    assert env_family("CartPole-v1") == "vector" and env_family("Pendulum-v1") == "vector"
    venv = make_env("Pendulum-v1", n_envs=2, seed=0)
    assert venv.observation_space.shape == (3,) and venv.action_space.shape == (1,)
    obs = venv.reset()
    assert obs.shape == (2, 3)
    venv.close()


def test_env_wrappers_apply_to_every_env_in_order() -> None:
    from gymnasium.wrappers import TimeLimit

    wrappers = [{"gymnasium.wrappers:TimeLimit": {"max_episode_steps": 3}}, "gymnasium.wrappers:FlattenObservation"]
    venv = make_env("CartPole-v1", n_envs=2, seed=0, wrappers=wrappers)
    assert all(isinstance(env.env.env, TimeLimit) for env in venv.envs)  # Monitor(Flatten(TimeLimit(...)))
    venv.reset()
    for _ in range(3):
        _, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))
    assert dones.all() and infos[0]["episode"]["l"] == 3
    venv.close()
    # MiniGrid: the wrapper sees the rimrl dict observation.
    suite = make_env(TRAIN_ID, n_envs=1, wrappers={"gymnasium.wrappers:FilterObservation": {"filter_keys": ["grid"]}})
    assert list(suite.observation_space.spaces) == ["grid"]
    suite.close()
    for bad, message in ((3, "bad env wrapper"), ("gymnasium.wrappers:Nope", "cannot import"),
                         ({"gymnasium.wrappers:TimeLimit": 5}, "must be a mapping")):
        with pytest.raises(ValueError, match=message):
            make_env("CartPole-v1", wrappers=bad)
    with pytest.raises(ValueError, match="not supported for Atari"):
        make_env("Breakout", wrappers="gymnasium.wrappers:TimeLimit")


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(env_id=TRAIN_ID, vec_env="ale"), "vec_env"),
        (dict(env_id=TRAIN_ID, vec_env="threads"), "vec_env"),
        (dict(env_id=TRAIN_ID, n_envs=0), "n_envs"),
        (dict(env_id="Breakout", n_envs=0), "n_envs"),
    ],
)
def test_bad_make_env_arguments(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        make_env(**kwargs)


def test_suite_ids_work_with_plain_gym_make() -> None:
    env = gym.make(TRAIN_ID, render_mode="rgb_array")
    env.reset(seed=0)
    assert env.render().shape[2] == 3
