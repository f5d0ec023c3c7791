"""Train a recurrent PPO agent end to end in JAX on the distractor suite; save it as an SB3 model.

    python -m rimrl.jax.train --env rimrl/Pickup-Train-v0 --core rim --seed 0 -n 300000 -f runs/jax

The agent starts as the torch agent ``train.py`` would build (``rimrl.agents.make_agent`` with the
MiniGrid preset and the same seed, converted by :func:`rimrl.jax.policy.policy_from_torch`), so
the initialisation, the network and the PPO settings are the preset's. Training runs
:func:`rimrl.jax.ppo.make_update` (rollouts on :mod:`rimrl.jax.envs`, GAE and the PPO epochs in
one jit) once per rollout. The run directory has train.py's layout, so ``evaluate.py`` reads it:
``config.yml`` (``backend: jax``), ``monitor/session0.monitor.csv`` (every training episode:
``r, l, t, success``), ``model.zip`` (the trained parameters written back into the torch policy,
saved by SB3) with its pickle-free ``model.weights.pt`` + ``model.spec.json``, and
``final_metrics.json`` (steps, wall time, steps/s, compile time, success of the last 100 training
episodes). Exit status: 0 done, 2 bad arguments (nothing created), 130 interrupted (nothing saved
but the monitor file).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

CORES = ("lstm", "gru", "rim", "srm")
MONITOR_FILE = "monitor/session0.monitor.csv"


def ppo_settings(env_id: str, core: str, n_envs: int | None = None) -> Any:
    """:class:`~rimrl.jax.ppo.PPOSettings` from the MiniGrid preset (constant schedules only)."""
    from rimrl.agents import resolve_hyperparams
    from rimrl.jax.ppo import PPOSettings

    params = resolve_hyperparams(env_id, core)
    values = {}
    for name in ("n_steps", "batch_size", "n_epochs", "learning_rate", "gamma", "gae_lambda", "clip_range",
                 "ent_coef", "vf_coef", "max_grad_norm"):
        if name in params:
            value = params[name]
            if callable(value):
                raise ValueError(f"rimrl.jax trains with constant {name}; the preset has a schedule")
            values[name] = value
    return PPOSettings(n_envs=n_envs or int(params.get("n_envs", 8)), **values)


def make_jax_ready_agent(env: Any, core: str, seed: int, tie_break: str = "index") -> Any:
    """The torch agent train.py builds (``make_agent`` with the preset), its RIM/SRM core set to
    ``tie_break`` (saved with the model, so torch then breaks ties as the JAX training did)."""
    from rimrl.agents import make_agent

    overrides = {"policy_kwargs.core_kwargs.tie_break": tie_break} if core in ("rim", "srm") else {}
    return make_agent(env, core=core, seed=seed, **overrides)


def run_dir_for(log_folder: str | Path, env_id: str, core: str, seed: int) -> Path:
    from rimrl.experiments.io import run_dir_for as torch_layout

    return torch_layout(log_folder, env_id, core, seed)


def train(env_id: str, core: str, seed: int, n_timesteps: int, log_folder: str | Path, overwrite: bool = False,
          tie_break: str = "index", n_envs: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train and save one agent; returns the final metrics. See the module docstring."""
    import jax
    import torch
    from stable_baselines3.common.monitor import ResultsWriter

    from rimrl.agents import save_weights
    from rimrl.envs import make_env
    from rimrl.experiments.io import write_json, write_yaml
    from rimrl.jax.envs import make_pickup
    from rimrl.jax.policy import load_policy_into_torch, policy_from_torch
    from rimrl.jax.ppo import init_runner, make_update

    # Validation first: nothing is created for bad arguments.
    if core not in CORES:
        raise ValueError(f"--core must be one of {', '.join(CORES)}, got {core!r}")
    jax_env = make_pickup(env_id)
    settings = ppo_settings(env_id, core, n_envs)
    per_update = settings.n_envs * settings.n_steps
    if n_timesteps < per_update:
        raise ValueError(f"-n must be at least one rollout, n_envs * n_steps = {per_update}, got {n_timesteps}")
    run_dir = run_dir_for(log_folder, env_id, core, seed)
    if (run_dir / "model.zip").exists() and not overwrite:
        raise ValueError(f"{run_dir} already holds a model; pass --overwrite to replace it")

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    vec_env = make_env(env_id, n_envs=settings.n_envs, seed=seed)
    model = make_jax_ready_agent(vec_env, core, seed, tie_break)
    policy, params = policy_from_torch(model.policy)
    runner = init_runner(policy, params, jax_env, settings, jax.random.PRNGKey(seed))
    update = make_update(policy, jax_env, settings)

    started, started_at = time.time(), datetime.now(timezone.utc).isoformat()
    # SB3's own monitor writer: the file train.py's Monitor writes, read by the curves and SB3's load_results.
    monitor = ResultsWriter(str(run_dir / MONITOR_FILE), header={"t_start": started, "env_id": env_id, "backend": "jax"},
                            extra_keys=("success",))
    n_updates = -(-n_timesteps // per_update)
    successes: list[float] = []
    compile_seconds = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_updates * per_update, unit="step", desc=f"{core} {env_id} seed {seed} (jax)")
    try:
        for index in range(n_updates):
            tick = time.time()
            runner, metrics = update(runner)
            metrics = jax.device_get(metrics)
            if index == 0:
                compile_seconds = time.time() - tick
            done = np.asarray(metrics["done"])
            for t, b in zip(*np.nonzero(done), strict=True):
                success = bool(metrics["success"][t, b])
                successes.append(float(success))
                monitor.write_row({"r": round(float(metrics["episode_return"][t, b]), 6),
                                   "l": int(metrics["episode_length"][t, b]),
                                   "t": round(time.time() - started, 6), "success": success})
            if bar is not None:
                bar.update(per_update)
                recent = successes[-100:]
                bar.set_postfix(success=f"{np.mean(recent):.2f}" if recent else "-")
    finally:
        monitor.close()
        if bar is not None:
            bar.close()
    wall = time.time() - started
    steps = n_updates * per_update

    load_policy_into_torch(policy, runner.params, model.policy)
    model.num_timesteps = steps
    model.save(run_dir / "model.zip")
    save_weights(model, run_dir / "model.zip")
    vec_env.close()
    # The single-run command (also when a sweep or the study called train()).
    command = shlex.join(["python", "-m", "rimrl.jax.train", "--env", env_id, "--core", core, "--seed", str(seed),
                          "-n", str(n_timesteps), "-f", str(log_folder), "--n-envs", str(settings.n_envs),
                          "--tie-break", tie_break])
    write_yaml(run_dir / "config.yml", {
        "env": env_id, "core": core, "seed": seed, "n_timesteps": n_timesteps, "n_envs": settings.n_envs,
        "backend": "jax", "tie_break": tie_break, "hyperparams": asdict(settings), "env_kwargs": {},
        "env_wrapper": [], "gym_packages": [], "family": "minigrid", "eval_deterministic": False,
        "sessions": [{"started": started_at, "command": command, "from_timesteps": 0}],
        "command": command,
    })
    recent = successes[-100:]
    metrics_out = {"env": env_id, "core": core, "seed": seed, "backend": "jax", "num_timesteps": steps,
                   "episodes": len(successes), "success_rate_last_100": float(np.mean(recent)) if recent else None,
                   "wall_time_s": round(wall, 2), "compile_s": round(compile_seconds, 2),
                   "steps_per_s": round(steps / wall, 1),
                   "steps_per_s_after_compile": round((steps - per_update) / max(wall - compile_seconds, 1e-9), 1)}
    write_json(run_dir / "final_metrics.json", metrics_out)
    return metrics_out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rimrl.jax.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="rimrl/Pickup-Train-v0", help="a distractor-suite id")
    parser.add_argument("--core", default="rim", choices=CORES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-n", "--n-timesteps", type=int, default=300_000)
    parser.add_argument("-f", "--log-folder", default="runs/jax")
    parser.add_argument("--n-envs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--tie-break", choices=("index", "torch"), default="index",
                        help="exact ties in RIM's unit choice (units whose state is still zero): lower index first "
                             "(default; pure JAX) or torch.topk's order (a host callback per step, several times "
                             "slower). The saved model's core records it, so torch makes the same choices")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import jax  # noqa: F401
    except ImportError:
        print("error: rimrl.jax needs JAX: pip install 'rimrl[jax]'", file=sys.stderr)
        return 2
    try:
        metrics = train(args.env, args.core, args.seed, args.n_timesteps, args.log_folder, args.overwrite,
                        args.tie_break, args.n_envs, progress=not args.quiet)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing saved but the monitor file", file=sys.stderr)
        return 130
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
