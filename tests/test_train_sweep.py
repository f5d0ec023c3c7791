"""rimrl-train sweeps: the local process pool and a local Ray instance run each trial with the
single-run layout; a failing trial is reported and does not stop the others."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rimrl.cli.common import run_dir_for
from rimrl.cli.sweep import print_summary
from rimrl.cli.train import TrialResult, build_parser, build_trials
from rimrl.experiments.sweep import _TEST_KILL_ENV as KILL_ENV

ROOT = Path(__file__).resolve().parents[1]
ENV = "rimrl/Pickup-Train-v0"
TINY = ["-n", "64", "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "--save-freq", "0", "-q",
        "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=16"]
#: TINY with checkpoints every rollout (64 steps) and a few rollouts after the first: the kill hook
#: fires right after a checkpoint, and the retry has training left to resume.
CRASHY = ["-n", "192", "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "--save-freq", "64", "-q",
          "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=16"]


def train(*argv: str, timeout: float = 240, kill: str | None = None) -> subprocess.CompletedProcess:
    """``train.py argv``; ``kill`` sets the sweep's test-only hook (see ``rimrl.experiments.sweep._TEST_KILL_ENV``)."""
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill is not None:
        env[KILL_ENV] = kill
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_completed(root: Path, core: str, seed: int) -> None:
    run = run_dir_for(root, ENV, core, seed)
    assert (run / "model.zip").is_file() and (run / "final_metrics.json").is_file(), run
    assert yaml.safe_load((run / "config.yml").read_text())["seed"] == seed


def test_grid_expansion() -> None:
    argv = ["--env", ENV, "MiniGrid-Empty-5x5-v0", "--cores", "rim", "lstm", "--seeds", "0", "1", "2"]
    trials = build_trials(build_parser().parse_args(argv), argv)
    assert len(trials) == 12
    assert [(t.env, t.core, t.seed) for t in trials[:4]] == [(ENV, "rim", 0), (ENV, "rim", 1), (ENV, "rim", 2),
                                                             (ENV, "lstm", 0)]
    assert all(t.label == t.name for t in trials)


def test_local_sweep_runs_each_trial_and_survives_a_failing_one(tmp_path: Path) -> None:
    # seed 2's run directory holds a corrupt checkpoint: with --resume, that trial fails to load it
    # while seeds 0 and 1 (nothing to resume) start fresh.
    broken = run_dir_for(tmp_path, ENV, "lstm", 2)
    (broken / "checkpoints").mkdir(parents=True)
    (broken / "checkpoints" / "model_64_steps.zip").write_bytes(b"not a zip")
    (broken / "config.yml").write_text(yaml.safe_dump({"env": ENV, "core": "lstm", "seed": 2, "n_envs": 2,
                                                       "hyperparams": {"n_steps": 32, "batch_size": 32}}))
    proc = train("--core", "lstm", "--seeds", "2", "0", "1", "--workers", "2", "--resume", "-f", str(tmp_path), *TINY)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_completed(tmp_path, "lstm", 0)
    assert_completed(tmp_path, "lstm", 1)
    assert "Traceback" not in proc.stderr
    assert "cannot resume" in proc.stderr
    table = proc.stdout
    assert "sweep: 3 trials" in table and table.count("completed") == 2 and "invalid" in table


def test_sweep_with_bad_input_fails_before_running(tmp_path: Path) -> None:
    proc = train("--cores", "rim", "lstm", "--seeds", "0", "1", "-f", str(tmp_path), *TINY,
                 "policy_kwargs.core_kwargs.k=9")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install rimrl[ray])")
def test_ray_sweep_on_a_local_instance(tmp_path: Path) -> None:
    proc = train("--core", "lstm", "--seeds", "0", "1", "--backend", "ray", "--workers", "2", "-f", str(tmp_path),
                 *TINY, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_completed(tmp_path, "lstm", 0)
    assert_completed(tmp_path, "lstm", 1)
    assert proc.stdout.count("completed") >= 2


def test_ray_missing_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from rimrl.cli.train import main

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["--seeds", "0", "1", "--backend", "ray", "-f", str(tmp_path), *TINY])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pip install rimrl[ray]" in err


def sessions(root: Path, seed: int) -> list[int]:
    """Where each training session of the lstm run with this seed started (``config.yml``)."""
    config = yaml.safe_load((run_dir_for(root, ENV, "lstm", seed) / "config.yml").read_text())
    return [session["from_timesteps"] for session in config["sessions"]]


def test_local_sweep_retries_a_trial_whose_worker_died(tmp_path: Path) -> None:
    # Seed 0's worker SIGKILLs itself right after its first checkpoint (step 64), which breaks the
    # pool: the trial is retried from that checkpoint and the others still run to the end.
    proc = train("--core", "lstm", "--seeds", "0", "1", "2", "--workers", "2", "-f", str(tmp_path), *CRASHY,
                 kill="0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for seed in (0, 1, 2):
        assert_completed(tmp_path, "lstm", seed)
    assert "a worker process died; the pool stops its other trials" in proc.stderr
    assert f"{ENV}/lstm/seed0: its worker process died (SIGKILL); retrying it once with --resume" in proc.stderr
    assert sessions(tmp_path, 0) == [0, 64]  # --resume semantics: continued from its checkpoint
    assert "Traceback" not in proc.stderr
    table = proc.stdout
    assert table.count("completed") == 3 and "retried: its worker process died (SIGKILL)" in table, table


def test_local_sweep_fails_a_trial_whose_worker_dies_twice(tmp_path: Path) -> None:
    # Seed 1's worker dies on every attempt, seed 0's on the first only.
    proc = train("--core", "lstm", "--seeds", "0", "1", "2", "--workers", "2", "-f", str(tmp_path), *CRASHY,
                 kill="0,1:2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_completed(tmp_path, "lstm", 0)
    assert_completed(tmp_path, "lstm", 2)
    assert len(sessions(tmp_path, 0)) >= 2
    assert "lstm/seed1] error: worker process died twice (SIGKILL); giving up on this trial" in proc.stderr
    table = proc.stdout
    assert table.count("completed") == 2 and "failed" in table and "worker process died twice (SIGKILL)" in table, (
        table + proc.stderr)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install rimrl[ray])")
def test_ray_sweep_retries_a_task_whose_worker_died_once(tmp_path: Path) -> None:
    proc = train("--core", "lstm", "--seeds", "0", "1", "2", "--backend", "ray", "--workers", "2", "-f",
                 str(tmp_path), *CRASHY, kill="0,1:2", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_completed(tmp_path, "lstm", 0)
    assert_completed(tmp_path, "lstm", 2)
    assert sessions(tmp_path, 0) == [0, 64]
    assert f"{ENV}/lstm/seed0: its worker process died" in proc.stderr
    assert "lstm/seed1] error: worker process died twice" in proc.stderr
    assert proc.stdout.count("completed") == 2 and "failed" in proc.stdout, proc.stdout + proc.stderr


def test_summary_keeps_bracketed_text_in_the_note() -> None:
    note = "[seed2] bad [bold]ckpt[/bold] k[0]"
    results = [TrialResult(env=ENV, core="lstm", seed=2, run_dir="runs/x", status="invalid", exit_code=2,
                           message=note)]
    out = io.StringIO()
    print_summary(results, file=out)
    assert note in out.getvalue()
