"""rimrl-train on Atari: a tiny RIM run on ale-py's vector env writes a loadable model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from rimrl.agents import load_agent
from rimrl.cli.common import run_dir_for
from rimrl.cli.train import main


def test_tiny_breakout_run_with_rim(tmp_path: Path) -> None:
    argv = ["--env", "Breakout", "--core", "rim", "--vec-env", "ale", "-n", "256", "--n-envs", "2", "-f", str(tmp_path),
            "--eval-freq", "0", "--eval-episodes", "1", "--save-freq", "128", "-q",
            "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=24"]
    assert main(argv) == 0
    run = run_dir_for(tmp_path, "Breakout", "rim", 0)
    assert run.name == "seed0" and run.parent.parent.name == "Breakout"
    config = yaml.safe_load((run / "config.yml").read_text())
    assert (config["family"], config["vec_env"], config["core"]) == ("atari", "ale", "rim")
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["success_rate"] is None and metrics["n_episodes"] == 1 and metrics["mean_return"] >= 0
    model = load_agent(run / "model.zip")
    assert model.num_timesteps == 256 and model.observation_space.shape == (1, 84, 84)
    rows = (run / "monitor" / "session0.monitor.csv").read_text().splitlines()
    assert rows[1] == "r,l,t"


def test_training_time_evaluation_plays_as_evaluate_py(tmp_path: Path) -> None:
    """Issue 15: the evaluation that picks best_model.zip samples on Atari and presses FIRE after a
    life loss, even when training itself uses episodic life."""
    from rimrl.cli.train import build_parser, build_trials, make_eval_env, resolve_trial

    argv = ["--env", "Breakout", "--core", "lstm", "-f", str(tmp_path), "-q", "--env-kwargs", "episodic_life=true"]
    (options,) = build_trials(build_parser().parse_args(argv), argv)
    trial = resolve_trial(options)
    assert trial.options.eval_deterministic is False
    venv = make_eval_env(trial)
    try:
        assert venv._fire_action == venv.get_action_meanings().index("FIRE")
        assert venv.episodic_life is False and venv.clip_reward is False
    finally:
        venv.close()
