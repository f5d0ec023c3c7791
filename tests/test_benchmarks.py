"""Smoke tests of the benchmark scripts' machinery (the figures themselves come from full runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

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
