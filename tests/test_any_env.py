"""Issue 14 (items 2 and 4): any gymnasium env id from the CLI, ``--gym-packages``, env wrappers,
per-env-id presets, and cores of one's own (``rimrl.cores.register_core``).

``tests/toy_plugin.py`` plays the user's package: it registers the core ``toy`` and the env
``toy/CartPoleNoVel-v0``. Every core trains a few steps from the CLI on Pendulum-v1 (Box actions),
on rimrl's registered CartPoleNoVel-v1 (with its per-env preset) and on that vector env; the models are then loaded in a fresh process (pickled zip and
weights-only copy) and must predict exactly what the trained ones do.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import toy_plugin
import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env
from test_train_cli import expect_usage_error

from rimrl.agents import AgentLoadError, load_agent, make_agent, resolve_hyperparams
from rimrl.cli.common import run_dir_for
from rimrl.cli.train import CONFIG_FILE, main
from rimrl.policies import ModularRecurrentPolicy, policy_for_core

TESTS = Path(__file__).resolve().parent
CORES = ["lstm", "gru", "rim", "srm", toy_plugin.TOY_CORE]
PENDULUM, NOVEL, MEMORY = "Pendulum-v1", toy_plugin.TOY_ENV, "CartPoleNoVel-v1"
#: 64 steps = 2 rollouts of 2 envs x 16 steps, one epoch, a 24-wide core; one evaluation episode.
TINY = [
    "-n", "64", "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "--save-freq", "0", "-q",
    "--hyperparams", "n_steps=16", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=24",
]



# ----------------------------------------------------------------------------------------------
# The CLI on vector envs, every core; fresh-process loading
# ----------------------------------------------------------------------------------------------

_FRESH_LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch as th
    from rimrl.agents import AgentLoadError, load_agent

    th.set_num_threads(1)
    runs, tests, out = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    result = {"unregistered": []}
    # Before the plugin is imported, the toy core's models must be refused with one clear line.
    for run in runs:
        if "/toy/" in run:
            for safe in (False, True):
                try:
                    load_agent(run, safe=safe)
                except AgentLoadError as error:
                    result["unregistered"].append(str(error))
    sys.path.insert(0, tests)
    import toy_plugin  # noqa: F401  (registers the core, as --gym-packages would)

    for run in runs:
        obs = np.load(run + "/obs.npy")
        starts = np.load(run + "/starts.npy")
        for safe in (False, True):
            model = load_agent(run, safe=safe, device="cpu")
            state, actions = None, []
            for t in range(len(obs)):
                action, state = model.predict(obs[t], state=state, episode_start=starts[t], deterministic=True)
                actions.append(action)
            np.save(f"{run}/fresh_{'safe' if safe else 'zip'}.npy", np.stack(actions))
    with open(out, "w") as handle:
        json.dump(result, handle)
    """
)


def _observations(env_id: str, wrappers: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A fixed observation sequence with an episode start in the middle: ``(T, 2, obs)``, ``(T, 2)``."""
    from rimrl.envs import make_env

    venv = make_env(env_id, n_envs=2, seed=5, wrappers=wrappers)
    obs, observations, starts = venv.reset(), [], []
    for t in range(12):
        observations.append(obs)
        starts.append(np.array([t == 0 or t == 6, t == 0]))
        actions = np.stack([venv.action_space.sample() for _ in range(2)])
        obs, *_ = venv.step(actions)
    venv.close()
    return np.stack(observations), np.stack(starts)


def test_cli_trains_every_core_on_vector_envs_and_a_fresh_process_predicts_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    runs: list[Path] = []
    envs = (PENDULUM, NOVEL, MEMORY)
    for env_id in envs:
        argv = ["--env", env_id, "-f", str(tmp_path), "--gym-packages", "toy_plugin", *TINY]
        for core in CORES:
            assert main([*argv, "--core", core]) == 0, (env_id, core)
            runs.append(run_dir_for(tmp_path, env_id, core, 0))

    predictions: dict[Path, np.ndarray] = {}
    for run in runs:
        config = yaml.safe_load((run / CONFIG_FILE).read_text())
        assert config["gym_packages"] == ["toy_plugin"] and config["family"] == "vector"
        assert "core" not in config["hyperparams"]["policy_kwargs"]  # the policy gets it, not the preset
        metrics = json.loads((run / "final_metrics.json").read_text())
        assert metrics["num_timesteps"] == 64 and metrics["success_rate"] is None
        model = load_agent(run, device="cpu")
        assert model.policy.core_name == config["core"]
        if config["core"] == toy_plugin.TOY_CORE:
            assert type(model.policy) is ModularRecurrentPolicy
            assert isinstance(model.policy.lstm_actor, toy_plugin.ToyRNN)
        if config["env"] == PENDULUM:
            assert model.action_space.shape == (1,)  # Box actions
        obs, starts = _observations(config["env"])
        np.save(run / "obs.npy", obs)
        np.save(run / "starts.npy", starts)
        state, actions = None, []
        for t in range(len(obs)):
            action, state = model.predict(obs[t], state=state, episode_start=starts[t], deterministic=True)
            actions.append(action)
        predictions[run] = np.stack(actions)

    out = tmp_path / "fresh.json"
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_LOADER, json.dumps([str(run) for run in runs]), str(TESTS), str(out)],
        capture_output=True, text=True, timeout=600, cwd=TESTS.parent,  # this checkout's rimrl
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused = json.loads(out.read_text())["unregistered"]
    assert len(refused) == 2 * len(envs)  # the toy runs x (zip, weights-only)
    for message in refused:
        assert "core 'toy'" in message and "register_core('toy'" in message and len(message.splitlines()) == 1
    for run, actions in predictions.items():
        for kind in ("zip", "safe"):
            np.testing.assert_array_equal(np.load(run / f"fresh_{kind}.npy"), actions, err_msg=f"{run} {kind}")


def test_an_unregistered_core_in_a_saved_model_is_named(tmp_path: Path) -> None:
    """In-process variant: unregister, load, re-register."""
    from rimrl.cores import register_core, unregister_core

    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = make_agent(env, core="toy", n_steps=16, batch_size=32, n_epochs=1)
    model.save(tmp_path / "toy")
    from rimrl.agents import save_weights

    save_weights(model, tmp_path / "toy.zip")
    unregister_core("toy")
    try:
        for safe in (False, True):
            with pytest.raises(AgentLoadError, match=r"uses core 'toy', which is not registered.*register_core"):
                load_agent(tmp_path / "toy.zip", safe=safe)
    finally:
        register_core("toy", toy_plugin.make_toy, hidden_size=16)
    assert load_agent(tmp_path / "toy.zip", safe=True).policy.core_name == "toy"
    env.close()


# ----------------------------------------------------------------------------------------------
# Wrappers and --gym-packages from the command line and from files
# ----------------------------------------------------------------------------------------------


def test_env_wrapper_flag_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.syspath_prepend(str(TESTS))
    # On the command line: imported as typed.
    argv = ["--env", "CartPole-v1", "--core", "lstm", "-f", str(tmp_path / "a"), *TINY]
    assert main([*argv, "--env-wrapper", "toy_plugin:NoVelocity"]) == 0
    run = run_dir_for(tmp_path / "a", "CartPole-v1", "lstm", 0)
    config = yaml.safe_load((run / CONFIG_FILE).read_text())
    assert config["env_wrapper"] == ["toy_plugin:NoVelocity"]
    assert load_agent(run).observation_space.shape == (2,)  # the velocities are gone

    # From a file: modules outside gymnasium/rimrl need --allow-imports ...
    experiment = tmp_path / "exp.yml"
    experiment.write_text("env: CartPole-v1\ncore: gru\nenv_wrapper: toy_plugin:NoVelocity\n")
    base = ["--config", str(experiment), "-f", str(tmp_path / "b"), *TINY]
    expect_usage_error(base, capsys, "refusing to import 'toy_plugin'", "--allow-imports")
    experiment.write_text("env: CartPole-v1\ngym_packages: toy_plugin\n")
    expect_usage_error(base, capsys, "refusing to import 'toy_plugin'")
    assert not (tmp_path / "b").exists()
    experiment.write_text("env: CartPole-v1\ncore: gru\nenv_wrapper: toy_plugin:NoVelocity\n")
    assert main([*base, "--allow-imports"]) == 0
    # ... gymnasium's own wrappers do not (rl-zoo3's mapping spelling gives them arguments).
    experiment.write_text("env: CartPole-v1\ncore: gru\nseed: 1\n"
                          "env_wrapper:\n  - gymnasium.wrappers:TimeLimit: {max_episode_steps: 5}\n")
    assert main(base) == 0
    metrics = json.loads((run_dir_for(tmp_path / "b", "CartPole-v1", "gru", 1) / "final_metrics.json").read_text())
    assert metrics["mean_length"] <= 5


def test_evaluate_applies_a_runs_wrappers_and_imports_only_what_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rimrl.cli.evaluate import main as evaluate_main
    from rimrl.evaluation import EvaluationInputError
    from rimrl.evaluation.sources import resolve_source

    monkeypatch.syspath_prepend(str(TESTS))
    assert main(["--env", "CartPole-v1", "--core", "toy", "--gym-packages", "toy_plugin", "--env-wrapper",
                 "toy_plugin:NoVelocity", "-f", str(tmp_path), *TINY]) == 0
    run = run_dir_for(tmp_path, "CartPole-v1", "toy", 0)
    # toy_plugin is imported in this process (as --gym-packages does): the wrapper applies, else the
    # model's 2-number observation would not match CartPole's 4.
    out = tmp_path / "eval"
    assert evaluate_main([str(run), "--episodes", "2", "--gym-packages", "toy_plugin", "--quiet", "--gif", "1",
                          "--out", str(out)]) == 0
    assert "CartPole-v1" in capsys.readouterr().out
    assert len(list((out / "gifs").glob("*.gif"))) == 1  # single-env traces of a plain gymnasium env
    # A module nobody imported is not imported because a config.yml names it.
    config = yaml.safe_load((run / CONFIG_FILE).read_text())
    config["env_wrapper"] = ["never_imported_module_xyz:Wrapper"]
    (run / CONFIG_FILE).write_text(yaml.safe_dump(config))
    with pytest.raises(EvaluationInputError, match="pass --gym-packages never_imported_module_xyz"):
        resolve_source(run)
    assert "never_imported_module_xyz" not in sys.modules


def test_registered_core_needs_its_package_on_the_command_line(tmp_path: Path) -> None:
    """In a fresh process (as a user runs train.py) the core exists only once its module is imported;
    ``--resume`` imports the run's recorded packages itself."""
    import os

    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    argv = [sys.executable, str(TESTS.parent / "train.py"), "--core", "toy", "-f", str(tmp_path), "--env", NOVEL, *TINY]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=TESTS.parent)
    assert proc.returncode == 2, proc.stderr
    # The env id is not registered either: the core is checked first, and nothing is created.
    assert proc.stderr.strip().startswith("error: unknown core 'toy'") and "--gym-packages" in proc.stderr
    assert not any(tmp_path.iterdir())
    proc = subprocess.run([*argv, "--gym-packages", "toy_plugin"], capture_output=True, text=True, timeout=300,
                          env=env, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir_for(tmp_path, NOVEL, "toy", 0) / "model.weights.pt").is_file()
    # --resume imports the packages the run recorded (as it trusts the run's checkpoints).
    argv[argv.index("-n") + 1] = "128"
    proc = subprocess.run([*argv, "--resume"], capture_output=True, text=True, timeout=300, env=env, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run_dir_for(tmp_path, NOVEL, "toy", 0) / "final_metrics.json").read_text())["num_timesteps"] == 128


# ----------------------------------------------------------------------------------------------
# Presets: per env id, and for a registered core
# ----------------------------------------------------------------------------------------------


def test_presets_keyed_by_env_id_override_the_family_preset() -> None:
    preset = {
        "default": {"n_steps": 64, "gamma": 0.99},
        "lstm": {"policy_kwargs": {"lstm_hidden_size": 64}},
        "rim": {"policy_kwargs": {"lstm_hidden_size": 96, "core_kwargs": {"num_units": 6, "k": 4}}},
        "envs": {
            PENDULUM: {"default": {"gamma": 0.9}, "rim": {"policy_kwargs": {"core_kwargs": {"k": 3}}}},
            "CartPole-v1": {"n_steps": 32},  # flat: every core
        },
    }
    rim = resolve_hyperparams(PENDULUM, "rim", preset=preset)
    assert (rim["n_steps"], rim["gamma"], rim["policy_kwargs"]["core_kwargs"]) == (64, 0.9, {"num_units": 6, "k": 3})
    assert resolve_hyperparams("vector", "rim", preset=preset, env_id="CartPole-v1")["n_steps"] == 32
    assert resolve_hyperparams("vector", "lstm", preset=preset)["gamma"] == 0.99  # no env id: the family's
    assert resolve_hyperparams("vector", "lstm", preset=preset, overrides={"gamma": 0.5}, env_id=PENDULUM)["gamma"] == 0.5
    # A registered core borrows its preset core's section (width, PPO settings), not its core_kwargs ...
    toy = resolve_hyperparams("vector", "toy")
    assert toy["policy_kwargs"]["lstm_hidden_size"] == 64 and "core_kwargs" not in toy["policy_kwargs"]
    # ... unless the file has a section of its own, whose core_kwargs are checked against the factory.
    own = {**preset, "toy": {"policy_kwargs": {"lstm_hidden_size": 8, "core_kwargs": {"scale": 0.5}}}}
    assert resolve_hyperparams("vector", "toy", preset=own)["policy_kwargs"]["lstm_hidden_size"] == 8
    with pytest.raises(ValueError, match="unknown key 'num_units'.*allowed keys: scale"):
        resolve_hyperparams("vector", "toy", overrides={"policy_kwargs.core_kwargs.num_units": 3})
    with pytest.raises(ValueError, match="unknown section 'mycore'.*register_core"):
        resolve_hyperparams("vector", "lstm", preset={**preset, "mycore": {}})


def test_registered_core_in_the_policy_and_make_agent() -> None:
    assert policy_for_core("rim")[1] == {} and policy_for_core("toy") == (ModularRecurrentPolicy, {"core": "toy"})
    env = make_vec_env(PENDULUM, n_envs=2, seed=0)
    model = RecurrentPPO(ModularRecurrentPolicy, env, n_steps=16, batch_size=32, n_epochs=1,
                         policy_kwargs={"core": "toy", "core_kwargs": {"scale": 0.5}})
    assert model.policy.lstm_actor.scale == 0.5 and model.policy.lstm_output_dim == 16  # the registered width
    model.learn(32)
    with pytest.raises(ValueError, match="core_input for core 'toy' must be one of \\['vector'\\]"):
        RecurrentPPO(ModularRecurrentPolicy, env, policy_kwargs={"core": "toy", "core_input": "tokens"})
    with pytest.raises(ValueError, match="unknown core 'nope'"):
        make_agent(env, core="nope")
    env.close()
