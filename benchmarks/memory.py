"""The memory benchmarks: every core on CartPoleNoVel, PendulumNoVel and LunarLanderNoVel.

Trains sb3-contrib's own ``MlpLstmPolicy`` (``ref``) and rimrl's ``lstm``, ``gru``, ``rim`` and
``srm`` policies on each task for several seeds, with the same PPO settings (``configs/vector.yml``,
section ``envs``: rl-zoo3's ``ppo_lstm`` hyperparameters for these tasks) and the same budget, then
evaluates every final model greedily and writes a table of final mean return:

    .venv/bin/python -m benchmarks.memory                       # 3 tasks x 5 policies x seeds 0 1 2
    .venv/bin/python -m benchmarks.memory --envs CartPoleNoVel-v1 --cores ref rim --seeds 0
    .venv/bin/python -m benchmarks.memory --steps LunarLanderNoVel-v3=1000000   # rl-zoo3's budget

rimrl's runs are train.py runs (its sweep, a local pool of ``--workers`` processes, one torch
thread each) under ``<out>/<env>/<core>/seed<k>/``; ``ref`` runs are plain ``RecurrentPPO``
trainings with sb3-contrib's policy defaults (as rl-zoo3 trains them) in ``<out>/<env>/ref/seed<k>/``.
Rerunning the command skips finished runs (``final_metrics.json`` at the budget) and reuses their
evaluation while the model file is unchanged. Outputs under ``--out``: ``results.md`` (the command,
the settings and the table) and ``results.json`` (every run's numbers).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.study import _pool_context  # forkserver/spawn: no fork of a process that may hold JAX threads

DEFAULT_STEPS = {"CartPoleNoVel-v1": 100_000, "PendulumNoVel-v1": 100_000, "LunarLanderNoVel-v3": 200_000}
#: rl-zoo3's budgets (hyperparams/ppo_lstm.yml ``n_timesteps``), printed beside ours.
RL_ZOO_STEPS = {"CartPoleNoVel-v1": 100_000, "PendulumNoVel-v1": 100_000, "LunarLanderNoVel-v3": 1_000_000}
POLICIES = ("ref", "lstm", "gru", "rim", "srm")
EVAL_FILE = "memory_eval.json"
EVAL_SEED = 10_000
EVAL_ENVS = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_STEPS), choices=list(DEFAULT_STEPS))
    parser.add_argument("--cores", nargs="+", default=list(POLICIES), choices=list(POLICIES),
                        help="ref = sb3-contrib's MlpLstmPolicy; the others are rimrl's policies")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", nargs="+", default=[], metavar="ENV=N",
                        help=f"budget per task (default {', '.join(f'{k}={v}' for k, v in DEFAULT_STEPS.items())})")
    parser.add_argument("--episodes", type=int, default=50, help="greedy evaluation episodes per final model")
    parser.add_argument("--workers", type=int, default=2, help="trainings at a time (one torch thread each)")
    parser.add_argument("--out", default="runs/memory")
    return parser


def budgets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, int]:
    steps = dict(DEFAULT_STEPS)
    for item in args.steps:
        env_id, _, value = item.partition("=")
        if env_id not in steps or not value.isdigit() or int(value) < 1:
            parser.error(f"--steps takes ENV=N with ENV one of {', '.join(steps)}, got {item!r}")
        steps[env_id] = int(value)
    return {env_id: steps[env_id] for env_id in args.envs}


def run_dir(out: Path, env_id: str, core: str, seed: int) -> Path:
    return out / env_id / core / f"seed{seed}"


def finished(path: Path, n_timesteps: int) -> bool:
    metrics = path / "final_metrics.json"
    return metrics.is_file() and json.loads(metrics.read_text()).get("num_timesteps", 0) >= n_timesteps


def train_reference(env_id: str, seed: int, n_timesteps: int, path: str) -> None:
    """sb3-contrib's ``RecurrentPPO("MlpLstmPolicy")`` with the task's PPO settings and the
    policy's own defaults (rl-zoo3 sets no ``policy_kwargs`` for these tasks); monitor CSV,
    ``model.zip`` and ``final_metrics.json`` laid out as train.py lays them out."""
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.vec_env import VecMonitor

    from rimrl.agents import resolve_hyperparams
    from rimrl.envs import make_env

    torch.set_num_threads(1)
    out = Path(path)
    (out / "monitor").mkdir(parents=True, exist_ok=True)
    params = resolve_hyperparams(env_id, "lstm")
    n_envs = params.pop("n_envs")
    params.pop("policy_kwargs", None)
    env = VecMonitor(make_env(env_id, n_envs=n_envs, seed=seed), filename=str(out / "monitor" / "session0"))
    model = RecurrentPPO("MlpLstmPolicy", env, seed=seed, device="cpu", **params)
    start = time.perf_counter()
    model.learn(n_timesteps)
    seconds = time.perf_counter() - start
    model.save(out / "model.zip")
    env.close()
    metrics = {"env": env_id, "core": "ref", "seed": seed, "num_timesteps": int(model.num_timesteps),
               "wall_time_s": round(seconds, 2), "steps_per_s": round(model.num_timesteps / seconds, 1)}
    (out / "final_metrics.json").write_text(json.dumps(metrics, indent=2))


def train_rimrl(out: Path, pending: Sequence[tuple[str, str, int, int]], workers: int) -> int:
    """rimrl's runs as one train.py sweep (local pool); its exit status."""
    from rimrl.cli.train import build_parser as train_parser
    from rimrl.cli.train import build_trials
    from rimrl.experiments.sweep import run_sweep

    trials = []
    for env_id, core, seed, n_timesteps in pending:
        argv = ["--env", env_id, "--core", core, "--seed", str(seed), "-n", str(n_timesteps), "-f", str(out),
                "--resume", "--threads", "1", "-q"]
        (options,) = build_trials(train_parser().parse_args(argv), argv)
        options.label = options.name
        trials.append(options)
    return run_sweep(trials, backend="local", workers=min(workers, len(trials)))


def training_return(path: Path, last: int = 100) -> float | None:
    """Mean return of the last ``last`` training episodes (the run's monitor CSVs, SB3's ``load_results``)."""
    from stable_baselines3.common.monitor import LoadMonitorResultsError, load_results

    try:
        episodes = load_results(str(path / "monitor"))
    except LoadMonitorResultsError:
        return None
    return float(episodes["r"].iloc[-last:].mean()) if len(episodes) else None


def evaluate_run(env_id: str, path: str, episodes: int) -> dict[str, Any]:
    """Greedy mean return of ``model.zip`` over ``episodes`` episodes (cached in ``memory_eval.json``
    while the model file is unchanged)."""
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.evaluation import evaluate_policy

    from rimrl.envs import make_env

    torch.set_num_threads(1)
    out = Path(path)
    digest = hashlib.sha256((out / "model.zip").read_bytes()).hexdigest()
    key = {"sha256": digest, "episodes": episodes, "seed": EVAL_SEED, "deterministic": True}
    cache = out / EVAL_FILE
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached
    env = make_env(env_id, n_envs=min(EVAL_ENVS, episodes), seed=EVAL_SEED)
    model = RecurrentPPO.load(out / "model.zip", device="cpu")
    returns, lengths = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True,
                                       return_episode_rewards=True)
    env.close()
    result = {"key": key, "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
              "mean_length": float(np.mean(lengths)), "returns": [float(r) for r in returns]}
    cache.write_text(json.dumps(result, indent=2))
    return result


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def results_table(rows: Sequence[dict[str, Any]], envs: Sequence[str], cores: Sequence[str]) -> str:
    lines = ["| task | policy | final return, mean ± std over seeds | per seed | last 100 training episodes | "
             "training steps/s |", "| --- | --- | ---: | --- | ---: | ---: |"]
    for env_id in envs:
        for core in cores:
            chosen = [r for r in rows if r["env"] == env_id and r["core"] == core]
            if not chosen:
                continue
            finals = np.array([r["mean_return"] for r in chosen])
            per_seed = ", ".join(f"{r['mean_return']:.1f}" for r in chosen)
            train = [r["train_return"] for r in chosen if r["train_return"] is not None]
            speed = [r["steps_per_s"] for r in chosen if r.get("steps_per_s")]
            name = "sb3-contrib MlpLstmPolicy" if core == "ref" else core
            lines.append(f"| {env_id} | {name} | {finals.mean():.1f} ± {finals.std():.1f} | {per_seed} | "
                         f"{_fmt(float(np.mean(train)) if train else None)} | "
                         f"{_fmt(float(np.mean(speed)) if speed else None, 0)} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    steps = budgets(args, parser)
    out = Path(args.out)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.memory", *argv])
    plan = [(env_id, core, seed, n) for env_id, n in steps.items() for core in args.cores for seed in args.seeds]
    pending = [p for p in plan if not finished(run_dir(out, p[0], p[1], p[2]), p[3])]
    print(f"{len(plan)} runs, {len(pending)} to train", flush=True)
    status = 0
    references = [p for p in pending if p[1] == "ref"]
    if references:
        with ProcessPoolExecutor(min(args.workers, len(references)), mp_context=_pool_context()) as pool:
            jobs = [pool.submit(train_reference, env_id, seed, n, str(run_dir(out, env_id, core, seed)))
                    for env_id, core, seed, n in references]
            for job, (env_id, core, seed, _) in zip(jobs, references, strict=True):
                job.result()
                print(f"trained {env_id} {core} seed {seed}", flush=True)
    ours = [p for p in pending if p[1] != "ref"]
    if ours:
        status = train_rimrl(out, ours, args.workers)

    rows: list[dict[str, Any]] = []
    done = [p for p in plan if (run_dir(out, p[0], p[1], p[2]) / "model.zip").is_file()]
    with ProcessPoolExecutor(args.workers, mp_context=_pool_context()) as pool:
        evaluations = [pool.submit(evaluate_run, env_id, str(run_dir(out, env_id, core, seed)), args.episodes)
                       for env_id, core, seed, _ in done]
        for (env_id, core, seed, _), job in zip(done, evaluations, strict=True):
            path = run_dir(out, env_id, core, seed)
            metrics = json.loads((path / "final_metrics.json").read_text())
            result = job.result()
            rows.append({"env": env_id, "core": core, "seed": seed, "num_timesteps": metrics["num_timesteps"],
                         "mean_return": result["mean_return"], "std_return": result["std_return"],
                         "mean_length": result["mean_length"], "train_return": training_return(path),
                         "steps_per_s": metrics.get("steps_per_s"), "wall_time_s": metrics.get("wall_time_s")})
    missing = [p for p in plan if p not in done]
    table = results_table(rows, list(steps), args.cores)
    budget_lines = "\n".join(f"- {env_id}: {n:,} env steps per run (rl-zoo3's ppo_lstm budget: {RL_ZOO_STEPS[env_id]:,})"
                             for env_id, n in steps.items())
    text = (f"# Memory benchmarks\n\n```\n{command}\n```\n\nSeeds {', '.join(map(str, args.seeds))}; "
            f"final return: the mean over {args.episodes} greedy episodes per seed (evaluation seed {EVAL_SEED}), "
            f"then mean ± std over seeds. PPO settings: configs/vector.yml, section envs.\n\n{budget_lines}\n\n"
            f"{table}\n")
    if missing:
        text += "\nNot finished: " + ", ".join(f"{e} {c} seed {s}" for e, c, s, _ in missing) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"command": command, "steps": steps, "seeds": args.seeds,
                                                  "episodes": args.episodes, "rows": rows}, indent=2))
    print(text)
    return status or (1 if missing else 0)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
