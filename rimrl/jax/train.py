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
episodes, the final evaluation per variant).

Periodic evaluations, as train.py's: after every update whose step count crosses a multiple of
``--eval-freq`` and always at the end, ``--eval-episodes`` episodes (sampled actions, the
MiniGrid presets' ``eval_deterministic: False``) on the training variant and on each
``--eval-variants`` variant of its suite (default: all the others), played in JAX
(:func:`rimrl.jax.evaluation.make_evaluator`, one compile per variant) with the same evaluation
key every time. They are recorded with :class:`~rimrl.agents.training.EvalHistory` in
``evaluations.npz`` and ``evaluations_<variant>.npz`` (SB3 EvalCallback layout), which
``evaluate.py RUN --curves`` reads. Exit status: 0 done, 2 bad arguments (nothing created), 130
interrupted (nothing saved but the monitor file and the evaluations so far).
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

from rimrl.experiments.options import DEFAULTS, EVAL_SEED_OFFSET, EVALUATIONS_FILE, variant_evaluations_file

CORES = ("lstm", "gru", "rim", "srm")
MONITOR_FILE = "monitor/session0.monitor.csv"
#: Steps per training sequence (``--sequence-length``), chosen by measurement (docs/jax.md): at
#: the MiniGrid preset's 256 steps per minibatch, 16 sequences of 16 steps train faster on CPU
#: than 2 whole columns of 128, and 5 seeds of each core learned as well or better.
SEQUENCE_LENGTH = 16


def ppo_settings(env_id: str, core: str, n_envs: int | None = None, sequence_length: int | None = None) -> Any:
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
    return PPOSettings(n_envs=n_envs or int(params.get("n_envs", 8)), sequence_length=sequence_length, **values)


def make_jax_ready_agent(env: Any, core: str, seed: int, tie_break: str = "index") -> Any:
    """The torch agent train.py builds (``make_agent`` with the preset), its RIM/SRM core set to
    ``tie_break`` (saved with the model, so torch then breaks ties as the JAX training did)."""
    from rimrl.agents import make_agent

    overrides = {"policy_kwargs.core_kwargs.tie_break": tie_break} if core in ("rim", "srm") else {}
    return make_agent(env, core=core, seed=seed, **overrides)


def resolve_variants(env_id: str, eval_variants: Sequence[str] | None) -> dict[str, str]:
    """``--eval-variants`` -> ``{variant: env id}`` in the suite of ``env_id``, with train.py's
    meaning (:func:`rimrl.experiments.validation.resolve_eval_variants`: variant names, ``all`` for
    every variant but the training one, an empty list for none) and two additions for a default of
    all: ``None`` means ``all`` and ``["none"]`` means none. ``ValueError`` for an unknown name."""
    from rimrl.experiments.validation import resolve_eval_variants

    names = ["all"] if eval_variants is None else list(eval_variants)
    return resolve_eval_variants(env_id, [] if names == ["none"] else names)


def run_dir_for(log_folder: str | Path, env_id: str, core: str, seed: int) -> Path:
    from rimrl.experiments.io import run_dir_for as torch_layout

    return torch_layout(log_folder, env_id, core, seed)


def train(env_id: str, core: str, seed: int, n_timesteps: int, log_folder: str | Path, overwrite: bool = False,
          tie_break: str = "index", n_envs: int | None = None, progress: bool = True,
          eval_freq: int = DEFAULTS["eval_freq"], eval_episodes: int = DEFAULTS["eval_episodes"],
          eval_variants: Sequence[str] | None = None, sequence_length: int | None = SEQUENCE_LENGTH) -> dict[str, Any]:
    """Train and save one agent; returns the final metrics. See the module docstring.

    :param eval_freq: env steps between evaluations (0: only at the end).
    :param eval_episodes: episodes per evaluation and variant.
    :param eval_variants: other variants of the training env's suite to evaluate on (see
        :func:`resolve_variants`; ``None``: all of them).
    :param sequence_length: steps per training sequence (:class:`~rimrl.jax.ppo.PPOSettings`);
        ``None`` or ``n_steps``: whole env columns.
    """
    import jax
    import torch
    from stable_baselines3.common.monitor import ResultsWriter

    from rimrl.agents import save_weights
    from rimrl.agents.training import EvalHistory, EvalResult
    from rimrl.envs import make_env, suite_of
    from rimrl.experiments.io import write_json, write_yaml
    from rimrl.experiments.validation import check_int
    from rimrl.jax.envs import make_pickup
    from rimrl.jax.evaluation import eval_result, make_evaluator
    from rimrl.jax.policy import load_policy_into_torch, policy_from_torch
    from rimrl.jax.ppo import init_runner, make_update

    # Validation first: nothing is created for bad arguments.
    if core not in CORES:
        raise ValueError(f"--core must be one of {', '.join(CORES)}, got {core!r}")
    jax_env = make_pickup(env_id)
    check_int("--eval-freq", eval_freq, 0)
    check_int("--eval-episodes", eval_episodes, 1)
    variant_envs = resolve_variants(env_id, eval_variants)
    settings = ppo_settings(env_id, core, n_envs, sequence_length)
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
    # The training variant first (evaluations.npz), then the others in suite order; as in
    # train.py, naming the training variant in --eval-variants also writes its own file.
    trained_variant = suite_of(env_id)[1]  # type: ignore[index]  # make_pickup accepted a suite id
    records = [(trained_variant, env_id, run_dir / EVALUATIONS_FILE)]
    records += [(variant, other, run_dir / variant_evaluations_file(variant)) for variant, other in variant_envs.items()]
    # No resume here: a new run starts new histories (EvalHistory would append to stale files).
    for stale in [run_dir / EVALUATIONS_FILE, *run_dir.glob(variant_evaluations_file("*"))]:
        stale.unlink(missing_ok=True)
    # One evaluator per env id, compiled on its first call and reused at every evaluation
    # (sampled actions: the MiniGrid presets' evaluation mode, eval_deterministic False below).
    evaluators = {other: make_evaluator(policy, jax_env if other == env_id else make_pickup(other), eval_episodes)
                  for _, other, _ in records}
    histories = [(variant, other, EvalHistory(path)) for variant, other, path in records]
    # One key for every evaluation (train.py's fixed evaluation seed): the same episodes each time.
    eval_key = jax.random.PRNGKey(seed + EVAL_SEED_OFFSET)
    latest: dict[str, EvalResult] = {}  # variant -> its latest evaluation
    eval_seconds = 0.0

    def evaluate(params: Any, steps: int) -> None:
        nonlocal eval_seconds
        tick = time.time()
        for variant, other, history in histories:
            latest[variant] = eval_result(evaluators[other](params, eval_key))
            history.add(steps, latest[variant])
        eval_seconds += time.time() - tick

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
            steps = (index + 1) * per_update
            # After each update that crosses a multiple of eval_freq (train.py's rule), and at the end.
            if index == n_updates - 1 or (eval_freq > 0 and steps // eval_freq > (steps - per_update) // eval_freq):
                evaluate(runner.params, steps)
            if bar is not None:
                bar.update(per_update)
                recent = successes[-100:]
                postfix = {"success": f"{np.mean(recent):.2f}" if recent else "-"}
                if latest:  # the latest evaluation's success rate per variant
                    postfix["eval"] = " ".join(f"{v} {r.success_rate:.2f}" for v, r in latest.items())
                bar.set_postfix(postfix)
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
                          "--sequence-length", str(settings.seq_len),
                          "--tie-break", tie_break, "--eval-freq", str(eval_freq), "--eval-episodes",
                          str(eval_episodes), "--eval-variants", *(list(variant_envs) or ["none"])])
    write_yaml(run_dir / "config.yml", {
        "env": env_id, "core": core, "seed": seed, "n_timesteps": n_timesteps, "n_envs": settings.n_envs,
        "backend": "jax", "tie_break": tie_break, "hyperparams": asdict(settings), "env_kwargs": {},
        "env_wrapper": [], "gym_packages": [], "family": "minigrid", "eval_freq": eval_freq,
        "eval_episodes": eval_episodes, "eval_deterministic": False, "eval_variants": list(variant_envs),
        "sessions": [{"started": started_at, "command": command, "from_timesteps": 0}],
        "command": command,
    })
    recent = successes[-100:]
    final, main_history = latest[trained_variant], histories[0][2]
    metrics_out = {"env": env_id, "core": core, "seed": seed, "backend": "jax", "num_timesteps": steps,
                   "episodes": len(successes), "success_rate_last_100": float(np.mean(recent)) if recent else None,
                   # The final evaluation on the training variant, under train.py's names.
                   "success_rate": final.success_rate, "mean_return": final.mean_return,
                   "std_return": final.std_return, "mean_length": float(np.mean(final.lengths)),
                   "n_episodes": len(final.returns), "deterministic": False,
                   "best_timesteps": main_history.best_timesteps,
                   "best_score": list(main_history.best_score) if main_history.best_score else None,
                   "eval_success_rates": {variant: result.success_rate for variant, result in latest.items()},
                   "wall_time_s": round(wall, 2), "compile_s": round(compile_seconds, 2),
                   "eval_s": round(eval_seconds, 2), "steps_per_s": round(steps / wall, 1),
                   # Training alone: neither the first update (its compile) nor the evaluations.
                   "steps_per_s_after_compile": round(
                       (steps - per_update) / max(wall - compile_seconds - eval_seconds, 1e-9), 1)}
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
    parser.add_argument("--eval-freq", type=int, default=DEFAULTS["eval_freq"], metavar="STEPS",
                        help="evaluate after each update that crosses a multiple of STEPS env steps, 0 = only at "
                             f"the end [default: {DEFAULTS['eval_freq']:_}]")
    parser.add_argument("--eval-episodes", type=int, default=DEFAULTS["eval_episodes"], metavar="N",
                        help=f"episodes per evaluation and variant [default: {DEFAULTS['eval_episodes']}]")
    parser.add_argument("--eval-variants", nargs="+", metavar="VARIANT", default=None,
                        help="also evaluate, at every evaluation, on these variants of the training env's distractor "
                             "suite (more novel more+novel, all, or none): evaluations_<variant>.npz [default: all]")
    parser.add_argument("--sequence-length", type=int, default=SEQUENCE_LENGTH, metavar="STEPS",
                        help="steps per training sequence: the minibatch's batch_size steps as batch_size / STEPS "
                             "sequences, each replayed from the core state the rollout recorded at its start "
                             "(gradients stop at sequence boundaries); n_steps = whole env columns. Must divide "
                             f"n_steps and batch_size [default: {SEQUENCE_LENGTH}]")
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
                        args.tie_break, args.n_envs, progress=not args.quiet, eval_freq=args.eval_freq,
                        eval_episodes=args.eval_episodes, eval_variants=args.eval_variants,
                        sequence_length=args.sequence_length)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing saved but the monitor file and the evaluations so far", file=sys.stderr)
        return 130
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
