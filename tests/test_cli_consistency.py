"""The two CLIs agree with each other and say short, true things (issue 15, "small mismatches").

The CLIs name themselves as they were invoked; ``--env-kwargs`` is spelled the same in both; a
checkpoint inside a run directory is evaluable without ``--env``; ``config.yml`` records the
device that ``auto`` became; a space mismatch is one short line; rl-zoo3's Python-valued
``--hyperparams`` get a clear message instead of a confusing type error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gymnasium as gym
import pytest
import yaml
from test_train_cli import TINY, expect_usage_error, run_dir

from rimrl.agents import AgentLoadError, load_agent
from rimrl.agents.factory import describe_space
from rimrl.cli import evaluate as evaluate_cli
from rimrl.cli import train as train_cli
from rimrl.envs import make_env
from rimrl.evaluation.sources import resolve_source


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert train_cli.main(["--core", "gru", "-f", str(root), *TINY]) == 0
    return run_dir(root, "gru")


@pytest.mark.parametrize(
    ("module", "invoked", "expected"),
    [
        (train_cli, "train.py", "train.py"),
        (train_cli, "/usr/bin/rimrl-train", "rimrl-train"),
        (evaluate_cli, "evaluate.py", "evaluate.py"),
        (evaluate_cli, "/usr/bin/rimrl-evaluate", "rimrl-evaluate"),
    ],
)
def test_each_cli_names_itself_as_invoked(module: object, invoked: str, expected: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [invoked])
    assert module.build_parser().prog == expected  # type: ignore[attr-defined]


def test_evaluate_takes_env_kwargs_like_train() -> None:
    parser = evaluate_cli.build_parser()
    args = parser.parse_args(["RUN", "--env-kwargs", "max_steps=12", "see_through_walls=true"])
    assert args.env_kwargs == ["max_steps=12", "see_through_walls=true"]
    assert parser.parse_args(["RUN", "--env-kwarg", "max_steps=12"]).env_kwargs == ["max_steps=12"]  # old spelling


def test_a_checkpoint_in_a_run_directory_needs_no_env(trained: Path) -> None:
    checkpoint = sorted((trained / "checkpoints").glob("model_*_steps.zip"))[-1]
    source = resolve_source(checkpoint)
    assert source.env_id == "rimrl/Pickup-Train-v0" and source.seed == 0


def test_config_records_the_resolved_device(trained: Path) -> None:
    config = yaml.safe_load((trained / "config.yml").read_text())
    assert config["device"] == "auto" and config["resolved_device"] == "cpu"
    # ... and a run's config.yml still works as a --config file
    args = train_cli.build_parser().parse_args(["--config", str(trained / "config.yml")])
    assert train_cli.build_trials(args, [])[0].core == "gru"


def test_a_space_mismatch_is_one_short_line(trained: Path) -> None:
    minigrid = make_env("rimrl/Pickup-Train-v0", n_envs=1).observation_space
    assert len(describe_space(minigrid)) < 150 and "\n" not in describe_space(minigrid)
    with pytest.raises(AgentLoadError) as info:
        load_agent(trained / "model.zip", env=make_env("MiniGrid-Empty-5x5-v0", n_envs=1))
    message = str(info.value)
    assert "observation space mismatch" in message or "action space mismatch" in message
    assert len(message) < 400 and "\n" not in message, message
    assert describe_space(gym.spaces.Discrete(3)) == "Discrete(3)"


def test_python_valued_hyperparams_get_a_yaml_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(["-f", str(tmp_path), "--hyperparams", "policy_kwargs=dict(net_arch=[64])"], capsys,
                       "values are YAML, not Python", "policy_kwargs.net_arch=")


def test_the_readme_snippet_sets_one_torch_thread_before_training() -> None:
    """The README's Python example must run as fast as train.py: torch's default of one thread per
    core made it ~18x slower on a 2-core machine (issue 15)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in readme.split("```python")[1:]]
    training = [block for block in blocks if "RecurrentPPO(" in block and ".learn(" in block]
    assert training, "the README has no Python training example"
    for block in training:
        assert "torch.set_num_threads(1)" in block, block
        assert block.index("torch.set_num_threads(1)") < block.index(".learn("), block
