"""Training throughput (env-steps/s) of rimrl's policies against sb3-contrib's RecurrentPPO LSTM.

All runs share one process, one env id and the same settings: 8 envs, n_steps 128, batch 256,
4 epochs, ``torch.set_num_threads(1)``, and the env's preset for the other hyperparameters. The
reference is sb3-contrib's ``RecurrentPPO`` with its own LSTM policy (``MlpLstmPolicy``, or
``MultiInputLstmPolicy`` for dict observations); rimrl's policies use the ``policy_kwargs`` of the
env's preset (``configs/minigrid.yml`` on MiniGrid, ``configs/vector.yml`` on ``CartPoleNoVel-v1``:
episodes of up to 500 steps, where sb3-contrib's LSTM runs whole sequences through cuDNN-style
``nn.LSTM`` calls rather than its per-step loop). Ratios are measured in the same run, never against
stored absolute times, and the policies of one seed train interleaved, one rollout (and its
training epochs) each in turn, so that drift in the machine's speed hits them alike. (Chunked
``learn`` calls restart SB3's progress counter, which only matters for decaying schedules; the
MiniGrid preset's are constant.) Each run also reports the mean return and success of its last 100
training episodes, so ``--ablation`` runs with enough ``--timesteps`` compare learning too.

Per run it also reports where the time goes: env stepping, the policy's forward pass while
collecting rollouts, and in training the forward pass (``evaluate_actions``), ``backward`` and
the optimiser step.

    python benchmarks/throughput.py                       # full table (16384 steps per policy)
    python benchmarks/throughput.py --quick               # 4096 steps per policy
    python benchmarks/throughput.py --json benchmarks/out/throughput.json --policies ref lstm rim
    python benchmarks/throughput.py --env CartPoleNoVel-v1           # long episodes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch as th

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from sb3_contrib import RecurrentPPO  # noqa: E402
from stable_baselines3.common.vec_env import VecEnv  # noqa: E402

SUITE_ENV = "rimrl/Pickup-Train-v0"
FALLBACK_ENV = "MiniGrid-Fetch-8x8-N3-v0"
SETTINGS = dict(n_steps=128, batch_size=256, n_epochs=4)
N_ENVS = 8
POLICY_NAMES = ("ref", "ref-sized", "lstm", "gru", "rim", "srm")
#: The keys of the lstm preset's policy_kwargs that ``ref-sized`` hands to sb3-contrib's policy
#: (its width and who owns the critic's state); the preset's encoder settings are rimrl's own.
REF_SIZED_KEYS = ("lstm_hidden_size", "n_lstm_layers", "shared_lstm", "enable_critic_lstm")

# Ablations: (label, core, policy_kwargs merged over the preset's).
ABLATIONS: dict[str, list[tuple[str, str, dict[str, Any]]]] = {
    # Who owns the critic's recurrent state: one core trained by both losses (the default), one
    # core trained by the actor loss only (sb3-contrib's shared_lstm), or a second core.
    "critic": [
        (f"{core}/{label}", core, kwargs)
        for core in ("lstm", "rim")
        for label, kwargs in (
            ("shared", dict(shared_lstm=True, enable_critic_lstm=False, shared_core_value_grad=True)),
            ("shared-detached", dict(shared_lstm=True, enable_critic_lstm=False, shared_core_value_grad=False)),
            ("separate", dict(shared_lstm=False, enable_critic_lstm=True)),
        )
    ],
    # LSTM input: the flattened tokens directly, or through a Linear+ReLU projection; token size.
    "projection": [
        (f"lstm/d{dim}/{'proj' + str(proj) if proj else 'flat'}", "lstm",
         dict(core_input_projection=proj, features_extractor_kwargs=dict(token_dim=dim)))
        for dim in (16, 32)
        for proj in (None, 64, 128)
    ],
}


def default_env_id() -> str:
    """The rimrl pick-up suite if ``rimrl.envs`` registers it, else MiniGrid Fetch."""
    try:
        import gymnasium as gym

        import rimrl.envs  # noqa: F401  (registers the suite ids)

        gym.spec(SUITE_ENV)
        return SUITE_ENV
    except Exception:
        return FALLBACK_ENV


def make_vec_env(env_id: str, seed: int) -> VecEnv:
    """8 envs in a DummyVecEnv. Registered MiniGrid ids outside the suite get ``ImgObsWrapper`` (a
    (7, 7, 3) 0..255 box, which SB3 treats as an image); suite ids and any other gymnasium id
    (``CartPoleNoVel-v1``, ...) go through ``rimrl.envs.make_env``."""
    from rimrl.envs import is_minigrid, make_env

    if env_id.startswith("rimrl/") or not is_minigrid(env_id):
        return make_env(env_id, n_envs=N_ENVS, seed=seed)
    from minigrid.wrappers import ImgObsWrapper
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

    return sb3_make_vec_env(env_id, n_envs=N_ENVS, seed=seed, wrapper_class=ImgObsWrapper)


#: Clocks for --clock. "cpu" (this process's CPU time) keeps ratios meaningful on a shared machine
#: where other jobs take cores away at random moments; with one torch thread and a DummyVecEnv the
#: process is single-threaded, so on an idle machine CPU time and wall time agree.
CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


class PhaseTimer:
    """Accumulates time per phase by wrapping callables (and ``Tensor.backward`` while active)."""

    def __init__(self, clock: Callable[[], float] = time.process_time) -> None:
        self.totals: dict[str, float] = {}
        self.clock = clock

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[name] = self.totals.get(name, 0.0) + self.clock() - start

        return timed

    @contextmanager
    def backward(self):
        original = th.Tensor.backward
        th.Tensor.backward = self.wrap("backward", original)  # type: ignore[method-assign]
        try:
            yield
        finally:
            th.Tensor.backward = original  # type: ignore[method-assign]


def build_model(name: str, env: VecEnv, env_id: str, seed: int, extra_kwargs: dict[str, Any] | None = None) -> RecurrentPPO:
    """The reference (sb3-contrib's LSTM policy) or a rimrl policy.

    Every run uses the preset of the env's family (``configs/minigrid.yml`` for MiniGrid,
    ``configs/vector.yml`` with its ``envs`` section for ``CartPoleNoVel-v1``, ...: learning rate,
    entropy, ...; they do not change the cost of a step) with the benchmark's fixed ``SETTINGS``;
    rimrl's policies also get the preset's ``policy_kwargs`` for their core, with ``extra_kwargs``
    merged over them. The reference (``ref``) keeps sb3-contrib's own policy defaults
    (``lstm_hidden_size=256``, a second LSTM for the critic); ``ref-sized`` is sb3-contrib's policy
    given the lstm preset's width and critic setting (:data:`REF_SIZED_KEYS`), the same network
    as rimrl's ``lstm`` policy in sb3-contrib's code.
    """
    from rimrl.agents import resolve_hyperparams

    core = "lstm" if name.startswith("ref") else name
    overrides = {"policy_kwargs": extra_kwargs} if extra_kwargs else None
    params = resolve_hyperparams(env_id, core, overrides=overrides)
    params.pop("n_envs", None)
    policy_kwargs = params.pop("policy_kwargs", {})
    params.update(SETTINGS)
    if name.startswith("ref"):
        from gymnasium import spaces

        policy = "MultiInputLstmPolicy" if isinstance(env.observation_space, spaces.Dict) else "MlpLstmPolicy"
        sized = {k: policy_kwargs[k] for k in REF_SIZED_KEYS if k in policy_kwargs} if name == "ref-sized" else {}
        return RecurrentPPO(policy, env, seed=seed, policy_kwargs=sized, **params)
    from rimrl.policies import POLICIES

    return RecurrentPPO(POLICIES[name], env, seed=seed, policy_kwargs=policy_kwargs, **params)


class TimedRun:
    """One policy's training run, advanced a chunk at a time so several runs can take turns.

    The runs of one seed are interleaved rollout by rollout (see ``measure_interleaved``): on a
    shared machine whose speed drifts over tens of seconds, back-to-back runs would compare a fast
    minute with a slow one, while interleaved runs see the same drift.
    """

    def __init__(
        self,
        name: str,
        env_id: str,
        seed: int,
        label: str | None = None,
        extra_kwargs: dict | None = None,
        clock: str = "cpu",
    ) -> None:
        self.label, self.seed, self.clock = label or name, seed, clock
        self.env = make_vec_env(env_id, seed)
        self.model = model = build_model(name, self.env, env_id, seed, extra_kwargs)
        model.learn(N_ENVS * SETTINGS["n_steps"])  # warm-up: allocator, first-call overheads
        self.timer = timer = PhaseTimer(CLOCKS[clock])
        model.collect_rollouts = timer.wrap("rollout", model.collect_rollouts)  # type: ignore[method-assign]
        model.train = timer.wrap("train", model.train)  # type: ignore[method-assign]
        vec = model.get_env()
        vec.step_wait = timer.wrap("env_step", vec.step_wait)  # type: ignore[method-assign]
        policy = model.policy
        policy.forward = timer.wrap("rollout_forward", policy.forward)  # type: ignore[method-assign]
        policy.evaluate_actions = timer.wrap("train_forward", policy.evaluate_actions)  # type: ignore[method-assign]
        policy.optimizer.step = timer.wrap("optimizer_step", policy.optimizer.step)  # type: ignore[method-assign]
        self.minibatch_shapes: list[tuple[int, int]] = []  # (padded length, sequences) per training call
        policy._process_sequence = self._record_shapes(policy._process_sequence)  # type: ignore[method-assign]
        self.started, self.seconds, self.cpu_seconds = False, 0.0, 0.0

    def _record_shapes(self, process_sequence: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap sb3-contrib's ``_process_sequence`` to note each training call's padded shape."""

        def recorded(features: th.Tensor, lstm_states: tuple[th.Tensor, th.Tensor], *args: Any) -> Any:
            if th.is_grad_enabled():
                sequences = lstm_states[0].shape[1]
                self.minibatch_shapes.append((features.shape[0] // sequences, sequences))
            return process_sequence(features, lstm_states, *args)

        return recorded

    @property
    def steps(self) -> int:
        """Timed steps so far (the first ``advance`` restarts SB3's counter after the warm-up)."""
        return self.model.num_timesteps if self.started else 0

    def advance(self, timesteps: int) -> None:
        """Train ``timesteps`` more steps (continuing the run), adding to the timers."""
        start, start_cpu = time.perf_counter(), time.process_time()
        with self.timer.backward():
            self.model.learn(timesteps, reset_num_timesteps=not self.started)
        self.started = True
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - start_cpu

    def result(self) -> dict[str, Any]:
        """steps/s, the phase breakdown and the mean return / success of the last 100 training
        episodes (what the speed buys)."""
        self.env.close()
        policy = self.model.policy
        phases = {k: round(v, 3) for k, v in sorted(self.timer.totals.items())}
        episodes = list(self.model.ep_info_buffer)
        return {
            "policy": self.label,
            "seed": self.seed,
            "ep_rew_mean": float(np.mean([e["r"] for e in episodes])) if episodes else None,
            "success_mean": float(np.mean([e["success"] for e in episodes])) if episodes and "success" in episodes[0] else None,
            "policy_class": type(policy).__name__,
            "core": type(getattr(policy, "core", policy.lstm_actor)).__name__,
            "critic": "separate" if policy.lstm_critic is not None else ("shared" if policy.shared_lstm else "mlp"),
            "parameters": sum(p.numel() for p in policy.parameters()),
            "timesteps": self.steps,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "steps_per_s": self.steps / self.seconds,
            "steps_per_cpu_s": self.steps / self.cpu_seconds,
            # The figure ratios use (see --clock).
            "throughput": self.steps / (self.cpu_seconds if self.clock == "cpu" else self.seconds),
            "phases_s": phases,
            # What the recurrent core is handed per training call: sequences padded to one length.
            "mean_padded_length": float(np.mean([t for t, _ in self.minibatch_shapes])) if self.minibatch_shapes else None,
            "mean_sequences": float(np.mean([b for _, b in self.minibatch_shapes])) if self.minibatch_shapes else None,
        }


def measure_interleaved(runs: list[TimedRun], timesteps: int) -> list[dict[str, Any]]:
    """Advance every run one rollout (``N_ENVS * n_steps`` steps, then its training epochs) at a
    time, round-robin, until each has trained ``timesteps`` steps."""
    chunk = N_ENVS * SETTINGS["n_steps"]
    while any(run.steps < timesteps for run in runs):
        for run in runs:
            if run.steps < timesteps:
                run.advance(min(chunk, timesteps - run.steps))
    return [run.result() for run in runs]


def srm_available() -> str | None:
    """``None`` if ``rimrl.cores`` builds an SRM core, else the reason it does not."""
    try:
        from rimrl.cores import CORES
    except Exception as error:  # pragma: no cover
        return f"rimrl.cores not importable: {error}"
    return None if "srm" in CORES else "rimrl.cores has no 'srm' core yet"


def print_table(results: list[dict[str, Any]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("policy", "seed", "core", "critic", "params", "steps/s", "steps/cpu-s", "x ref", "rollout s", "env s", "train s",
                   "train fwd s", "backward s", "return", "success"):
        table.add_column(column, justify="right" if column not in ("policy", "core", "critic") else "left")
    for r in results:
        ph = r["phases_s"]
        ratio = f"{r['ratio_to_ref']:.2f}" if r.get("ratio_to_ref") else "-"
        table.add_row(
            r["policy"], str(r["seed"]), r["core"], r["critic"], f"{r['parameters']:,}", f"{r['steps_per_s']:.0f}",
            f"{r['steps_per_cpu_s']:.0f}", ratio, f"{ph.get('rollout', 0):.2f}", f"{ph.get('env_step', 0):.2f}", f"{ph.get('train', 0):.2f}",
            f"{ph.get('train_forward', 0):.2f}", f"{ph.get('backward', 0):.2f}",
            "-" if r["ep_rew_mean"] is None else f"{r['ep_rew_mean']:.3f}",
            "-" if r["success_mean"] is None else f"{r['success_mean']:.2f}",
        )
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default=None, help=f"env id (default: {SUITE_ENV} if registered, else {FALLBACK_ENV})")
    parser.add_argument("--timesteps", type=int, default=None, help="timed env steps per policy (default 16384)")
    parser.add_argument("--quick", action="store_true", help="4096 timed steps per policy")
    parser.add_argument("--policies", nargs="+", default=list(POLICY_NAMES), choices=POLICY_NAMES)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed and policy")
    parser.add_argument("--ablation", choices=sorted(ABLATIONS), default=None,
                        help="instead of --policies, run the variants of an ablation (plus the reference)")
    parser.add_argument("--no-ref", action="store_true", help="with --ablation: skip the reference run")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="time base of 'x ref' and the phase columns: process CPU time (default; robust to "
                             "other jobs on the machine) or wall time")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    th.set_num_threads(1)
    env_id = args.env or default_env_id()
    timesteps = args.timesteps or (4096 if args.quick else 16384)
    notes: list[str] = []
    results: list[dict[str, Any]] = []
    if args.ablation:
        runs = ([] if args.no_ref else [("ref", "ref", None)]) + ABLATIONS[args.ablation]
    else:
        runs = [(name, name, None) for name in args.policies]
    for seed in args.seeds:
        timed = []
        for label, name, extra in runs:
            if name == "srm" and (reason := srm_available()) is not None:
                if seed == args.seeds[0]:
                    notes.append(f"srm skipped: {reason}")
                continue
            timed.append(TimedRun(name, env_id, seed, label=label, extra_kwargs=extra, clock=args.clock))
        for result in measure_interleaved(timed, timesteps):
            results.append(result)
            print(f"{result['policy']} (seed {seed}): {result['steps_per_s']:.0f} steps/s, "
                  f"{result['steps_per_cpu_s']:.0f} steps/cpu-s ({result['seconds']:.1f} s), "
                  f"return {result['ep_rew_mean']}, training calls: {result['mean_sequences']:.1f} "
                  f"sequences padded to {result['mean_padded_length']:.1f} steps on average", flush=True)
    # Ratios against the reference of the same seed (whose runs were interleaved with it).
    ref_by_seed = {r["seed"]: r["throughput"] for r in results if r["policy"] == "ref"}
    for r in results:
        ref = ref_by_seed.get(r["seed"])
        r["ratio_to_ref"] = r["throughput"] / ref if ref else None
    title = (f"{env_id}: {N_ENVS} envs, n_steps 128, batch 256, 4 epochs, 1 thread, {timesteps} steps; "
             f"x ref and phases in {args.clock} time")
    print_table(results, title)
    for note in notes:
        print(note)
    report = {
        "env": env_id,
        "timesteps": timesteps,
        "settings": {"n_envs": N_ENVS, **SETTINGS, "torch_threads": 1, "clock": args.clock},
        "machine": {"python": platform.python_version(), "torch": th.__version__, "cpu": platform.processor()},
        "results": results,
        "notes": notes,
        "command": "python benchmarks/throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
