"""End-to-end tests of the evaluation CLI on tiny models trained here (a few hundred steps).

The fixtures build RIM, SRM and two LSTM seeds with rimrl's policies via ``make_agent``, save them
into run directories laid out as ``train.py`` writes them, and evaluate them once over two
variants; the tests then read the files written. Episodes are cut short (``max_steps``) and few, so
the whole module runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from stable_baselines3.common.vec_env import DummyVecEnv

from rimrl.agents import load_agent, make_agent
from rimrl.cli.evaluate import main
from rimrl.envs import make_env, make_minigrid_env
from rimrl.evaluation import RESULT_COLUMNS, EvaluationOptions, evaluate, run_episodes

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TRAIN_ENV = "rimrl/Pickup-Train-v0"
SHORT = ["--env-kwarg", "max_steps=12"]  # same spaces, much shorter episodes
TINY = {
    "n_steps": 32,
    "batch_size": 32,
    "n_epochs": 1,
    "policy_kwargs.lstm_hidden_size": 16,
    "policy_kwargs.net_arch": [16],
    "policy_kwargs.features_extractor_kwargs.token_dim": 8,
}
CORE_KWARGS = {
    "lstm": {"policy_kwargs.core_input_projection": 16},
    "rim": {
        "policy_kwargs.core_kwargs.num_units": 4,
        "policy_kwargs.core_kwargs.k": 2,
        "policy_kwargs.core_kwargs.input_key_size": 8,
        "policy_kwargs.core_kwargs.comm_key_size": 8,
    },
    "srm": {
        "policy_kwargs.core_kwargs.num_modules": 4,
        "policy_kwargs.core_kwargs.input_key_size": 8,
        "policy_kwargs.core_kwargs.comm_key_size": 8,
    },
}
#: The columns docs/evaluate.md promises in results.csv.
DOCUMENTED_COLUMNS = (
    "model", "run", "core", "seed", "env", "variant", "episodes", "success_rate", "success_ci_low",
    "success_ci_high", "mean_return", "return_ci_low", "return_ci_high", "mean_length",
)


def _save_run(root: Path, core: str, seed: int) -> Path:
    env = make_env(TRAIN_ENV, n_envs=2, seed=seed)
    model = make_agent(env, core, seed=seed, **TINY, **CORE_KWARGS[core])
    model.learn(256)
    run_dir = root / "rimrl-Pickup-Train-v0" / core / f"seed{seed}"
    run_dir.mkdir(parents=True)
    model.save(run_dir / "model.zip")
    (run_dir / "config.yml").write_text(yaml.safe_dump({"env": TRAIN_ENV, "core": core, "seed": seed}))
    env.close()
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {f"{core}-seed{seed}": _save_run(root, core, seed) for core, seed in (("lstm", 0), ("lstm", 1), ("rim", 0), ("srm", 0))}


@pytest.fixture(scope="module")
def evaluated(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval")
    argv = [*map(str, runs.values()), "--variants", "train", "novel", "--episodes", "4", "--n-envs", "2", "--stochastic"]
    argv += [*SHORT, "--out", str(out), "--plot", "--gif", "1", "--activations", "--quiet"]
    assert main(argv) == 0
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_results_have_one_row_per_model_and_variant(evaluated: Path, runs: dict[str, Path]) -> None:
    rows = _read_csv(evaluated / "results.csv")
    assert [(r["model"], r["variant"]) for r in rows] == [(m, v) for m in runs for v in ("train", "novel")]
    assert set(DOCUMENTED_COLUMNS) <= set(rows[0]) and tuple(rows[0]) == RESULT_COLUMNS
    assert {r["env"] for r in rows} == {"rimrl/Pickup-Train-v0", "rimrl/Pickup-Novel-v0"}
    assert all(r["episodes"] == "4" for r in rows)

    data = json.loads((evaluated / "results.json").read_text())
    assert [(r["model"], r["variant"]) for r in data["results"]] == [(r["model"], r["variant"]) for r in rows]
    assert set(DOCUMENTED_COLUMNS) <= set(data["results"][0])
    assert data["settings"]["episodes"] == 4 and data["settings"]["deterministic"] is False
    assert (evaluated / "results.md").read_text().startswith("# Evaluation results")


def test_success_rates_equal_a_hand_count_of_the_episodes(evaluated: Path) -> None:
    episodes = _read_csv(evaluated / "episodes.csv")
    counted: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for episode in episodes:
        counted[(episode["model"], episode["variant"])].append(episode["success"] == "True")
    for row in _read_csv(evaluated / "results.csv"):
        outcomes = counted[(row["model"], row["variant"])]
        assert len(outcomes) == int(row["episodes"])
        assert float(row["success_rate"]) == pytest.approx(sum(outcomes) / len(outcomes))
        assert float(row["success_ci_low"]) <= float(row["success_rate"]) <= float(row["success_ci_high"])
        # Fixed quotas: 4 episodes over 2 envs is 2 per env, whichever env finishes first.
        per_env = Counter(e["env_index"] for e in episodes if (e["model"], e["variant"]) == (row["model"], row["variant"]))
        assert per_env == {"0": 2, "1": 2}


def test_rliable_aggregates_two_seeds(evaluated: Path) -> None:
    aggregates = _read_csv(evaluated / "aggregates.csv")
    lstm = {r["variant"]: r for r in aggregates if r["core"] == "lstm"}
    assert set(lstm) == {"train", "novel"}  # rim and srm have one seed each: nothing to pool
    assert all(r["core"] == "lstm" for r in aggregates)
    assert lstm["train"]["n_runs"] == "2" and lstm["train"]["models"] == "lstm-seed0;lstm-seed1"
    rates = [float(r["success_rate"]) for r in _read_csv(evaluated / "results.csv") if r["core"] == "lstm" and r["variant"] == "train"]
    assert float(lstm["train"]["mean"]) == pytest.approx(sum(rates) / 2)
    assert float(lstm["train"]["iqm_ci_low"]) <= float(lstm["train"]["iqm"]) <= float(lstm["train"]["iqm_ci_high"])


def test_gifs_and_activation_maps_are_valid_images(evaluated: Path) -> None:
    gifs = sorted((evaluated / "gifs").glob("*.gif"))
    assert len(gifs) == 8  # 1 GIF x 2 variants x 4 models
    for path in gifs:
        with Image.open(path) as image:
            assert image.format == "GIF" and image.size[0] > 0
            image.seek(image.n_frames - 1)  # every frame decodes
    maps = sorted(p.name for p in (evaluated / "activations").glob("*.png"))
    # Heatmaps for RIM and SRM only (LSTM has no units), plus SRM's geometry.
    assert maps == [
        "rim-seed0_novel_active.png",
        "rim-seed0_train_active.png",
        "srm-seed0_novel_active.png",
        "srm-seed0_srm_topology.png",
        "srm-seed0_train_active.png",
    ]
    for path in [*(evaluated / "activations").glob("*.png"), evaluated / "results.png"]:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG"


def test_seeded_evaluations_repeat_exactly(runs: dict[str, Path]) -> None:
    options = dict(paths=[runs["rim-seed0"]], variants=["novel"], episodes=3, n_envs=2, deterministic=False, env_kwargs={"max_steps": 12})
    first = evaluate(EvaluationOptions(seed=7, **options))
    again = evaluate(EvaluationOptions(seed=7, **options))
    assert first.episodes == again.episodes and first.rows == again.rows

    model = load_agent(runs["srm-seed0"] / "model.zip")
    records = [run_episodes(model, make_env(TRAIN_ENV, n_envs=3, seed=0, max_steps=12), 5, deterministic=False, seed=11) for _ in range(2)]
    assert records[0] == records[1] and len(records[0]) == 5
    assert [r.episode for r in records[0]] == list(range(5))


def test_fresh_process_loads_and_evaluates_a_run(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "fresh"
    command = [sys.executable, "evaluate.py", str(runs["rim-seed0"]), "--variants", "more+novel", "--episodes", "2", "--n-envs", "1"]
    result = subprocess.run([*command, *SHORT, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = _read_csv(out / "results.csv")
    assert [(r["model"], r["variant"], r["env"]) for r in rows] == [("rim-seed0", "more+novel", "rimrl/Pickup-MoreNovel-v0")]


def test_bare_zip_takes_env_and_core_from_the_policy(runs: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "agent.zip"
    bare.write_bytes((runs["srm-seed0"] / "model.zip").read_bytes())
    # A bare zip without weights-only files is unpickled only when trusted explicitly (safe=False).
    report = evaluate(EvaluationOptions(paths=[bare], env=TRAIN_ENV, variants=["train"], episodes=1, n_envs=1, env_kwargs={"max_steps": 4}, safe=False))
    assert [(r.model, r.core, r.seed, r.variant) for r in report.rows] == [("agent", "srm", None, "train")]


def _error_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such run directory or model file" in _error_of([str(tmp_path / "nope")], capsys)


def test_corrupt_zip_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "model.zip"
    broken.write_bytes(b"PK\x03\x04 definitely not a model")
    assert "not a saved agent" in _error_of([str(broken), "--env", TRAIN_ENV, "--trust"], capsys)


def test_other_observation_space_exits_2(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    # MiniGrid-Empty has no "target" entry: the pick-up model's observation space does not fit.
    message = _error_of([str(runs["lstm-seed0"]), "--env", "MiniGrid-Empty-5x5-v0", "--episodes", "1"], capsys)
    assert "observation space mismatch" in message


class _ThreeActions(gym.ActionWrapper):
    """The pick-up env with only its first three actions (left, right, forward)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = gym.spaces.Discrete(3)

    def action(self, action: int) -> int:
        return int(action)


def test_other_action_space_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Same observation space as the suite, three actions instead of seven.
    env = DummyVecEnv([lambda: _ThreeActions(make_minigrid_env(TRAIN_ENV))])
    make_agent(env, "lstm", seed=0, **TINY, **CORE_KWARGS["lstm"]).save(tmp_path / "three_actions.zip")
    message = _error_of([str(tmp_path / "three_actions.zip"), "--env", TRAIN_ENV, "--episodes", "1", "--trust"], capsys)
    assert "action space mismatch" in message and "Discrete(3)" in message


def test_other_bad_inputs_exit_2(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare.zip"
    bare.write_bytes((runs["rim-seed0"] / "model.zip").read_bytes())
    assert "pass --env" in _error_of([str(bare)], capsys)
    assert "unknown variant 'huge'" in _error_of([str(runs["rim-seed0"]), "--variants", "huge"], capsys)
    assert "--episodes must be an integer >= 1" in _error_of([str(runs["rim-seed0"]), "--episodes", "0"], capsys)
    assert "pass --out" in _error_of([str(runs["rim-seed0"]), "--plot"], capsys)
    assert "has no model.zip" in _error_of([str(tmp_path)], capsys)
    assert "--compare needs Atari models" in _error_of([str(runs["rim-seed0"]), "--compare", "--out", str(tmp_path)], capsys)


def test_atari_full_games_and_compare(tmp_path: Path) -> None:
    # Untrained tiny agents: this checks the plumbing (raw full-game scores, HNS, --compare), not skill.
    runs = []
    for core, extra in (("lstm", CORE_KWARGS["lstm"]), ("rim", {**CORE_KWARGS["rim"], "policy_kwargs.core_kwargs.num_units": 2, "policy_kwargs.core_kwargs.k": 1})):
        env = make_env("Breakout", n_envs=1, seed=0)
        run_dir = tmp_path / "runs" / "ALE-Breakout-v5" / core / "seed0"
        run_dir.mkdir(parents=True)
        small = {k: v for k, v in TINY.items() if k != "policy_kwargs.net_arch"}
        make_agent(env, core, seed=0, **small, **extra).save(run_dir / "model.zip")
        (run_dir / "config.yml").write_text(yaml.safe_dump({"env": "ALE/Breakout-v5", "core": core, "seed": 0}))
        env.close()
        runs.append(str(run_dir))
    out = tmp_path / "eval"
    argv = [*runs, "--episodes", "2", "--n-envs", "2", "--env-kwarg", "max_frames_per_episode=160", "--compare", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    rows = _read_csv(out / "results.csv")
    assert [(r["core"], r["variant"], r["env"]) for r in rows] == [("lstm", "default", "ALE/Breakout-v5"), ("rim", "default", "ALE/Breakout-v5")]
    for row in rows:
        assert row["success_rate"] == "" and float(row["mean_length"]) == 40  # 160 frames / frame skip 4
        assert float(row["human_normalized_score"]) == pytest.approx((float(row["mean_return"]) - 1.7) / (30.5 - 1.7))
    comparison = _read_csv(out / "atari_compare.csv")
    assert [(c["game"], c["challenger"], c["baseline"]) for c in comparison] == [("ALE/Breakout-v5", "rim", "lstm")]
    with Image.open(out / "atari_compare.png") as image:
        image.verify()


# ----------------------------------------------------------------------------------------------
# One evaluation protocol (issue 15): the action mode, Atari games that cannot stall, progress
# ----------------------------------------------------------------------------------------------


def _quick(paths: list[Path], **options: object) -> EvaluationOptions:
    settings: dict = {"variants": ["train"], "episodes": 2, "n_envs": 1, "env_kwargs": {"max_steps": 4}, **options}
    return EvaluationOptions(paths=paths, **settings)


def _with_mode(run: Path, tmp_path: Path, eval_deterministic: bool) -> Path:
    """A copy of ``run`` whose config.yml records its training-time evaluation mode."""
    copy = tmp_path / f"greedy{eval_deterministic}" / run.name
    copy.mkdir(parents=True)
    for path in run.iterdir():  # the model and its weights-only files
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    config = yaml.safe_load((run / "config.yml").read_text())
    (copy / "config.yml").write_text(yaml.safe_dump({**config, "eval_deterministic": eval_deterministic}))
    return copy


def test_default_action_mode_is_the_runs_training_time_one(runs: dict[str, Path], tmp_path: Path) -> None:
    # No eval_deterministic in config.yml: the env's default, sampled for a rimrl suite (was greedy).
    report = evaluate(_quick([runs["lstm-seed0"]]))
    assert report.settings["deterministic"] is False and all(row.deterministic is False for row in report.rows)
    # The run's own training-time mode wins over the env's default, per model.
    greedy = _with_mode(runs["lstm-seed1"], tmp_path, True)
    report = evaluate(_quick([runs["lstm-seed0"], greedy]))
    assert [row.deterministic for row in report.rows] == [False, True]
    assert report.settings["deterministic"] == "per model" and any("action modes differ" in n for n in report.notes)
    # A flag decides for every model.
    for flag in (True, False):
        report = evaluate(_quick([runs["lstm-seed0"], greedy], deterministic=flag))
        assert report.settings["deterministic"] is flag and all(row.deterministic is flag for row in report.rows)


def test_action_mode_rule() -> None:
    from rimrl.envs import default_deterministic
    from rimrl.evaluation.pipeline import action_mode
    from rimrl.evaluation.sources import ModelSource

    for env_id in (TRAIN_ENV, "MiniGrid-Empty-5x5-v0", "BabyAI-GoToLocal-v0", "Breakout", "ALE/Pong-v5"):
        assert default_deterministic(env_id) is False, env_id
    assert default_deterministic("CartPole-v1") is True
    source = ModelSource(path=Path("m.zip"), run_dir=None, env_id="Breakout", core="rim", seed=0)
    assert action_mode(source) is False and action_mode(source, True) is True
    source.eval_deterministic = True
    assert action_mode(source) is True and action_mode(source, False) is False


def test_mode_flags_exclude_each_other(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert "not allowed with" in _error_of([str(runs["rim-seed0"]), "--deterministic", "--stochastic"], capsys)


def test_progress_reports_every_episode(runs: dict[str, Path]) -> None:
    calls: list[tuple[str, int, int]] = []
    evaluate(_quick([runs["rim-seed0"]], variants=["train", "novel"], episodes=3),
             progress=lambda what, done, total: calls.append((what, done, total)))
    assert [(done, total) for _, done, total in calls] == [(0, 3), (1, 3), (2, 3), (3, 3)] * 2
    assert [what for what, _, _ in calls[::4]] == ["rim-seed0: train (rimrl/Pickup-Train-v0)",
                                                   "rim-seed0: novel (rimrl/Pickup-Novel-v0)"]


def test_a_terminal_gets_a_progress_bar_and_a_pipe_does_not(
    runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from rich.console import Console

    import rimrl.cli.evaluate as cli

    argv = [str(runs["rim-seed0"]), "--variants", "train", "--episodes", "3", "--n-envs", "1", *SHORT]
    assert main(argv) == 0
    assert "3/3" not in capsys.readouterr().out  # captured stdout is not a terminal: no bar
    screen = io.StringIO()
    monkeypatch.setattr(cli, "Console", lambda **kwargs: Console(file=screen, force_terminal=True, width=150, color_system=None))
    assert main(argv) == 0
    assert "3/3 episodes" in screen.getvalue()
    screen.truncate(0)
    assert main([*argv, "--quiet"]) == 0
    assert "3/3" not in screen.getvalue()


class _Noop:
    """A "policy" that never presses FIRE: always action 0 (NOOP)."""

    def predict(self, obs, state=None, episode_start=None, deterministic=False):  # noqa: ANN001, ANN201
        return np.zeros(len(obs), dtype=np.int64), state


def test_atari_evaluation_cannot_stall_on_a_policy_that_never_fires() -> None:
    from rimrl.evaluation.environments import ATARI_FRAME_CAP, eval_env_kwargs, make_eval_env

    kwargs = eval_env_kwargs("Breakout", None, {"max_frames_per_episode": 20_000})
    assert kwargs["fire_on_life_loss"] is True and eval_env_kwargs("Breakout")["max_frames_per_episode"] == ATARI_FRAME_CAP
    venv = make_eval_env("Breakout", 2, 0, kwargs)
    try:
        records = run_episodes(_Noop(), venv, 2, seed=0)
    finally:
        venv.close()
    # Five served and lost balls take ~120 steps; a game waiting for FIRE ran to the cap (5,000 steps).
    assert all(record.length < 1000 for record in records), records
