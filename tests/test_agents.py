"""rimrl.agents: presets, overrides and validation, make_agent, load_agent and its errors."""

from __future__ import annotations

import zipfile

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from rimrl.agents import (
    AgentLoadError,
    LinearDecay,
    allowed_hyperparams,
    config_dir,
    load_agent,
    make_agent,
    parse_schedule,
    preset_n_envs,
    resolve_hyperparams,
)
from rimrl.cores import CORES
from rimrl.policies import GRUPolicy, LSTMPolicy, RIMPolicy

AVAILABLE_CORES = [name for name in ("lstm", "gru", "rim", "srm") if name in CORES]


# ----------------------------------------------------------------------------------------- presets


def test_preset_files_exist_and_resolve_for_every_core():
    for family in ("minigrid", "atari", "vector"):
        assert (config_dir() / f"{family}.yml").is_file()
        for core in AVAILABLE_CORES:
            params = resolve_hyperparams(family, core)
            assert set(params) <= set(allowed_hyperparams())
            assert params["n_envs"] >= 1 and "policy_kwargs" in params


def test_atari_preset_is_the_standard_recurrent_ppo_setting():
    params = resolve_hyperparams("atari", "lstm")
    assert (params["n_envs"], params["n_steps"], params["n_epochs"], params["batch_size"]) == (8, 128, 4, 256)
    assert params["learning_rate"] == LinearDecay(2.5e-4) and params["clip_range"] == LinearDecay(0.1)
    assert params["learning_rate"](1.0) == pytest.approx(2.5e-4) and params["learning_rate"](0.5) == pytest.approx(1.25e-4)
    assert (params["vf_coef"], params["ent_coef"]) == (0.5, 0.01)
    assert preset_n_envs("atari") == 8


def test_minigrid_preset_and_env_id_lookup():
    by_family = resolve_hyperparams("minigrid", "rim")
    by_id = resolve_hyperparams("rimrl/Pickup-Train-v0", "rim")
    assert by_family == by_id
    assert by_family["policy_kwargs"]["core_kwargs"]["num_units"] == 6
    assert by_family["policy_kwargs"]["lstm_hidden_size"] % by_family["policy_kwargs"]["core_kwargs"]["num_units"] == 0
    assert resolve_hyperparams("MiniGrid-Fetch-8x8-N3-v0", "lstm")["n_steps"] == 128


def test_overrides_dotted_and_top_level():
    params = resolve_hyperparams(
        "minigrid",
        "rim",
        overrides={"policy_kwargs.core_kwargs.k": 3, "learning_rate": "lin_1e-4", "policy_kwargs.lstm_hidden_size": 96},
    )
    assert params["policy_kwargs"]["core_kwargs"]["k"] == 3
    assert params["policy_kwargs"]["core_kwargs"]["num_units"] == 6  # the rest of the preset is kept
    assert params["policy_kwargs"]["lstm_hidden_size"] == 96
    assert params["learning_rate"] == LinearDecay(1e-4)
    nested = resolve_hyperparams("minigrid", "rim", overrides={"policy_kwargs": {"core_kwargs": {"k": 2}}})
    assert nested["policy_kwargs"]["core_kwargs"] == {**params["policy_kwargs"]["core_kwargs"], "k": 2}


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"lr": 1e-3}, "lr"),
        ({"policy_kwargs.hidden": 3}, "hidden"),
        ({"policy_kwargs.core_kwargs.num_unitz": 3}, "num_unitz"),
        ({"env": "CartPole-v1"}, "env"),
    ],
)
def test_unknown_keys_are_named_with_allowed_ones(overrides, key):
    with pytest.raises(ValueError, match=f"unknown key '{key}'.*allowed keys: .*"):
        resolve_hyperparams("minigrid", "rim", overrides=overrides)


def test_schedules_and_custom_presets(tmp_path):
    assert parse_schedule("lin_0.1")(0.25) == pytest.approx(0.025)
    assert parse_schedule("3e-4") == pytest.approx(3e-4) and parse_schedule(0.2) == 0.2
    with pytest.raises(ValueError, match="lin_"):
        parse_schedule("lin_fast")
    preset = tmp_path / "mine.yml"
    preset.write_text("default:\n  n_envs: 2\n  n_steps: 16\nlstm:\n  learning_rate: lin_1e-3\n")
    params = resolve_hyperparams("minigrid", "lstm", preset=str(preset))
    assert params == {"n_envs": 2, "n_steps": 16, "learning_rate": LinearDecay(1e-3)}
    assert resolve_hyperparams("vector", "gru", preset={"n_steps": 8}) == {"n_steps": 8}
    with pytest.raises(ValueError, match="not found"):
        resolve_hyperparams("minigrid", "lstm", preset=str(tmp_path / "missing.yml"))
    with pytest.raises(ValueError, match="unknown core 'transformer'.*register_core"):
        resolve_hyperparams("minigrid", "transformer")
    with pytest.raises(ValueError, match="activation_fn"):
        resolve_hyperparams("minigrid", "lstm", overrides={"policy_kwargs.activation_fn": "swishy"})
    relu = resolve_hyperparams("minigrid", "lstm", overrides={"policy_kwargs.activation_fn": "relu"})
    assert relu["policy_kwargs"]["activation_fn"] is th.nn.ReLU


# ------------------------------------------------------------------------------------------ agents


def test_make_agent_from_env_id_and_env_object():
    model = make_agent("rimrl/Pickup-Train-v0", core="rim", seed=0, n_steps=16, batch_size=32)
    assert isinstance(model, RecurrentPPO) and isinstance(model.policy, RIMPolicy)
    assert model.n_envs == preset_n_envs("minigrid", "rim") and model.n_steps == 16
    assert model.policy.lstm_actor.core.k == 4  # the preset projects the flat tokens (ProjectedCore)
    env = make_vec_env("CartPole-v1", n_envs=2)
    gru = make_agent(env, core="gru", **{"policy_kwargs.lstm_hidden_size": 24, "n_steps": 8})
    assert isinstance(gru.policy, GRUPolicy) and gru.n_envs == 2 and gru.policy.lstm_actor.hidden_size == 24
    gru.learn(16)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"policy_kwargs.core_kwargs.k": 7}, "k must be"),
        ({"policy_kwargs.lstm_hidden_size": 100}, "hidden_size"),
        ({"policy_kwargs.core_kwargs.cell": "rnn"}, "cell"),
        ({"learning_rat": 1e-3}, "unknown key 'learning_rat'"),
    ],
)
def test_make_agent_surfaces_core_errors(overrides, match):
    env = make_vec_env("CartPole-v1", n_envs=1)
    with pytest.raises(ValueError, match=match):
        make_agent(env, core="rim", **overrides)


# ------------------------------------------------------------------------------------------ loading


@pytest.fixture(scope="module")
def saved_cartpole(tmp_path_factory):
    path = tmp_path_factory.mktemp("agents") / "lstm_cartpole"
    model = make_agent(make_vec_env("CartPole-v1", n_envs=2, seed=0), core="lstm", seed=0, n_steps=16, batch_size=32)
    model.learn(32)
    model.save(str(path))
    return path, model


def test_load_agent_roundtrip(saved_cartpole):
    path, model = saved_cartpole
    for given in (path, str(path) + ".zip"):
        loaded = load_agent(given, env=make_vec_env("CartPole-v1", n_envs=3), device="cpu")
        assert isinstance(loaded.policy, LSTMPolicy) and loaded.n_envs == 3
    loaded = load_agent(path)
    run_dir = path.parent / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "model.zip").write_bytes((path.parent / (path.name + ".zip")).read_bytes())
    assert isinstance(load_agent(run_dir).policy, LSTMPolicy)
    obs = np.array([0.01, -0.02, 0.03, 0.04], dtype=np.float32)
    a1, s1 = model.predict(obs, episode_start=np.ones(1, bool), deterministic=True)
    a2, s2 = loaded.predict(obs, episode_start=np.ones(1, bool), deterministic=True)
    assert a1 == a2 and np.array_equal(s1[0], s2[0])


class _BoxActions(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)


def test_load_agent_space_mismatch(saved_cartpole):
    path, _ = saved_cartpole
    with pytest.raises(AgentLoadError, match="observation space mismatch") as info:
        load_agent(path, env=gym.make("MountainCar-v0"))
    assert "\n" not in str(info.value)
    with pytest.raises(AgentLoadError, match="action space mismatch"):
        load_agent(path, env=_BoxActions(gym.make("CartPole-v1")))
    assert issubclass(AgentLoadError, ValueError)


def test_load_agent_bad_files(tmp_path, saved_cartpole):
    with pytest.raises(AgentLoadError, match="no saved agent"):
        load_agent(tmp_path / "nothing_here")
    with pytest.raises(AgentLoadError, match="no saved agent"):
        load_agent(tmp_path)  # a directory without model.zip
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip archive")
    with pytest.raises(AgentLoadError, match="not a zip"):
        load_agent(junk)
    # A truncated copy of a real model.
    path, _ = saved_cartpole
    blob = (path.parent / (path.name + ".zip")).read_bytes()
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AgentLoadError):
        load_agent(truncated)
    # A valid zip that is not a model.
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(AgentLoadError, match="not a readable saved agent|does not hold"):
        load_agent(other)
    # A model of another algorithm.
    ppo_path = tmp_path / "ppo"
    PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1), n_steps=16, batch_size=16).save(str(ppo_path))
    with pytest.raises(AgentLoadError, match="does not hold a RecurrentPPO agent"):
        load_agent(ppo_path)


def test_read_yaml_mapping_errors_name_the_file(tmp_path) -> None:
    """One reader for every YAML mapping (presets, CLI configs, run configs), with the caller's error type."""
    from rimrl.agents.presets import read_yaml_mapping

    class InputError(ValueError):
        pass

    empty, broken, listing = tmp_path / "empty.yml", tmp_path / "broken.yml", tmp_path / "list.yml"
    empty.write_text("")
    broken.write_text("a: [1, 2\n")
    listing.write_text("- 1\n- 2\n")
    assert read_yaml_mapping(empty) == {}
    with pytest.raises(InputError, match=r"run config '.*missing\.yml' not found"):
        read_yaml_mapping(tmp_path / "missing.yml", "run config", InputError)
    with pytest.raises(InputError, match=r"cannot read run config '.*broken\.yml'"):
        read_yaml_mapping(broken, "run config", InputError)
    with pytest.raises(InputError, match="must hold a mapping, got list"):
        read_yaml_mapping(listing, "run config", InputError)


def test_linear_decay_is_sb3s_clamped_linear_schedule() -> None:
    import pickle

    from stable_baselines3.common.utils import LinearSchedule

    schedule = LinearDecay(2.5e-4)
    assert isinstance(schedule, LinearSchedule)
    assert schedule(1.0) == 2.5e-4 and schedule(0.5) == pytest.approx(1.25e-4) and schedule(0.0) == 0.0
    assert schedule(-0.05) == 0.0  # SB3 finishes the last rollout past total_timesteps: never negative
    assert pickle.loads(pickle.dumps(schedule)) == schedule
    old = LinearDecay.__new__(LinearDecay)  # a model saved when LinearDecay held only `initial`
    old.__setstate__({"initial": 0.1})
    assert old(0.5) == pytest.approx(0.05) and old(-1.0) == 0.0
