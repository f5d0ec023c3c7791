"""``evaluate.py --curves``: learning curves from real (tiny) train.py run directories.

The fixture trains two LSTM seeds for 256 steps with periodic evaluation on every variant of the
Pickup suite; the tests read the curves back and check each number against the ``.npz`` files.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from rimrl.cli.evaluate import main as evaluate_main
from rimrl.evaluation.curves import aggregate_curve, evaluation_curves, learning_curves, read_run_evaluations

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ["train", "more", "novel", "more+novel"]
TRAIN = ["--core", "lstm", "-n", "256", "--n-envs", "2", "--eval-freq", "128", "--eval-episodes", "2", "--save-freq", "128",
         "-q", "--eval-variants", "all", "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1",
         "policy_kwargs.lstm_hidden_size=24", "--seeds", "0", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two real LSTM runs (seeds 0 and 1) with evaluations on train, more, novel and more+novel."""
    root = tmp_path_factory.mktemp("curve_runs")
    result = subprocess.run([sys.executable, "train.py", *TRAIN, "-f", str(root)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    found = sorted((root / "rimrl-Pickup-Train-v0" / "lstm").glob("seed*"))
    assert [p.name for p in found] == ["seed0", "seed1"]
    return found


def _npz_values(run: Path, variant: str) -> dict[int, float]:
    name = "evaluations.npz" if variant == "train" else f"evaluations_{variant}.npz"
    with np.load(run / name) as data:
        return {int(t): float(np.nanmean(row)) for t, row in zip(data["timesteps"], data["successes"], strict=True)}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_curves_csv_matches_the_npz_files(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curves"
    assert evaluate_main([*map(str, runs), "--curves", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "learning curves" in printed and "more+novel" in printed
    rows = _read_csv(out / "curves.csv")
    assert list(rows[0]) == ["core", "variant", "step", "n_seeds", "metric", "mean", "ci_low", "ci_high"]
    assert [r["variant"] for r in rows] == [v for v in VARIANTS for _ in (128, 256)]
    for row in rows:
        assert row["core"] == "lstm" and row["n_seeds"] == "2" and row["metric"] == "success_rate"
        per_seed = [_npz_values(run, row["variant"])[int(row["step"])] for run in runs]
        assert float(row["mean"]) == pytest.approx(np.mean(per_seed), abs=1e-6)
        assert float(row["ci_low"]) <= float(row["mean"]) + 1e-9 <= float(row["ci_high"]) + 2e-9
        assert min(per_seed) - 1e-9 <= float(row["ci_low"]) and float(row["ci_high"]) <= max(per_seed) + 1e-9
    with Image.open(out / "curves.png") as image:
        image.verify()
    assert (out / "curves.png").stat().st_size > 20_000  # four panels, not an empty canvas


def test_seeds_are_aligned_on_their_common_steps_and_the_numbers_are_the_seeds_mean(runs: list[Path], tmp_path: Path) -> None:
    # Copies of the real runs with known success rates, one of them evaluated at other steps too.
    copies = []
    for i, (run, values) in enumerate(zip(runs, ([0.0, 0.5, 1.0], [0.5, 1.0]), strict=True)):
        copy = tmp_path / f"seed{i}"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoints", "tb", "*.zip", "*.pt"))
        steps = [100, 200, 300] if i == 0 else [200, 300]
        successes = np.array([[v, v] for v in values])
        np.savez(copy / "evaluations.npz", timesteps=np.array(steps), results=successes * 2, ep_lengths=successes + 5,
                 successes=successes)
        copies.append(copy)
    curves = evaluation_curves([read_run_evaluations(c) for c in copies], reps=500)
    train = next(c for c in curves if c.variant == "train")
    assert train.steps.tolist() == [200, 300] and train.dropped_steps == 1 and train.n_seeds == 2
    assert train.mean.tolist() == pytest.approx([0.5, 1.0])
    assert train.per_seed == {"seed0": pytest.approx([0.5, 1.0]), "seed1": pytest.approx([0.5, 1.0])}
    report = learning_curves([str(c) for c in copies])
    assert any("1 evaluation step(s)" in note for note in report.notes)


def test_mean_return_where_the_env_reports_no_success(runs: list[Path], tmp_path: Path) -> None:
    copy = tmp_path / "seed0"
    shutil.copytree(runs[0], copy, ignore=shutil.ignore_patterns("checkpoints", "tb", "*.zip", "*.pt"))
    np.savez(copy / "evaluations.npz", timesteps=np.array([10, 20]), results=np.array([[1.0, np.nan], [2.0, 4.0]]),
             ep_lengths=np.ones((2, 2)))
    (train,) = [c for c in evaluation_curves([read_run_evaluations(copy)]) if c.variant == "train"]
    assert train.metric == "mean_return" and train.mean.tolist() == [1.0, 3.0]  # NaN padding left out
    assert np.isnan(train.ci_low).all()  # one seed: no interval across seeds


def test_aggregate_curve() -> None:
    mean, low, high = aggregate_curve(np.array([[0.0, 1.0, np.nan], [1.0, 1.0, 0.5]]), reps=300)
    assert mean.tolist() == [0.5, 1.0, 0.5]
    assert low[0] <= 0.5 <= high[0] and (low[1], high[1]) == (1.0, 1.0) and np.isnan(low[2])


def test_run_dirs_without_evaluations_exit_2(runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.yml").write_text(yaml.safe_dump({"env": "rimrl/Pickup-Train-v0", "core": "rim", "seed": 0}))
    for argv, message in (
        ([str(bare)], "has no evaluations.npz"),
        ([str(tmp_path)], "needs run directories written by train.py"),
        ([str(tmp_path / "missing")], "needs run directories written by train.py"),
        ([str(runs[0]), "--plot"], "run --plot without --curves"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            evaluate_main([*argv, "--curves", "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
