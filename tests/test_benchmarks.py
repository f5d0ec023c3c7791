"""Smoke tests of the benchmark scripts' machinery (the figures themselves come from full runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import core_speed  # noqa: E402
from benchmarks._common import interleaved_seconds  # noqa: E402


def test_interleaved_seconds_times_every_function_each_round() -> None:
    calls: list[str] = []
    times = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-ups, then rounds in turn
    assert {name: len(samples) for name, samples in times.items()} == {"a": 3, "b": 3}


def test_core_speed_reports_a_ratio_per_core(tmp_path: Path) -> None:
    out = tmp_path / "core_speed.json"
    threads = torch.get_num_threads()
    core_speed.main(["--seq-len", "3", "--batch", "2", "--input", "8", "--hidden", "12", "--units", "6",
                     "--k", "2", "--grid-token-dim", "2", "--repeats", "2", "--json", str(out)])
    torch.set_num_threads(threads)
    results = json.loads(out.read_text())["results"]
    assert [r["core"] for r in results][:3] == ["rimrl LSTM", "rimrl GRU", "RIM (lstm cells)"]
    for r in results:
        assert len(r["seconds"]) == len(r["lstm_seconds"]) == 2 and r["ratio"] > 0


def test_throughput_interleaved_runs_count_their_own_steps() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import throughput

    runs = [throughput.TimedRun("lstm", "rimrl/Pickup-Train-v0", seed) for seed in (0, 1)]
    chunk = throughput.N_ENVS * throughput.SETTINGS["n_steps"]
    results = throughput.measure_interleaved(runs, 2 * chunk)
    assert [r["timesteps"] for r in results] == [2 * chunk, 2 * chunk]
    assert all(r["cpu_seconds"] > 0 and r["phases_s"]["train"] > 0 for r in results)
    assert all(r["mean_sequences"] >= 1 and 1 <= r["mean_padded_length"] <= throughput.SETTINGS["n_steps"] for r in results)


def test_env_speed_times_adapter_native_ale_and_sb3_in_one_run(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import env_speed

    out = tmp_path / "env_speed.json"
    env_speed.main(["--quick", "--steps", "10", "--n-envs", "2", "--json", str(out)])
    payload = json.loads(out.read_text())
    atari = [r for r in payload["results"] if r["group"] == "atari"]
    assert [r["backend"] for r in atari] == [
        env_speed.ADAPTER,
        env_speed.NATIVE_ALE,
        "SB3 make_atari_env + SubprocVecEnv",
    ]
    assert [r["baseline"] for r in atari] == [False, False, True]
    for r in payload["results"]:
        assert r["n_envs"] == 2 and r["steps_per_env"] == 10 and len(r["repeats"]) == 1
        assert r["steps_per_second"] > 0 and r["cpu_us_per_step"] > 0 and r["ratio_to_baseline"] > 0
    assert {r["name"] for r in payload["results"] if r["group"] == "minigrid"} >= {"MiniGrid-Fetch-8x8-N3-v0"}
    assert payload["emulator_cpu_us_per_step"] > 0


# ----------------------------------------------------------------------------------------------
# benchmarks/study.py: the out-of-distribution study in one command
# ----------------------------------------------------------------------------------------------

STUDY_TINY = ["--cores", "lstm", "rim", "--seeds", "0", "1", "-n", "1024", "--n-envs", "2", "--episodes", "4",
              "--eval-n-envs", "2", "--train-eval-episodes", "2", "--save-freq", "512", "--reps", "200", "--threads", "1", "-q",
              "--hyperparams", "n_steps=64", "batch_size=64", "n_epochs=1", "policy_kwargs.lstm_hidden_size=24"]


def test_study_trains_evaluates_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import study

    out = tmp_path / "study"
    threads = torch.get_num_threads()
    try:
        assert study.main([*STUDY_TINY, "--out", str(out)]) == 0
        first = capsys.readouterr().out
        for name in ("results.md", "results.json", "results.png", "curves.png"):
            assert (out / name).is_file() and (out / name).stat().st_size > 0, name
        markdown = (out / "results.md").read_text()
        assert "--cores lstm rim --seeds 0 1 -n 1024" in markdown.split("```")[1]  # the exact command
        cells = [[c.strip() for c in line.strip("|").split("|")] for line in markdown.splitlines() if line.startswith("| ")]
        variants = ["train", "more", "novel", "more+novel", "ood (more, novel, more+novel)"]
        success_rows = [c for c in cells if len(c) == 5 and c[0] in variants]
        assert [(c[0], c[1]) for c in success_rows] == [(v, core) for v in variants for core in ("lstm", "rim")]
        assert all(c[2] == "2" and c[4].startswith("s0 ") and ", s1 " in c[4] for c in success_rows)
        assert ["variant", "P(rim > lstm) [95% CI]"] in cells
        assert [c[0] for c in cells if len(c) == 2 and c[0] in variants] == variants
        assert "P(rim > lstm)" in first and "| train | lstm | 2 |" in first  # the tables are printed

        payload = json.loads((out / "results.json").read_text())
        assert payload["settings"]["episodes"] == 4 and payload["settings"]["deterministic"] is False
        assert {(r["core"], r["seed"]) for r in payload["runs"]} == {("lstm", 0), ("lstm", 1), ("rim", 0), ("rim", 1)}
        assert all(r["num_timesteps"] >= 1024 for r in payload["runs"])
        assert len(payload["evaluations"]) == 4 * 4 and all(e["episodes"] == 4 for e in payload["evaluations"])
        assert all(e["deterministic"] is False for e in payload["evaluations"])
        assert len(payload["success"]) == 5 * 2 and len(payload["probability_of_improvement"]) == 5
        assert all(0.0 <= p["ci_low"] <= p["probability"] <= p["ci_high"] <= 1.0
                   for p in payload["probability_of_improvement"])
        assert set(payload["curves"]["cores"]) == {"lstm", "rim"}

        # An interrupted run (a checkpoint at step 512, no model.zip) is resumed; the complete ones
        # are skipped, and their cached evaluations reused.
        run = out / "rimrl-Pickup-Train-v0" / "lstm" / "seed1"
        for name in ("model.zip", "final_metrics.json", "checkpoints/model_1024_steps.zip"):
            (run / name).unlink()
        assert study.main([*STUDY_TINY, "--out", str(out), "--dry-run"]) == 0
        plan = capsys.readouterr().out
        assert "complete (skipped): 3; to resume: 1; to start: 0" in plan
        assert study.main([*STUDY_TINY, "--out", str(out)]) == 0
        capsys.readouterr()
        assert (run / "model.zip").is_file()
        config = yaml.safe_load((run / "config.yml").read_text())
        assert len(config["sessions"]) == 2 and config["sessions"][1]["from_timesteps"] == 512
        for core, seed in (("lstm", 0), ("rim", 1)):
            assert (out / "eval" / core / f"seed{seed}" / "study_eval.json").is_file()

        # benchmarks/learning.py reads the same runs (a resumed one too).
        from benchmarks import learning

        runs = sorted((out / "rimrl-Pickup-Train-v0").glob("*/seed*"))
        learning.main([*map(str, runs), "--bin", "512", "--json", str(tmp_path / "learning.json")])
        table = json.loads((tmp_path / "learning.json").read_text())
        assert [(r["core"], r["seed"]) for r in table["runs"]] == [("lstm", 0), ("lstm", 1), ("rim", 0), ("rim", 1)]
        assert all(len(r["success"]) == 2 and 0.0 <= r["last_fifth"] <= 1.0 for r in table["runs"])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize(("argv", "message"), [
    (["--seeds", "0", "0"], "--seeds lists 0 twice"),
    (["-n", "0"], "-n/--n-timesteps must be >= 1"),
    (["--episodes", "abc"], "not an integer"),
    (["--cores", "transformer"], "invalid choice"),
    (["--hyperparams", "n_steps"], "key=value"),
    (["--sequence-length", "16"], "--sequence-length is an option of the JAX trainer"),
])
def test_study_rejects_bad_arguments(argv: list[str], message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import study

    with pytest.raises(SystemExit) as exit_info:
        study.main([*argv, "--out", str(tmp_path / "study"), "--dry-run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "study").exists()


def test_study_refuses_a_finished_run_with_another_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import study

    run = tmp_path / "rimrl-Pickup-Train-v0" / "lstm" / "seed0"
    run.mkdir(parents=True)
    (run / "model.zip").write_bytes(b"")
    (run / "final_metrics.json").write_text(json.dumps({"num_timesteps": 2048}))
    (run / "config.yml").write_text(yaml.safe_dump({"env": "rimrl/Pickup-Train-v0", "core": "lstm", "seed": 0,
                                                    "n_timesteps": 2048, "overrides": {}}))
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--cores", "lstm", "--seeds", "0", "-n", "1024", "--out", str(tmp_path), "--dry-run"])
    assert exit_info.value.code == 2
    assert "-n 2_048, not 1_024" in capsys.readouterr().err



@pytest.mark.parametrize(("saved", "argv", "message"), [
    ({"n_steps": 128, "sequence_length": None}, [], "--sequence-length 128, not 16"),  # a whole-column run
    ({"n_steps": 128, "sequence_length": 16}, ["--sequence-length", "32"], "--sequence-length 16, not 32"),
])
def test_jax_study_refuses_a_run_trained_with_another_sequence_length(
        saved: dict, argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import study

    run = tmp_path / "rimrl-Pickup-Train-v0" / "lstm" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yml").write_text(yaml.safe_dump({"env": "rimrl/Pickup-Train-v0", "core": "lstm", "seed": 0,
                                                    "n_timesteps": 1024, "backend": "jax", "hyperparams": saved}))
    with pytest.raises(SystemExit) as exit_info:
        study.main(["--backend", "jax", "--cores", "lstm", "--seeds", "0", "-n", "1024", *argv,
                    "--out", str(tmp_path), "--dry-run"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

def test_study_learning_curve_bins_and_drops_replayed_steps(tmp_path: Path) -> None:
    from rimrl.evaluation.curves import curve_edges, training_success

    (tmp_path / "monitor").mkdir()
    # Session 0 ran to step 40 but was resumed from its checkpoint at step 30: its last episode is dropped.
    (tmp_path / "config.yml").write_text(yaml.safe_dump({"sessions": [{"from_timesteps": 0}, {"from_timesteps": 30}]}))
    header = '#{"t_start": 0, "env_id": "x"}\nr,l,t,success\n'
    (tmp_path / "monitor" / "session0.monitor.csv").write_text(
        header + "1,10,0,True\n0,10,0,False\n1,10,0,True\n1,10,0,True\n")
    (tmp_path / "monitor" / "session1.monitor.csv").write_text(header + "0,5,0,False\n1,25,0,True\n")
    edges = curve_edges(50, 20)
    assert edges.tolist() == [0, 20, 40, 50]
    curve = training_success(tmp_path, edges)
    # ends: 10 (1), 20 (0) | 30 (1), 35 (0) | 60 -> clipped to 50 (1); the session-0 episode ending at 40 is dropped
    assert curve.tolist() == [0.5, 0.5, 1.0]


def test_jax_speed_snippets_time_torch_jax_and_the_compute_bound() -> None:
    """The three child processes of benchmarks/jax_speed.py, each once (the LSTM, one rollout)."""
    pytest.importorskip("jax", reason="benchmarks/jax_speed.py needs the jax extra: pip install 'rimrl[jax]'")
    from benchmarks import jax_speed

    env = jax_speed.ENV
    torch_run = jax_speed._run(jax_speed._TORCH.format(env=env), ["lstm", "1024"])
    jax_run = jax_speed._run(jax_speed._JAX.format(env=env), ["lstm", "1024", "index", "16"])
    assert torch_run["steps"] == jax_run["steps"] == 1024 and jax_run["compile_s"] > 0
    assert torch_run["seconds"] > 0 and jax_run["cpu_seconds"] > 0
    bound = jax_speed._run(jax_speed._BOUND.format(env=env), ["lstm"])
    # One shared LSTM step: the encoder's projection and the LSTM's matmuls dominate (> 0.3 MFLOP).
    assert bound["flops_per_row_step"] > 3e5 and bound["n_epochs"] == 4 and bound["matmul_flops_per_s"] > 1e9
