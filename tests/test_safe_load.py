"""Pickle-free saving and loading (``rimrl.agents.safe``), evaluate.py's trust rule, import allow-list.

A ``model.zip`` is cloudpickle inside: these tests build a zip whose ``data`` carries a payload
that creates a marker file when unpickled, and check that the safe paths never create it. Models
are tiny (16 hidden units, a few dozen env steps), so the module runs in seconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest
import torch
import yaml
from gymnasium import spaces
from stable_baselines3.common.save_util import load_from_zip_file

import rimrl
from rimrl.agents import AgentLoadError, UnsafeLoadWarning, load_agent, make_agent, resolve_hyperparams
from rimrl.agents.safe import space_from_json, space_to_json, weights_paths
from rimrl.agents.training import CheckpointManager, save_model_atomic
from rimrl.cli.evaluate import main as evaluate_main
from rimrl.cli.train import main as train_main
from rimrl.envs import make_env

torch.set_num_threads(1)

ENV = "rimrl/Pickup-Train-v0"
TINY = {
    "n_steps": 16,
    "batch_size": 16,
    "n_epochs": 1,
    "learning_rate": "lin_3e-4",
    "policy_kwargs.lstm_hidden_size": 16,
    "policy_kwargs.net_arch": [16],
    "policy_kwargs.features_extractor_kwargs.token_dim": 8,
}
CORE_KWARGS = {
    "lstm": {"policy_kwargs.core_input_projection": 16},
    "gru": {"policy_kwargs.core_input_projection": 16},
    "rim": {"policy_kwargs.core_kwargs.num_units": 4, "policy_kwargs.core_kwargs.k": 2,
            "policy_kwargs.core_input_projection": 16},
    "srm": {"policy_kwargs.core_kwargs.num_modules": 4},
}
SHORT = ["--episodes", "1", "--n-envs", "1", "--variants", "train", "--env-kwarg", "max_steps=4", "--quiet"]


def _tiny_model(core: str = "lstm", learn: int = 32):
    env = make_env(ENV, n_envs=2, seed=0)
    model = make_agent(env, core, seed=0, **TINY, **CORE_KWARGS[core])
    if learn:
        model.learn(learn)  # weights move away from their initialisation; Adam gets a state
    return model


class _CreatesFile:
    """Pickles as ``open(path, "w")``: unpickling it creates ``path`` (stands in for any code)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _poison_zip(source: Path, target: Path, marker: Path) -> Path:
    """Copy SB3 zip ``source`` to ``target`` with a cloudpickle payload in ``data``, stored the way
    SB3 stores any object it cannot write as JSON (base64 under ``:serialized:``)."""
    payload = base64.b64encode(cloudpickle.dumps(_CreatesFile(marker))).decode()
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as poisoned:
        for item in original.infolist():
            content = original.read(item.filename)
            if item.filename == "data":
                data = json.loads(content)
                data["learning_rate"] = {":type:": "<class 'function'>", ":serialized:": payload}
                content = json.dumps(data).encode()
            poisoned.writestr(item, content)
    return target


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if not line.startswith("warning: ")]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "Traceback" not in errors[0], lines
    return errors[0]


# ----------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("core", ["rim", "srm", "lstm", "gru"])
def test_safe_round_trip_predicts_like_the_pickled_model(core: str, tmp_path: Path) -> None:
    model = _tiny_model(core)
    save_model_atomic(model, tmp_path / "model.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.spec.json", "model.weights.pt", "model.zip"]
    spec = json.loads((tmp_path / "model.spec.json").read_text())
    assert (spec["policy"], spec["core"], spec["n_envs"], spec["num_timesteps"]) == (core, core, 2, 32)
    assert spec["hyperparams"]["learning_rate"] == "lin_0.0003" and spec["hyperparams"]["clip_range"] == 0.2

    (tmp_path / "model.zip").write_bytes(b"not even a zip")  # safe loading never opens it
    safe = load_agent(tmp_path, safe=True, device="cpu")
    assert type(safe.policy) is type(model.policy) and safe.num_timesteps == 32
    for key, tensor in model.policy.state_dict().items():
        assert torch.equal(tensor, safe.policy.state_dict()[key]), key
    saved_optimizer, loaded_optimizer = model.policy.optimizer.state_dict(), safe.policy.optimizer.state_dict()
    assert saved_optimizer["param_groups"] == loaded_optimizer["param_groups"]
    assert all(torch.equal(saved_optimizer["state"][0][k], loaded_optimizer["state"][0][k]) for k in ("exp_avg", "exp_avg_sq"))
    assert safe.learning_rate(0.5) == model.learning_rate(0.5) and safe.clip_range(1.0) == 0.2

    env = make_env(ENV, n_envs=2, seed=3)
    obs = env.reset()
    states = {"pickled": None, "safe": None}
    starts = np.ones(2, dtype=bool)
    for _ in range(6):  # several steps: the recurrent state must evolve identically
        actions = {}
        for name, agent in (("pickled", model), ("safe", safe)):
            actions[name], states[name] = agent.predict(obs, state=states[name], episode_start=starts, deterministic=True)
        assert np.array_equal(actions["pickled"], actions["safe"])
        assert all(np.array_equal(a, b) for a, b in zip(states["pickled"], states["safe"], strict=True))
        obs, _, dones, _ = env.step(actions["safe"])
        starts = dones
    env.close()


def test_safe_load_checks_the_env_and_can_train_on(tmp_path: Path) -> None:
    save_model_atomic(_tiny_model("gru"), tmp_path / "agent.zip")
    model = load_agent(tmp_path / "agent.zip", env=ENV, safe=True, device="cpu")
    model.learn(32, reset_num_timesteps=False)
    assert model.num_timesteps == 64
    with pytest.raises(AgentLoadError, match="observation space mismatch"):
        load_agent(tmp_path / "agent.weights.pt", env="MiniGrid-Empty-5x5-v0", safe=True)


def test_spaces_round_trip_through_json() -> None:
    for space in (
        spaces.Box(-np.inf, np.inf, (3,), np.float32),
        spaces.Box(np.array([0.0, -1.5]), np.array([1.0, 2.5]), dtype=np.float64),
        spaces.Box(0, 255, (4, 84, 84), np.uint8),
        spaces.Discrete(7, start=1),
        spaces.MultiDiscrete([3, 4]),
        spaces.MultiBinary(5),
        spaces.Dict({"grid": spaces.Box(0, 10, (7, 7, 3), np.uint8), "direction": spaces.Discrete(4)}),
        spaces.Tuple([spaces.Discrete(2), spaces.Box(0, 1, (2,), np.float32)]),
    ):
        assert space_from_json(json.loads(json.dumps(space_to_json(space)))) == space


def test_model_without_a_json_spec_gets_no_weights_files(tmp_path: Path) -> None:
    model = make_agent(make_env(ENV, n_envs=1, seed=0), "lstm", seed=0, **{**TINY, "learning_rate": lambda p: 1e-3 * p})
    weights, spec = weights_paths(tmp_path / "model.zip")
    spec.write_text("{}")  # stale: must not survive beside the new zip
    with pytest.warns(UserWarning, match="no weights-only copy of model.zip: learning_rate"):
        save_model_atomic(model, tmp_path / "model.zip")
    assert (tmp_path / "model.zip").is_file() and not weights.exists() and not spec.exists()


def test_checkpoints_keep_their_weights_files_and_prune_them_together(tmp_path: Path) -> None:
    model = _tiny_model("lstm", learn=0)
    manager = CheckpointManager(tmp_path, keep=2)
    for steps in (10, 20, 30):
        model.num_timesteps = steps
        manager.save(model)
    assert sorted(p.name for p in manager.folder.iterdir()) == [
        f"model_{n}_steps.{ext}" for n in (20, 30) for ext in ("spec.json", "weights.pt", "zip")
    ]


# ----------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``clean``: a model saved by rimrl (zip + weights pair); ``bare``: a poisoned zip alone;
    ``paired``: the poisoned zip beside the clean weights pair; ``run``: the poisoned zip in a run
    directory; ``marker``: what the payload creates."""
    root = tmp_path_factory.mktemp("poisoned")
    marker = root / "PWNED"
    clean = root / "clean"
    save_model_atomic(_tiny_model("lstm"), clean / "model.zip")
    paired, run = root / "paired", root / "runs" / "rimrl-Pickup-Train-v0" / "lstm" / "seed0"
    for folder in (root / "bare", paired, run):
        folder.mkdir(parents=True)
    bare = _poison_zip(clean / "model.zip", root / "bare" / "agent.zip", marker)
    _poison_zip(clean / "model.zip", paired / "model.zip", marker)
    for file in weights_paths(clean / "model.zip"):
        (paired / file.name).write_bytes(file.read_bytes())
    _poison_zip(clean / "model.zip", run / "model.zip", marker)
    (run / "config.yml").write_text(yaml.safe_dump({"env": ENV, "core": "lstm", "seed": 0}))
    return {"clean": clean, "bare": bare, "paired": paired, "run": run, "marker": marker}


def test_the_poisoned_zip_really_runs_code_when_unpickled(poisoned: dict[str, Path]) -> None:
    # The premise of the tests below: without them, loading this zip creates the marker.
    marker = poisoned["marker"]
    assert not marker.exists()
    load_from_zip_file(poisoned["bare"], load_data=True)
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("flag", [[], ["--safe"]])
def test_evaluate_refuses_a_bare_poisoned_zip(
    flag: list[str], poisoned: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(poisoned["bare"]), "--env", ENV, *SHORT, *flag])
    assert exit_info.value.code == 2
    error = _error_line(capsys)
    assert ("--trust" in error) if not flag else ("no weights-only copy" in error), error
    assert not poisoned["marker"].exists()


def test_evaluate_refuses_a_poisoned_run_directory_with_safe(
    poisoned: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(poisoned["run"]), *SHORT, "--safe"])
    assert exit_info.value.code == 2
    assert "no weights-only copy" in _error_line(capsys)
    assert not poisoned["marker"].exists()


def test_evaluate_uses_the_weights_files_and_never_the_zip(poisoned: dict[str, Path], tmp_path: Path) -> None:
    assert evaluate_main([str(poisoned["paired"] / "model.zip"), "--env", ENV, *SHORT, "--out", str(tmp_path)]) == 0
    assert not poisoned["marker"].exists()
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and ",lstm," in rows[1]


def test_weights_file_with_a_pickled_object_is_refused(poisoned: dict[str, Path], tmp_path: Path) -> None:
    weights, spec = weights_paths(tmp_path / "model.zip")
    payload = torch.load(weights_paths(poisoned["clean"])[0], weights_only=True)
    payload["extra"] = _CreatesFile(poisoned["marker"])
    torch.save(payload, weights)
    spec.write_text(weights_paths(poisoned["clean"])[1].read_text())
    with pytest.raises(AgentLoadError, match="does not match"):  # the spec records the weights' SHA-256
        load_agent(tmp_path / "model.zip", safe=True)
    data = json.loads(spec.read_text())
    data["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    spec.write_text(json.dumps(data))
    with pytest.raises(AgentLoadError, match=r"refusing .*weights_only=True.*Unsupported global") as error:
        load_agent(tmp_path / "model.zip", safe=True)
    assert "\n" not in str(error.value)
    assert not poisoned["marker"].exists()


def test_default_load_rule(poisoned: dict[str, Path], tmp_path: Path) -> None:
    # rimrl.load's default: weights files when present; a bare zip without them is refused ...
    assert rimrl.load(str(poisoned["paired"])).policy.core_name == "lstm"
    with pytest.raises(AgentLoadError, match="refusing to unpickle .*--trust"):
        rimrl.load(str(poisoned["bare"]))
    assert not poisoned["marker"].exists()
    # ... and a run directory's zip without them is unpickled with a warning (the user's own runs).
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yml").write_text("env: rimrl/Pickup-Train-v0\n")
    _tiny_model("lstm", learn=0).save(run / "model.zip")
    with pytest.warns(UnsafeLoadWarning, match="unpickling"):
        rimrl.load(str(run))


# ----------------------------------------------------------------------------------------------
# Import allow-list
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def outside_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``shady_opt.Opt`` (an Adam) importable from ``tmp_path``; importing it creates ``IMPORTED``."""
    marker = tmp_path / "IMPORTED"
    (tmp_path / "shady_opt.py").write_text(
        f"import pathlib\nimport torch\npathlib.Path({str(marker)!r}).touch()\n\n\nclass Opt(torch.optim.Adam):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shady_opt", raising=False)
    return marker


def test_class_imports_are_allow_listed(outside_module: Path) -> None:
    overrides = {"policy_kwargs.optimizer_class": "shady_opt:Opt"}
    with pytest.raises(ValueError, match=r"refusing to import 'shady_opt' .*--allow-imports"):
        resolve_hyperparams(ENV, "lstm", overrides=overrides)
    assert not outside_module.exists() and "shady_opt" not in sys.modules
    allowed = resolve_hyperparams(ENV, "lstm", overrides={"policy_kwargs.optimizer_class": "torch.optim:RMSprop"})
    assert allowed["policy_kwargs"]["optimizer_class"] is torch.optim.RMSprop
    imported = resolve_hyperparams(ENV, "lstm", overrides=overrides, allow_imports=True)
    assert imported["policy_kwargs"]["optimizer_class"].__name__ == "Opt" and outside_module.exists()


def test_train_needs_allow_imports_for_other_modules(
    outside_module: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--core", "lstm", "-f", str(tmp_path / "runs"), "-n", "32", "--n-envs", "2", "--eval-freq", "0",
            "--eval-episodes", "1", "--save-freq", "0", "-q", "--hyperparams", "n_steps=16", "batch_size=16",
            "n_epochs=1", "policy_kwargs.lstm_hidden_size=8", "policy_kwargs.optimizer_class=shady_opt:Opt"]
    with pytest.raises(SystemExit) as exit_info:
        train_main(argv)
    assert exit_info.value.code == 2
    assert "--allow-imports" in _error_line(capsys) and not outside_module.exists()

    assert train_main([*argv, "--allow-imports"]) == 0
    run = tmp_path / "runs" / "rimrl-Pickup-Train-v0" / "lstm" / "seed0"
    assert outside_module.exists() and (run / "model.weights.pt").is_file()
    spec = json.loads((run / "model.spec.json").read_text())
    assert spec["policy_kwargs"]["optimizer_class"] == "shady_opt:Opt"
    with pytest.raises(AgentLoadError, match="refusing to import 'shady_opt'"):  # safe loading never widens the list
        load_agent(run, safe=True)
