"""``--track`` (W&B, offline), TensorBoard hyperparameters and ``--exp-id``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rimrl.cli.train import main

ENV_DIR = "rimrl-Pickup-Train-v0"
TINY = [
    "--core", "lstm", "-n", "128", "--n-envs", "2", "--eval-freq", "64", "--eval-episodes", "1",
    "--save-freq", "64", "-q",
    "--hyperparams", "n_steps=32", "batch_size=32", "n_epochs=1", "policy_kwargs.lstm_hidden_size=24",
]


def event_file(run_dir: Path) -> Path:
    [found] = list((run_dir / "tb").glob("RecurrentPPO_*/events.out.tfevents.*"))
    return found


def test_tensorboard_gets_the_hyperparameters_as_hparams_and_text(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["-f", str(tmp_path), *TINY]) == 0
    events = EventAccumulator(str(event_file(tmp_path / ENV_DIR / "lstm" / "seed0")), size_guidance={"tensors": 0})
    events.Reload()
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert "hyperparameters/text_summary" in events.Tags()["tensors"]
    [text] = events.Tensors("hyperparameters/text_summary")
    body = text.tensor_proto.string_val[0].decode()
    assert "lstm_hidden_size: 24" in body and "learning_rate" in body


def test_track_writes_an_offline_wandb_run_with_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")  # a safety net: `make test` installs the extra
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert main(["-f", str(tmp_path), "--track", "--wandb-project", "rimrl-test", *TINY]) == 0
    run_dir = tmp_path / ENV_DIR / "lstm" / "seed0"
    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    [log] = list(offline.glob(f"run-{run_id}.wandb"))
    # The record log holds the config (config.yml's content) and the run's name (its directory).
    # W&B's service writes it out shortly after run.finish() returns: wait for it.
    fragments = (b"rimrl/Pickup-Train-v0", b"lstm_hidden_size", b"rimrl-Pickup-Train-v0/lstm/seed0", b"tensorboard_dir")
    deadline = time.time() + 60
    while not all(f in log.read_bytes() for f in fragments) and time.time() < deadline:
        time.sleep(0.5)
    data = log.read_bytes()
    for fragment in fragments:
        assert fragment in data, fragment


def test_exp_id_makes_a_new_directory_instead_of_refusing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    short = [*TINY, "--eval-freq", "0", "--save-freq", "0"]
    short[short.index("-n") + 1] = "64"
    assert main(["-f", str(tmp_path), *short]) == 0
    with pytest.raises(SystemExit) as info:  # the default still protects an existing run
        main(["-f", str(tmp_path), *short])
    assert info.value.code == 2 and "--exp-id" not in capsys.readouterr().out
    assert main(["-f", str(tmp_path), "--exp-id", "auto", *short]) == 0
    assert main(["-f", str(tmp_path), "--exp-id", "auto", *short]) == 0
    assert main(["-f", str(tmp_path), "--exp-id", "7", *short]) == 0
    folder = tmp_path / ENV_DIR / "lstm"
    assert sorted(p.name for p in folder.iterdir()) == ["seed0", "seed0_2", "seed0_3", "seed0_7"]
    assert (folder / "seed0_3" / "model.zip").is_file()
    # auto + --resume continues the latest one (already complete here: nothing to do).
    assert main(["-f", str(tmp_path), "--exp-id", "auto", "--resume", *short]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["seed0", "seed0_2", "seed0_3", "seed0_7"]
