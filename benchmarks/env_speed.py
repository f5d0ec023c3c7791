"""Environment throughput: rimrl's env paths against the stock SB3 / MiniGrid ones.

Measures environment steps per second (summed over the parallel envs) under uniformly random
actions, after a short warm-up, excluding construction:

- Atari, Breakout, 8 envs: rimrl's ale-py ``AtariVectorEnv`` adapter (``make_atari_vec_env``)
  against SB3's ``make_atari_env`` in a ``SubprocVecEnv`` (the same preprocessing in Python), and
  beside them ale-py's ``AtariVectorEnv`` stepped alone, without the adapter: the native speed
  the adapter should keep.
Configurations are timed round-robin, ``--repeats`` times, each round starting one config
later than the one before (so none always runs first, or right after SB3's worker processes
exit), and the median is reported, so a burst of background load does not favour one side.
Beside them, the emulator alone (ale-py's ``ALEInterface.act`` four times per agent step, no
screen read, no preprocessing, one process):
its CPU cost per step is a floor no Atari adapter can go under, so the SB3 path's CPU cost over it
bounds the CPU ratio any adapter can reach on this machine.

- MiniGrid, 8 envs in a ``DummyVecEnv``: every distractor-suite id through ``make_env`` (dict
  observations, Monitor) against raw ``MiniGrid-Fetch-8x8-N3-v0`` with ``ImgObsWrapper``.

Usage::

    python benchmarks/env_speed.py                 # 2000 steps per env, median of 3 interleaved repeats
    python benchmarks/env_speed.py --quick         # 300 steps, 1 repeat, only two suite ids
    python benchmarks/env_speed.py --steps 5000 --json results/env_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from minigrid.wrappers import ImgObsWrapper
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rimrl.envs import DISTRACTOR_SUITES, make_atari_vec_env, make_env, make_sb3_atari_vec_env

WARMUP_STEPS = 50
ADAPTER = "rimrl AleVecEnv (ale-py C++ threads)"
NATIVE_ALE = "ale-py AtariVectorEnv alone (no adapter)"


@dataclass
class Measurement:
    """Throughput of one configuration: the median (and best) over interleaved repeats."""

    name: str
    group: str  # "atari" or "minigrid": ratios are taken within a group
    backend: str
    n_envs: int
    steps_per_env: int
    steps_per_second: float  # median over repeats
    best_steps_per_second: float
    cpu_us_per_step: float  # median over repeats, worker processes included
    repeats: list[float] = field(default_factory=list)
    baseline: bool = False
    ratio_to_baseline: float | None = None  # steps/s over the baseline's
    cpu_ratio_to_baseline: float | None = None  # baseline's CPU per step over this one's


@dataclass
class Config:
    """A VecEnv (or :class:`NativeAle`) to time."""

    name: str
    group: str
    backend: str
    build: Callable[[], Any]
    baseline: bool = False


class NativeAle:
    """ale-py's ``AtariVectorEnv`` stepped directly: the adapter's own C++ envs, same settings,
    none of its bookkeeping. Offers the few ``VecEnv`` members :func:`time_steps` uses."""

    def __init__(self, n_envs: int, seed: int = 0) -> None:
        self._adapter = make_atari_vec_env("Breakout", n_envs=n_envs, seed=seed)
        self._ale = self._adapter.ale_vector_env
        self.num_envs = n_envs
        self.action_space = self._adapter.action_space
        self.unwrapped = self

    def reset(self) -> None:
        self._adapter.reset()  # seeded reset of the same C++ envs

    def step(self, actions: np.ndarray) -> None:
        self._ale.step(actions.astype(np.int32))

    def close(self) -> None:
        self._adapter.close()


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc (Linux); NaN if unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(venv: VecEnv) -> float:
    """CPU seconds used so far by this process (all threads) and by ``venv``'s worker processes."""
    total = time.process_time()
    inner = venv.unwrapped
    if isinstance(inner, SubprocVecEnv):
        total += sum(_process_cpu_seconds(proc.pid) for proc in inner.processes)
    return total


def time_steps(build: Callable[[], Any], steps: int, seed: int = 0) -> tuple[int, float, float]:
    """Build a VecEnv, warm it up, then time ``steps`` random-action steps.

    Returns (n_envs, env steps per wall-clock second, CPU microseconds per env step). The CPU cost
    counts worker processes too, so it is a load-independent measure of the work per step.
    """
    venv = build()
    try:
        rng = np.random.default_rng(seed)
        actions = rng.integers(0, venv.action_space.n, size=(WARMUP_STEPS + steps, venv.num_envs))
        venv.reset()
        for t in range(WARMUP_STEPS):
            venv.step(actions[t])
        cpu_start, start = cpu_seconds(venv), time.perf_counter()
        for t in range(WARMUP_STEPS, WARMUP_STEPS + steps):
            venv.step(actions[t])
        seconds, cpu = time.perf_counter() - start, cpu_seconds(venv) - cpu_start
    finally:
        venv.close()
    total = steps * venv.num_envs
    return venv.num_envs, total / seconds, cpu / total * 1e6


def emulator_cpu_us_per_step(game: str, steps: int, frame_skip: int = 4, seed: int = 0) -> float:
    """CPU microseconds per agent step of the bare emulator: ``frame_skip`` ``act`` calls, random actions."""
    from ale_py import ALEInterface, LoggerMode, roms

    ALEInterface.setLoggerMode(LoggerMode.Error)
    ale = ALEInterface()
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(roms.get_rom_path(game))
    actions = ale.getMinimalActionSet()
    choices = np.random.default_rng(seed).integers(0, len(actions), size=WARMUP_STEPS + steps)
    start = 0.0
    for t, choice in enumerate(choices):
        if t == WARMUP_STEPS:
            start = time.process_time()
        for _ in range(frame_skip):
            ale.act(actions[choice])
        if ale.game_over():
            ale.reset_game()
    return (time.process_time() - start) / steps * 1e6


def fetch_baseline(n_envs: int, seed: int) -> VecEnv:
    def thunk(rank: int) -> Callable[[], gym.Env]:
        return lambda: ImgObsWrapper(gym.make("MiniGrid-Fetch-8x8-N3-v0"))

    venv = DummyVecEnv([thunk(i) for i in range(n_envs)])
    venv.seed(seed)
    return venv


def configs(n_envs: int, quick: bool) -> list[Config]:
    found = [
        Config(
            "Breakout",
            "atari",
            ADAPTER,
            lambda: make_atari_vec_env("Breakout", n_envs=n_envs, seed=0),
        ),
        Config("Breakout", "atari", NATIVE_ALE, lambda: NativeAle(n_envs)),
        Config(
            "Breakout",
            "atari",
            "SB3 make_atari_env + SubprocVecEnv",
            lambda: make_sb3_atari_vec_env("Breakout", n_envs=n_envs, seed=0, vec_env_cls=SubprocVecEnv),
            baseline=True,
        ),
        Config(
            "MiniGrid-Fetch-8x8-N3-v0",
            "minigrid",
            "raw MiniGrid + ImgObsWrapper, DummyVecEnv",
            lambda: fetch_baseline(n_envs, 0),
            baseline=True,
        ),
    ]
    suite_ids = [variants[v] for variants in DISTRACTOR_SUITES.values() for v in variants]
    if quick:
        suite_ids = [
            DISTRACTOR_SUITES["pickup"]["train"],
            DISTRACTOR_SUITES["pickup-instructed"]["more+novel"],
        ]
    for env_id in suite_ids:
        found.append(
            Config(
                env_id,
                "minigrid",
                "rimrl make_env, DummyVecEnv",
                lambda env_id=env_id: make_env(env_id, n_envs=n_envs, seed=0),
            )
        )
    return found


def run(steps: int, n_envs: int, quick: bool, repeats: int, only: str | None = None) -> list[Measurement]:
    """Time every config (of group ``only``, if given) ``repeats`` times, round-robin so that
    background load hits all alike; round ``r`` starts at config ``r mod len(configs)``."""
    todo = [cfg for cfg in configs(n_envs, quick) if only is None or cfg.group == only]
    samples: list[list[float]] = [[] for _ in todo]
    cpu_samples: list[list[float]] = [[] for _ in todo]
    envs_used = [0] * len(todo)
    for round_index in range(repeats):
        for position in range(len(todo)):
            i = (round_index + position) % len(todo)
            envs_used[i], sps, cpu_us = time_steps(todo[i].build, steps)
            samples[i].append(sps)
            cpu_samples[i].append(cpu_us)
    results = [
        Measurement(
            name=cfg.name,
            group=cfg.group,
            backend=cfg.backend,
            n_envs=envs_used[i],
            steps_per_env=steps,
            steps_per_second=float(np.median(samples[i])),
            best_steps_per_second=max(samples[i]),
            cpu_us_per_step=float(np.median(cpu_samples[i])),
            repeats=samples[i],
            baseline=cfg.baseline,
        )
        for i, cfg in enumerate(todo)
    ]
    for group in {m.group for m in results}:
        base = next(m for m in results if m.group == group and m.baseline)
        for m in results:
            if m.group == group:
                m.ratio_to_baseline = m.steps_per_second / base.steps_per_second
                m.cpu_ratio_to_baseline = base.cpu_us_per_step / m.cpu_us_per_step
    return results


def format_table(results: list[Measurement]) -> str:
    """Columns: wall-clock steps/s and its ratio to the group's baseline; CPU us/step and the
    baseline's CPU cost over this one's (both ratios > 1 mean faster than the baseline)."""
    header = f"{'env':<36} {'backend':<42} {'envs':>4} {'steps/s':>8} {'ratio':>6} {'cpu us/step':>11} {'cpu ratio':>9}"
    lines = [header, "-" * len(header)]
    for m in results:
        ratio = "base" if m.baseline else f"{m.ratio_to_baseline:.2f}x"
        cpu_ratio = "base" if m.baseline else f"{m.cpu_ratio_to_baseline:.2f}x"
        lines.append(
            f"{m.name:<36} {m.backend:<42} {m.n_envs:>4} {m.steps_per_second:>8.0f} {ratio:>6} "
            f"{m.cpu_us_per_step:>11.0f} {cpu_ratio:>9}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed steps per env per measurement")
    parser.add_argument("--n-envs", type=int, default=8, help="parallel envs per measurement")
    parser.add_argument("--quick", action="store_true", help="300 steps and two suite ids (smoke run)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median is reported")
    parser.add_argument("--only", choices=("atari", "minigrid"), help="run one group of measurements")
    parser.add_argument("--json", metavar="PATH", help="also write the measurements as JSON")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.n_envs < 1:
        parser.error("--n-envs must be >= 1")
    steps = min(args.steps, 300) if args.quick else args.steps
    repeats = 1 if args.quick else args.repeats

    load_before = os.getloadavg()[0]
    results = run(steps, args.n_envs, args.quick, repeats, args.only)
    emulator_us = None
    if args.only in (None, "atari"):
        emulator_us = float(np.median([emulator_cpu_us_per_step("breakout", steps * 2) for _ in range(repeats)]))
    load_after = os.getloadavg()[0]
    print(
        f"{steps} random-action steps per env after {WARMUP_STEPS} warm-up steps, median of {repeats} "
        f"interleaved repeats; {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
        f"1-min load average {load_before:.1f} before, {load_after:.1f} after (other processes skew "
        f"steps/s, not CPU us/step)"
    )
    print(format_table(results))
    if emulator_us is not None:
        sb3 = next(m for m in results if m.group == "atari" and m.baseline)
        adapter, native = (next(m for m in results if m.backend == name) for name in (ADAPTER, NATIVE_ALE))
        print(
            f"Adapter against ale-py alone: {adapter.steps_per_second / native.steps_per_second:.2f}x its "
            f"steps/s at {adapter.cpu_us_per_step / native.cpu_us_per_step:.2f}x its CPU per step"
        )
        print(
            f"Breakout emulator alone (ALEInterface.act x4 per step, no preprocessing): {emulator_us:.0f} "
            f"CPU us/step; the SB3 path's {sb3.cpu_us_per_step:.0f} over it bounds any adapter's CPU "
            f"ratio at {sb3.cpu_us_per_step / emulator_us:.2f}x"
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        payload = {
            "steps_per_env": steps,
            "n_envs": args.n_envs,
            "repeats": repeats,
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "python": platform.python_version(),
            "emulator_cpu_us_per_step": emulator_us,
            "results": [asdict(m) for m in results],
        }
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
