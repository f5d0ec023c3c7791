"""``train.py --optimize``: an Optuna study over tiny in-process runs (in-memory storage).

Each trial trains 256 steps; ``--hyperparams`` pins the costly keys, so only the cheap ones
(learning rate, gamma, ...) are searched.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

optuna = pytest.importorskip("optuna")  # a safety net: `make test` installs the extra

from rimrl.cli.train import main  # noqa: E402
from rimrl.experiments import search  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = "rimrl-Pickup-Train-v0"
TINY = [
    "--core", "lstm", "-n", "256", "--n-envs", "2", "--eval-freq", "128", "--eval-episodes", "2",
    "--save-freq", "128", "-q",
    "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=24",
]


def read_trials(folder: Path) -> list[dict[str, str]]:
    with open(folder / search.TRIALS_FILE, newline="") as stream:
        return list(csv.DictReader(stream))


def test_optimize_runs_trials_and_writes_a_usable_best_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--optimize", "--n-trials", "2", "-f", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "optimize" / ENV_DIR / "lstm"
    assert (folder / "trial0" / "final_metrics.json").is_file()
    assert (folder / "trial1" / "final_metrics.json").is_file()
    rows = read_trials(folder)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    assert "best trial" in out and "study rimrl-Pickup-Train-v0-lstm: 2 trials" in out

    preset_path = folder / search.BEST_PRESET_FILE
    preset = yaml.safe_load(preset_path.read_text())
    # The pinned values stay, the searched ones are the best trial's, all resolved keys are there.
    assert preset["n_steps"] == 32 and preset["n_envs"] == 2
    assert preset["policy_kwargs"]["lstm_hidden_size"] == 24
    best = min(rows, key=lambda r: -float(r["value"]))
    config = yaml.safe_load((Path(best["run_dir"]) / "config.yml").read_text())
    assert preset["learning_rate"] == config["hyperparams"]["learning_rate"]
    trial_lrs = {yaml.safe_load((folder / f"trial{i}" / "config.yml").read_text())["hyperparams"]["learning_rate"]
                 for i in (0, 1)}
    assert len(trial_lrs) == 2  # the sampler proposed different values

    # train.py --preset accepts it.
    assert main(["--core", "lstm", "-n", "64", "--n-envs", "2", "--eval-freq", "0", "--eval-episodes", "1", "-q",
                 "-f", str(tmp_path / "again"), "--preset", str(preset_path)]) == 0
    again = yaml.safe_load((tmp_path / "again" / ENV_DIR / "lstm" / "seed0" / "config.yml").read_text())
    assert again["hyperparams"]["learning_rate"] == preset["learning_rate"]


class AlwaysPrune(optuna.pruners.BasePruner):
    """Prunes every trial at its first reported evaluation."""

    def prune(self, study: Any, trial: Any) -> bool:
        return True


def test_a_pruned_trial_stops_at_its_evaluation_and_is_recorded_as_pruned(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(search, "make_pruner", lambda *args: AlwaysPrune())
    code = main(["--optimize", "--n-trials", "1", "-f", str(tmp_path), *TINY])
    assert code == 1  # no trial completed: nothing to write as the best preset
    captured = capsys.readouterr()
    assert "trial 0: pruned" in captured.out and "no trial completed" in captured.err
    folder = tmp_path / "optimize" / ENV_DIR / "lstm"
    [row] = read_trials(folder)
    assert row["state"] == "PRUNED" and row["status"] == "pruned"
    assert int(row["steps"]) == 128  # stopped at the first evaluation, not trained to 256
    assert not (folder / search.BEST_PRESET_FILE).exists()
    assert list((folder / "trial0" / "checkpoints").glob("*.zip"))  # what was trained is kept


def test_sampler_skips_pinned_keys_and_respects_the_core() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    params = search.sample_hyperparams(trial, "rim", n_envs=2, fixed={"n_steps": 32, "policy_kwargs.core_kwargs": {}})
    assert "n_steps" not in params and "policy_kwargs.core_kwargs.k" not in params
    assert params["batch_size"] <= 64  # at most one rollout of 32 steps x 2 envs
    rim = search.sample_hyperparams(study.ask(), "rim", n_envs=8)
    units = rim["policy_kwargs.core_kwargs.num_units"]
    assert 1 <= rim["policy_kwargs.core_kwargs.k"] <= units
    assert rim["policy_kwargs.lstm_hidden_size"] % units == 0
    assert "policy_kwargs.core_kwargs.tau" in search.sample_hyperparams(study.ask(), "srm", n_envs=8)
    assert set(search.sample_hyperparams(study.ask(), "gru", n_envs=8)) >= {"learning_rate", "policy_kwargs.lstm_hidden_size"}


def test_optimize_refuses_a_grid_and_a_second_fresh_study_over_old_trials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--optimize", "--seeds", "0", "1", "-f", str(tmp_path), *TINY])
    assert info.value.code == 2 and "one --env, --core and --seed" in capsys.readouterr().err
    (tmp_path / "optimize" / ENV_DIR / "lstm" / "trial0").mkdir(parents=True)
    (tmp_path / "optimize" / ENV_DIR / "lstm" / "trial0" / "config.yml").write_text("{}\n")
    with pytest.raises(SystemExit) as info:
        main(["--optimize", "--n-trials", "1", "-f", str(tmp_path), *TINY])
    assert info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--n-trials", "3", "-f", str(tmp_path), *TINY])
    assert "--n-trials needs --optimize" in capsys.readouterr().err


def train(*argv: str) -> subprocess.CompletedProcess[str]:
    """``train.py`` in a fresh interpreter (process pools and Ray need a clean main process)."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def test_parallel_trials_share_a_journal_storage_and_a_study_can_be_continued(tmp_path: Path) -> None:
    proc = train("--optimize", "--n-trials", "2", "--workers", "2", "-f", str(tmp_path), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = tmp_path / "optimize" / ENV_DIR / "lstm"
    journal = folder / search.JOURNAL_FILE
    assert journal.is_file() and "2 local workers" in proc.stdout
    study = optuna.load_study(study_name="rimrl-Pickup-Train-v0-lstm", storage=search.open_storage(str(journal)))
    # The workers reported their periodic evaluations to the study (what the pruner reads).
    assert [sorted(t.intermediate_values) for t in study.trials] == [[128, 256], [128, 256]]
    # The same storage continues the study: new trial numbers, new directories.
    proc = train("--optimize", "--n-trials", "1", "--storage", str(journal), "-f", str(tmp_path), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 trials before" in proc.stdout
    assert [r["state"] for r in read_trials(folder)] == ["COMPLETE"] * 3
    assert (folder / "trial2" / "model.zip").is_file()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed (pip install rimrl[ray])")
def test_optimize_on_ray(tmp_path: Path) -> None:
    proc = train("--optimize", "--n-trials", "2", "--backend", "ray", "--workers", "2", "-f", str(tmp_path), *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on Ray (local instance)" in proc.stdout
    folder = tmp_path / "optimize" / ENV_DIR / "lstm"
    assert [r["state"] for r in read_trials(folder)] == ["COMPLETE"] * 2
    assert (folder / search.BEST_PRESET_FILE).is_file()
