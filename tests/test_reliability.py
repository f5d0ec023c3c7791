"""Reliability promises of train.py / evaluate.py (docs/reliability.md lists each with its test).

Divergence ends as ``nan`` (exit 1), never a traceback; out-of-range input exits 2 before
anything is created; files that are not what they claim are refused by name; output folders are
checked before the work and a late write failure keeps the results; one writer per folder; atomic
files get the umask's mode; Ctrl-C during the imports exits 130 quietly.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from test_train_cli import TINY, assert_one_line_error, expect_usage_error, run_dir

from rimrl.agents.storage import directory_lock, writable_dir_problem
from rimrl.cli import evaluate as evaluate_cli
from rimrl.cli.common import atomic_write_text
from rimrl.cli.train import CONFIG_FILE, TrainOptions, execute_trial, list_checkpoints, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny completed LSTM run (its run directory)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["--core", "lstm", "-f", str(root), *TINY]) == 0
    return run_dir(root, "lstm")


def _evaluate(argv: list[str]) -> int:
    return evaluate_cli.main(argv)


# ----------------------------------------------------------------------------------------------
# 1. Divergence is a "nan" outcome, wherever it shows up
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hyperparams", "fragment"),
    [
        # weights stay finite, the logits overflow to NaN: torch.distributions raises mid-rollout
        (["learning_rate=1e20", "max_grad_norm=1e9"], "NaN logits"),
        # a learning rate beyond float32: Adam's step overflows
        (["learning_rate=1e39"], "overflowed"),
    ],
)
def test_real_divergence_stops_as_nan_and_leaves_no_empty_run(
    hyperparams: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--core", "lstm", "-f", str(tmp_path), *TINY, "-n", "1024", "--save-freq", "0", "--eval-freq", "0",
            "--hyperparams", *hyperparams]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "error: training stopped" in err and fragment in err, err
    assert "run directory was removed" in err
    assert not run_dir(tmp_path, "lstm").exists()


def test_nan_on_the_last_update_is_reported_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sb3_contrib import RecurrentPPO

    original = RecurrentPPO.train

    def train_then_poison(self: RecurrentPPO) -> None:
        original(self)
        if self.num_timesteps >= 256:  # the last update of -n 256
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))

    monkeypatch.setattr(RecurrentPPO, "train", train_then_poison)
    argv = ["--core", "gru", "-f", str(tmp_path), *TINY]
    result = execute_trial(_options(argv))
    assert (result.status, result.exit_code) == ("nan", 1)  # a sweep shows "nan", not "failed"
    assert "after the last update" in result.message
    run = run_dir(tmp_path, "gru")
    assert [s for s, _ in list_checkpoints(run)] == [128]  # the good checkpoints are kept
    assert not (run / "model.zip").exists()


def _options(argv: list[str]) -> TrainOptions:
    from rimrl.cli.train import build_parser, build_trials

    return build_trials(build_parser().parse_args(argv), argv)[0]


# ----------------------------------------------------------------------------------------------
# 3. Out-of-range input: exit 2, one line, before anything is created
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--device", "banana"], ["unknown --device 'banana'"]),
        (["--hyperparams", "n_steps=0"], ["n_steps=0 is out of range"]),
        (["--hyperparams", "batch_size=0"], ["batch_size=0 is out of range"]),
        (["--hyperparams", "n_epochs=0"], ["n_epochs=0 is out of range"]),
        (["--hyperparams", "gamma=1.5"], ["gamma=1.5 is out of range", "[0, 1]"]),
        (["--hyperparams", "gae_lambda=-0.1"], ["gae_lambda=-0.1 is out of range"]),
        (["--hyperparams", "clip_range=-0.2"], ["clip_range=-0.2 is out of range"]),
        (["--hyperparams", "clip_range=lin_-0.2"], ["clip_range='lin_-0.2' is out of range"]),
        (["--hyperparams", "learning_rate=.nan"], ["learning_rate", "out of range"]),
        (["--hyperparams", "max_grad_norm=0"], ["max_grad_norm=0 is out of range"]),
        (["--hyperparams", "policy_kwargs=5"], ["policy_kwargs must be a mapping"]),
        (["--hyperparams", "n_steps=1", "--n-envs", "1"], ["n_steps * n_envs must be > 1"]),
        (["--env", "MiniGrid-Empty-5x5-v0", "--env-kwargs", "agent_view_size=4"],
         ["cannot make 'MiniGrid-Empty-5x5-v0'", "agent_view_size"]),
    ],
)
def test_out_of_range_input_exits_2_and_creates_nothing(
    extra: list[str], fragments: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    expect_usage_error(["-f", str(root), "-n", "64", "-q", *extra], capsys, *fragments)
    assert not any(root.rglob("*")), f"left behind: {list(root.rglob('*'))}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expect_usage_error(["-f", str(tmp_path), "-n", "64", "--device", "cuda"], capsys, "CUDA is not available")


def test_a_quoted_boolean_in_a_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "exp.yml"
    config.write_text('core: lstm\neval_deterministic: "false"\n')
    expect_usage_error(["--config", str(config), "-f", str(tmp_path)], capsys,
                       "eval_deterministic must be true or false")


@pytest.mark.parametrize("argv", [["--seed", "-1"], ["--episodes", "0"], ["--n-envs", "0"]])
def test_evaluate_refuses_bad_numbers(argv: list[str], trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _evaluate([str(trained), *argv])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys, argv[0])


# ----------------------------------------------------------------------------------------------
# 4. Files that are not what they claim
# ----------------------------------------------------------------------------------------------


def test_non_utf8_files_are_refused_by_name(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "bad.yml"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    expect_usage_error(["--config", str(binary), "-f", str(tmp_path)], capsys, "bad.yml", "not UTF-8")
    expect_usage_error(["--preset", str(binary), "-f", str(tmp_path), "-n", "64"], capsys, "bad.yml", "not UTF-8")

    # a run whose config.yml was replaced by binary data: --resume and evaluate.py say which file
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / CONFIG_FILE).write_bytes(binary.read_bytes())
    (copy / "model.zip").write_bytes((trained / "model.zip").read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        _evaluate([str(copy)])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys, "config.yml", "not UTF-8")


def test_a_torn_newest_checkpoint_is_set_aside_and_the_real_resume_step_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--core", "lstm", "-f", str(tmp_path), *TINY, "--save-freq", "64", "--keep-checkpoints", "2"]
    assert main(argv) == 0
    run = run_dir(tmp_path, "lstm")
    newest = list_checkpoints(run)[0][1]
    assert newest.name == "model_256_steps.zip"
    newest.write_bytes(newest.read_bytes()[:500])  # torn mid-write (as by a crash without atomic writes)

    assert main([*argv, "--resume", "-n", "384"]) == 0
    err = capsys.readouterr().err
    assert "warning: skipping unreadable checkpoint model_256_steps.zip" in err, err
    sessions = yaml.safe_load((run / CONFIG_FILE).read_text())["sessions"]
    assert sessions[-1]["from_timesteps"] == 192  # where training really resumed
    assert (run / "checkpoints" / "model_256_steps.zip.unreadable").is_file()  # kept, not deleted
    assert [s for s, _ in list_checkpoints(run)] == [384, 320]  # the torn file does not count toward keep=2


# ----------------------------------------------------------------------------------------------
# 5. Output paths are checked before the work; a late failure keeps what was done
# ----------------------------------------------------------------------------------------------


def test_unwritable_output_folders_are_refused_up_front(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    expect_usage_error(["-f", str(a_file), "-n", "64"], capsys, "exists and is not a folder")
    expect_usage_error(["-f", "/proc/rimrl-test", "-n", "64"], capsys, "cannot create")
    assert writable_dir_problem(tmp_path / "new" / "deeper") is None and not (tmp_path / "new").exists()

    import rimrl.evaluation.pipeline as pipeline

    def no_rollouts(*args: object, **kwargs: object) -> None:
        raise AssertionError("rollouts ran before --out was checked")

    monkeypatch.setattr(pipeline, "run_episodes", no_rollouts)
    with pytest.raises(SystemExit) as exit_info:
        _evaluate([str(trained), "--out", str(a_file)])
    assert exit_info.value.code == 2
    assert_one_line_error(capsys, "cannot write --out", "not a folder")


def test_a_full_disk_is_refused_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from rimrl.agents import storage

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: usage._replace(free=storage.MIN_FREE_BYTES - 1))
    assert "is full" in (writable_dir_problem(tmp_path / "runs") or "")
    expect_usage_error(["-f", str(tmp_path / "runs"), "-n", "64"], capsys, "cannot write the run directory", "is full")
    assert not (tmp_path / "runs").exists()


def test_disk_full_during_training_stops_cleanly_and_keeps_the_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rimrl.agents import training

    original, calls = training.CheckpointManager.save, {"n": 0}

    def save(self: training.CheckpointManager, model: object) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.folder / "model_256_steps.zip"))
        return original(self, model)

    monkeypatch.setattr(training.CheckpointManager, "save", save)
    assert main(["--core", "lstm", "-f", str(tmp_path), *TINY]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and "continue with --resume" in err, err
    assert [s for s, _ in list_checkpoints(run_dir(tmp_path, "lstm"))] == [128]


def test_evaluate_keeps_its_results_when_out_fails_after_the_rollouts(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import rimrl.evaluation.pipeline as pipeline

    out = tmp_path / "out"
    original = pipeline.write_outputs

    def write_outputs(report: object, folder: Path) -> list[Path]:
        if Path(folder) == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(report, folder)

    monkeypatch.setattr(pipeline, "write_outputs", write_outputs)
    code = _evaluate([str(trained), "--variants", "train", "--episodes", "2", "--n-envs", "2", "--out", str(out),
                      "--quiet"])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert "No space left on device" in err and "written to" in err, err
    fallback = Path(err.split("written to ")[1].split("'")[1])
    rows = json.loads((fallback / "results.json").read_text())
    assert rows  # the evaluation was not lost


# ----------------------------------------------------------------------------------------------
# 6. One writer per folder
# ----------------------------------------------------------------------------------------------


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """Another process holding ``folder``'s lock until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from rimrl.agents.storage import directory_lock
        with directory_lock({str(folder)!r}):
            print("locked", flush=True)
            time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_writer_is_refused_with_the_holders_pid(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = run_dir(tmp_path, "lstm")
    holder = _hold_lock(run)
    try:
        for extra in ([], ["--resume"], ["--overwrite"]):
            expect_usage_error(["--core", "lstm", "-f", str(tmp_path), *TINY, *extra], capsys,
                               "in use by another rimrl process", f"pid {holder.pid}")
        out = tmp_path / "eval"
        holder2 = _hold_lock(out)
        try:
            with pytest.raises(SystemExit) as exit_info:
                _evaluate([str(trained), "--episodes", "1", "--out", str(out)])
            assert exit_info.value.code == 2
            assert_one_line_error(capsys, "--out folder", f"pid {holder2.pid}")
        finally:
            holder2.kill()
            holder2.wait()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: the run can start now
    assert main(["--core", "lstm", "-f", str(tmp_path), *TINY, "--overwrite"]) == 0


def test_the_lock_is_released_and_reacquired_in_process(tmp_path: Path) -> None:
    with directory_lock(tmp_path / "x"):
        pass
    with directory_lock(tmp_path / "x"):
        pass


# ----------------------------------------------------------------------------------------------
# 8. Smaller: file modes, Ctrl-C during the imports
# ----------------------------------------------------------------------------------------------


def test_atomic_files_get_the_umask_mode(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "a.txt", "x")
    from rimrl.agents.training import _UMASK

    assert path.stat().st_mode & 0o777 == 0o666 & ~_UMASK


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_ctrl_c_during_the_imports_exits_130_without_a_traceback(script: str) -> None:
    # Deterministic stand-in for a Ctrl-C that lands while torch is being imported: the first
    # ``import torch`` raises KeyboardInterrupt, then the script runs as ``python <script>`` would.
    driver = textwrap.dedent(f"""
        import builtins, runpy, sys
        original = builtins.__import__
        def interrupted_import(name, *args, **kwargs):
            if name == "torch" or name.startswith("torch."):
                builtins.__import__ = original
                raise KeyboardInterrupt
            return original(name, *args, **kwargs)
        builtins.__import__ = interrupted_import
        sys.argv = [{str(ROOT / script)!r}, "--help"]
        runpy.run_path(sys.argv[0], run_name="__main__")
    """)
    proc = subprocess.run([sys.executable, "-c", driver], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == "interrupted", proc.stderr
