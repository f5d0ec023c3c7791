"""rimrl-train: tiny end-to-end runs per core, the run directory, config round trip, bad input, NaN guard.

Runs are in-process (``main(argv)``) with tiny budgets so the file takes seconds, not minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rimrl.agents import load_agent
from rimrl.cli.common import fail, main_guard, parse_key_values, parse_scalar, run_dir_for
from rimrl.cli.train import CONFIG_FILE, list_checkpoints, main

ROOT = Path(__file__).resolve().parents[1]
ENV = "rimrl/Pickup-Train-v0"
#: 256 steps = 4 rollouts of 2 envs x 32 steps; one epoch; a 24-wide core (6 RIM/SRM units of 4).
TINY = [
    "-n", "256", "--n-envs", "2", "--eval-freq", "128", "--eval-episodes", "2", "--save-freq", "128", "-q",
    "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=24",
]
REQUIRED_CONFIG_KEYS = {"env", "core", "seed", "n_timesteps", "n_envs", "vec_env", "preset", "hyperparams"}


def run_dir(root: Path, core: str, seed: int = 0, env: str = ENV) -> Path:
    return run_dir_for(root, env, core, seed)


def assert_one_line_error(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: "), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def expect_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return assert_one_line_error(capsys, *fragments)


# ----------------------------------------------------------------------------------------------
# End to end
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("core", ["rim", "srm", "lstm", "gru"])
def test_tiny_run_writes_the_whole_run_directory(core: str, tmp_path: Path) -> None:
    assert main(["--core", core, "-f", str(tmp_path), *TINY]) == 0
    run = run_dir(tmp_path, core)
    for name in ("model.zip", "best_model.zip", "config.yml", "final_metrics.json", "evaluations.npz"):
        assert (run / name).is_file(), name
    assert [steps for steps, _ in list_checkpoints(run)] == [256, 128]
    assert list((run / "monitor").glob("*.monitor.csv"))
    events = list((run / "tb").rglob("events.out.tfevents.*"))
    assert events
    # RIM and SRM runs log their units' activity (rimrl.agents.activity) beside SB3's scalars.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0]))
    accumulator.Reload()
    core_tags = {tag for tag in accumulator.Tags()["scalars"] if tag.startswith("core/")}
    assert ("core/active_unit0" in core_tags and "core/active_fraction" in core_tags) == (core in ("rim", "srm"))

    config = yaml.safe_load((run / CONFIG_FILE).read_text())
    assert REQUIRED_CONFIG_KEYS <= set(config)
    assert (config["env"], config["core"], config["seed"], config["n_envs"]) == (ENV, core, 0, 2)
    assert config["hyperparams"]["n_steps"] == 32
    assert config["hyperparams"]["policy_kwargs"]["lstm_hidden_size"] == 24
    assert config["versions"]["torch"] and "commit" in config["git"] and "--core" in config["command"]

    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["num_timesteps"] == 256 and metrics["n_episodes"] == 2
    assert 0.0 <= metrics["success_rate"] <= 1.0 and np.isfinite(metrics["mean_return"])

    model = load_agent(run / "model.zip")
    assert model.num_timesteps == 256
    assert type(model.policy).__name__.lower().startswith(core)
    load_agent(run / "best_model.zip")


def test_eval_variants_are_evaluated_logged_and_kept_apart_from_best_model(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["--core", "lstm", "-f", str(tmp_path), *TINY, "--eval-variants", "all"]) == 0
    run = run_dir(tmp_path, "lstm")
    assert yaml.safe_load((run / CONFIG_FILE).read_text())["eval_variants"] == ["all"]
    train = np.load(run / "evaluations.npz")
    for variant in ("more", "novel", "more+novel"):
        data = np.load(run / f"evaluations_{variant}.npz")
        assert data["timesteps"].tolist() == train["timesteps"].tolist() == [128, 256]
        assert data["successes"].shape == (2, 2)
    events = EventAccumulator(str(next((run / "tb").iterdir())))
    events.Reload()
    assert {"eval_more/success_rate", "eval_novel/success_rate", "eval_more+novel/success_rate"} <= set(
        events.Tags()["scalars"])


def test_tensorboard_eval_points_land_at_the_evaluation_step(tmp_path: Path) -> None:
    """Issue 15: eval/* used to reach TensorBoard one rollout late (evaluations.npz at 128, TB at
    192) and the final update's train/* values were written a second time at the last step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["--core", "lstm", "-f", str(tmp_path), *TINY]) == 0
    run = run_dir(tmp_path, "lstm")
    events = EventAccumulator(str(next((run / "tb").rglob("events.out.tfevents.*"))))
    events.Reload()
    steps = {tag: [event.step for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    evaluated = np.load(run / "evaluations.npz")["timesteps"].tolist()
    assert evaluated == [128, 256]
    for tag in ("eval/success_rate", "eval/mean_reward", "eval/mean_ep_length"):
        assert steps[tag] == evaluated, tag
    # SB3's own points are where they were: rollout/* at every rollout, train/* at the rollout after
    # the update, and no tag has two points at one step.
    assert steps["rollout/ep_rew_mean"] == steps["time/fps"] == [64, 128, 192, 256]
    assert steps["train/loss"] == [128, 192, 256]
    for tag, points in steps.items():
        assert points == sorted(set(points)), tag


def _resolved_mode(argv: list[str], tmp_path: Path) -> bool | None:
    """The training-time evaluation mode resolve_trial settles on for ``argv``."""
    from rimrl.cli.train import build_parser, build_trials, resolve_trial

    full = ["-f", str(tmp_path), "-q", *argv]
    (trial,) = build_trials(build_parser().parse_args(full), full)
    return resolve_trial(trial).options.eval_deterministic


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),  # a rimrl suite: sampled
        (["--env", "MiniGrid-Empty-5x5-v0"], False),
        (["--env", "Breakout"], False),
        (["--deterministic"], True),
        (["--deterministic-eval"], True),  # the old spelling still works
        (["--env", "Breakout", "--deterministic"], True),
        (["--stochastic"], False),
    ],
)
def test_eval_action_mode_follows_the_env_family_unless_a_flag_says(
    argv: list[str], expected: bool, tmp_path: Path
) -> None:
    assert _resolved_mode(argv, tmp_path) is expected


def test_eval_action_mode_flags_exclude_each_other(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(["-f", str(tmp_path), "--deterministic", "--stochastic"], capsys, "not allowed with")


def test_resume_keeps_the_runs_eval_action_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_dir(tmp_path, "rim")
    run.mkdir(parents=True)
    (run / CONFIG_FILE).write_text(yaml.safe_dump({"env": ENV, "core": "rim", "seed": 0, "eval_deterministic": True}))
    assert _resolved_mode(["--resume"], tmp_path) is True  # not the family's default (sampled)
    capsys.readouterr()
    from rimrl.cli.train import build_parser, build_trials, resolve_trial

    argv = ["-f", str(tmp_path), "--resume", "--stochastic"]
    (trial,) = build_trials(build_parser().parse_args(argv), argv)
    notes: list[str] = []
    assert resolve_trial(trial, say=notes.append).options.eval_deterministic is True
    assert any("keeps the run's eval_deterministic=True" in note for note in notes), notes


def test_the_resolved_eval_action_mode_is_recorded(tmp_path: Path) -> None:
    assert main(["--core", "gru", "-f", str(tmp_path), *TINY, "-n", "64", "--eval-freq", "0"]) == 0
    run = run_dir(tmp_path, "gru")
    assert yaml.safe_load((run / CONFIG_FILE).read_text())["eval_deterministic"] is False
    assert json.loads((run / "final_metrics.json").read_text())["deterministic"] is False


def test_config_file_reproduces_a_run_and_flags_override_it(tmp_path: Path) -> None:
    assert main(["--core", "gru", "-f", str(tmp_path / "a"), *TINY, "policy_kwargs.core_input_projection=16"]) == 0
    first = yaml.safe_load((run_dir(tmp_path / "a", "gru") / CONFIG_FILE).read_text())
    argv = ["--config", str(run_dir(tmp_path / "a", "gru") / CONFIG_FILE), "-f", str(tmp_path / "b"), "--seed", "3",
            "-n", "64", "--eval-freq", "0", "-q"]
    assert main(argv) == 0
    second = yaml.safe_load((run_dir(tmp_path / "b", "gru", seed=3) / CONFIG_FILE).read_text())
    assert second["hyperparams"] == first["hyperparams"]
    assert (second["seed"], second["n_timesteps"], second["n_envs"]) == (3, 64, 2)


def test_existing_run_dir_is_refused_then_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = run_dir(tmp_path, "lstm")
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("keep me")
    argv = ["--core", "lstm", "-f", str(tmp_path), *TINY]
    expect_usage_error(argv, capsys, "already exists", "--resume", "--overwrite")
    assert (run / "notes.txt").is_file()
    assert main([*argv, "--overwrite", "-n", "64", "--eval-freq", "0"]) == 0
    assert not (run / "notes.txt").exists() and (run / "model.zip").is_file()


# ----------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback, nothing left on disk
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--env", "NoSuchEnv-v0"], ["unknown env id 'NoSuchEnv-v0'", "--gym-packages"]),
        (["--env", "CartPol-v1"], ["unknown env id 'CartPol-v1'; did you mean CartPole-v1?"]),
        (["--core", "transformer"], ["unknown core 'transformer'", "lstm, gru, rim, srm", "register_core"]),
        (["--gym-packages", "no_such_package_xyz"], ["cannot import gym package 'no_such_package_xyz'"]),
        (["--env", "CartPole-v1", "--env-wrapper", "gymnasium.wrappers:NoSuchWrapper"], ["NoSuchWrapper"]),
        (["--env", "CartPole-v1", "--env-wrapper", "gymnasium.wrappers:TimeLimit"], ["cannot make 'CartPole-v1'",
                                                                                    "max_episode_steps"]),
        (["--env", "Pendulum-v1", "--env-kwargs", "g=abc"], ["cannot make 'Pendulum-v1'", "--env-kwargs"]),
        (["--hyperparams", "n_stepz=64"], ["unknown key 'n_stepz'"]),
        (["--hyperparams", "n_steps=abc"], ["n_steps", "wrong type", "int"]),
        (["--hyperparams", "policy_kwargs.core_kwargs.k=2.5"], ["core_kwargs.k", "wrong type"]),
        (["--hyperparams", "policy_kwargs.core_kwargs.k=7"], ["k must be an integer in [1, num_units=6]"]),
        (["--core", "lstm", "--hyperparams", "policy_kwargs.core_kwargs.k=3"], ["unknown key 'k'"]),
        (["--hyperparams", "n_steps"], ["key=value"]),
        (["-n", "lots"], ["-n/--n-timesteps", "lots"]),
        (["--vec-env", "ale"], ["only for Atari"]),
        (["--resume", "--overwrite"], ["exclude each other"]),
        (["--config", "missing.yml"], ["not found"]),
        (["--eval-variants", "weird"], ["unknown variant 'weird'", "more+novel"]),
        (["--env", "MiniGrid-Empty-5x5-v0", "--eval-variants", "more"], ["needs a distractor-suite env"]),
    ],
)
def test_bad_input_exits_2_with_one_line(
    extra: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expect_usage_error(["-f", str(tmp_path), "-n", "64", "-q", *extra], capsys, *fragments)
    assert not any(tmp_path.rglob("*.yml")), "a rejected run must leave no run directory behind"


def test_bad_config_file_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "exp.yml"
    path.write_text("core: lstm\nlearning_rate: 0.1\n")
    expect_usage_error(["--config", str(path), "-f", str(tmp_path)], capsys, "unknown key 'learning_rate'")


def test_bad_input_from_the_real_entry_point_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-f", str(tmp_path), "--hyperparams", "policy_kwargs.core_kwargs.k=9"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# NaN guard
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("when", ["after_update", "before_update"])
def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On the 3rd update the weights turn NaN (after it, or before it so the loss is NaN mid-update)."""
    from sb3_contrib import RecurrentPPO

    original = RecurrentPPO.train
    calls = {"n": 0}

    def poison(model: RecurrentPPO) -> None:
        with torch.no_grad():
            for parameter in model.policy.parameters():
                parameter.fill_(float("nan"))

    def train(self: RecurrentPPO) -> None:
        calls["n"] += 1
        if calls["n"] == 3 and when == "before_update":
            poison(self)
        original(self)
        if calls["n"] == 3 and when == "after_update":
            poison(self)

    monkeypatch.setattr(RecurrentPPO, "train", train)
    argv = ["--core", "lstm", "-f", str(tmp_path), *TINY, "--save-freq", "64", "-n", "1024"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "error: training stopped" in err and "non-finite" in err and "model_128_steps.zip" in err, err
    run = run_dir(tmp_path, "lstm")
    assert not (run / "model.zip").exists() and not (run / "final_metrics.json").exists()
    steps = [s for s, _ in list_checkpoints(run)]
    assert steps == [128, 64]
    model = load_agent(run / "checkpoints" / "model_128_steps.zip")
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


# ----------------------------------------------------------------------------------------------
# Helpers in rimrl.cli.common (shared with the evaluate CLI)
# ----------------------------------------------------------------------------------------------


def test_common_helpers(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_scalar("1e-3") == pytest.approx(1e-3) and parse_scalar("3") == 3 and parse_scalar("true") is True
    assert parse_scalar("[64, 64]") == [64, 64] and parse_scalar("lin_3e-4") == "lin_3e-4"
    assert parse_key_values(["a.b=2", "c={x: 1}"]) == {"a.b": 2, "c": {"x": 1}}
    with pytest.raises(SystemExit) as exit_info:
        fail("something\nbroke")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: something broke\n"

    @main_guard(expected=(ValueError,))
    def cli(argv: list[str]) -> int:
        raise ValueError("bad value")

    with pytest.raises(SystemExit):
        cli([])
    assert capsys.readouterr().err == "error: bad value\n"
