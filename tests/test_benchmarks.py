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
