"""rimrl-train sweeps: the local process pool and a local Ray instance run each trial with the
single-run layout; a failing trial is reported and does not stop the others."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rimrl.cli.common import run_dir_for
from rimrl.cli.train import build_parser, build_trials

ROOT = Path(__file__).resolve().parents[1]
ENV = "rimrl/Pickup-Train-v0"
TINY = ["-n", "64", "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "--save-freq", "0", "-q",
        "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=16"]


def train(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True,
                          timeout=timeout)


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
