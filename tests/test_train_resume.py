"""rimrl-train resume: SIGTERM checkpoints and exits 143; --resume reaches the requested total with
the schedules continuing (not restarting)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sb3_contrib import RecurrentPPO

from rimrl.agents import load_agent
from rimrl.cli.common import run_dir_for
from rimrl.cli.train import list_checkpoints, main

ROOT = Path(__file__).resolve().parents[1]
ENV = "rimrl/Pickup-Train-v0"
ROLLOUT = 64  # 2 envs x 32 steps
HYPERPARAMS = ["n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=16",
               "learning_rate=lin_1e-3"]


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.communicate()[1]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no checkpoint appeared in time")


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_checkpoints_then_resume_reaches_the_total(signum: int, tmp_path: Path) -> None:
    run = run_dir_for(tmp_path, ENV, "lstm", 0)
    cmd = [sys.executable, str(ROOT / "train.py"), "--core", "lstm", "-f", str(tmp_path), "-n", "1000000",
           "--n-envs", "2", "--save-freq", str(ROLLOUT), "--eval-freq", "0", "--eval-episodes", "2", "-q",
           "--hyperparams", *HYPERPARAMS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bool(list_checkpoints(run)), timeout=120, proc=proc)
        os.kill(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err
    (stopped_at, checkpoint), *_ = list_checkpoints(run)
    assert stopped_at > 0 and stopped_at % ROLLOUT == 0
    assert not (run / "model.zip").exists()
    interrupted = load_agent(checkpoint)
    assert interrupted.num_timesteps == stopped_at

    # The schedule continues: resuming towards `total` gives the progress a single run would have.
    total = stopped_at + 4 * ROLLOUT
    interrupted._setup_learn(total - stopped_at, reset_num_timesteps=False)
    assert interrupted._total_timesteps == total
    interrupted._update_current_progress_remaining(stopped_at + ROLLOUT, total)
    assert interrupted._current_progress_remaining == pytest.approx(1 - (stopped_at + ROLLOUT) / total)

    assert main(["--core", "lstm", "-f", str(tmp_path), "--resume", "-n", str(total), "-q"]) == 0
    final = RecurrentPPO.load(run / "model.zip")
    assert final.num_timesteps == total
    assert final._total_timesteps == total  # not total - stopped_at: the counters were not reset
    assert final.policy.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # lin_ schedule ended
    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["n_timesteps"] == total
    assert [s["from_timesteps"] for s in config["sessions"]] == [0, stopped_at]
    assert sorted(p.name for p in (run / "monitor").iterdir()) == ["session0.monitor.csv", "session1.monitor.csv"]

    # Resuming a complete run does nothing.
    assert main(["--core", "lstm", "-f", str(tmp_path), "--resume", "-q"]) == 0
    assert RecurrentPPO.load(run / "model.zip").num_timesteps == total


def test_resume_after_sigkill_uses_the_latest_checkpoint(tmp_path: Path) -> None:
    """A SIGKILL leaves the last atomic checkpoint (and maybe a stray temp file): resume continues."""
    run = run_dir_for(tmp_path, ENV, "gru", 0)
    base = ["--core", "gru", "-f", str(tmp_path), "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "-q"]
    assert main([*base, "-n", str(2 * ROLLOUT), "--save-freq", str(ROLLOUT), "--hyperparams", *HYPERPARAMS]) == 0
    # Simulate the kill: drop the final artefacts, leave a torn temp file.
    for name in ("model.zip", "final_metrics.json"):
        (run / name).unlink()
    (run / "checkpoints" / f"model_{2 * ROLLOUT}_steps.zip").unlink()
    (run / "checkpoints" / ".tmp-model_999_steps-x.zip").write_bytes(b"torn")
    assert main([*base, "--resume", "-n", str(3 * ROLLOUT)]) == 0
    assert load_agent(run / "model.zip").num_timesteps == 3 * ROLLOUT
    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["sessions"][-1]["from_timesteps"] == ROLLOUT
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_resume_when_the_last_checkpoint_is_already_at_the_total(tmp_path: Path) -> None:
    """A kill between the final checkpoint and ``model.zip``: resume has no step left to train and
    only writes the final artefacts (no ``learn`` call, so the model has no logger yet)."""
    run = run_dir_for(tmp_path, ENV, "gru", 0)
    base = ["--core", "gru", "-f", str(tmp_path), "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "-q"]
    assert main([*base, "-n", str(2 * ROLLOUT), "--save-freq", str(ROLLOUT), "--hyperparams", *HYPERPARAMS]) == 0
    for name in ("model.zip", "final_metrics.json"):
        (run / name).unlink()
    assert main([*base, "--resume", "-n", str(2 * ROLLOUT)]) == 0
    assert load_agent(run / "model.zip").num_timesteps == 2 * ROLLOUT
    assert (run / "final_metrics.json").is_file()
