"""Training speed of the jitted JAX agent against the torch agent (sb3-contrib's RecurrentPPO).

For each core, in one command on one machine, one configuration at a time (each in its own
process, so they never share the CPU): the torch agent exactly as train.py builds it
(``rimrl.agents.make_agent``, the MiniGrid preset, one torch thread, ``DummyVecEnv`` of the
gymnasium suite) and the JAX agent of ``python -m rimrl.jax.train`` (same preset, same network),
both on ``rimrl/Pickup-Train-v0`` from scratch for ``--steps`` env steps. Reported: env steps per
second of wall time and per second of the process's CPU time (all its threads), for torch after one
warm-up rollout and for JAX after the first update (which compiles; the compile time is listed),
and the ratios JAX / torch of both. JAX runs on all cores (XLA's default threads) and pinned to
one core (``taskset -c 0``, the torch agent's one thread; XLA's own thread flags do not stop its
runtime from using a second core), once per ``--sequence-lengths`` value (``preset``: whole
``n_steps`` columns; a number: that many steps per training sequence, same steps per minibatch).
On a machine busy with other work, only the one-core CPU-time ratio stays meaningful (wall time
then measures the other work too).

It also prints the compute bound: the floating-point operations of one policy step (XLA's cost
analysis of the jitted step at 256 rows, per row), times ``1 + 3 * n_epochs`` per env step (one
forward pass in the rollout; forward and backward, about three forward passes, per epoch), against
this machine's float32 matmul rate (a 1024 x 1024 product, measured in the same run on one core and
on all cores): the env steps per second that no implementation of the same network and PPO settings
could exceed there.

    .venv/bin/python -m benchmarks.jax_speed --cores lstm rim --steps 16384
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV = "rimrl/Pickup-Train-v0"
ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
ONE_CORE = ["taskset", "-c", "0"]  # util-linux; the one-core rows need it

_TORCH = """
import json, sys, time, torch
from rimrl.agents import make_agent, preset_n_envs
from rimrl.envs import make_env
torch.set_num_threads(1)
core, steps = sys.argv[1], int(sys.argv[2])
env = make_env("{env}", n_envs=preset_n_envs("{env}", core), seed=0)
model = make_agent(env, core=core, seed=0)
rollout = model.n_envs * model.n_steps
model.learn(rollout)  # warm-up
start, cpu = time.perf_counter(), time.process_time()
model.learn(steps, reset_num_timesteps=False)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({{"steps": steps, "seconds": seconds, "cpu_seconds": cpu_seconds}}))
"""

_JAX = """
import json, sys, time, jax, torch
from rimrl.envs import make_env
from rimrl.jax.envs import make_pickup
from rimrl.jax.policy import policy_from_torch
from rimrl.jax.ppo import init_runner, make_update
from rimrl.jax.train import make_jax_ready_agent, ppo_settings
torch.set_num_threads(1)
core, steps, tie, length = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
settings = ppo_settings("{env}", core, sequence_length=None if length == "preset" else int(length))
policy, params = policy_from_torch(make_jax_ready_agent(make_env("{env}", n_envs=1), core, 0, tie).policy)
jenv = make_pickup("{env}")
runner = init_runner(policy, params, jenv, settings, jax.random.PRNGKey(0))
update = make_update(policy, jenv, settings)
start = time.perf_counter()
runner, metrics = update(runner)
jax.block_until_ready(metrics)
compile_s = time.perf_counter() - start
per_update = settings.n_envs * settings.n_steps
updates = max(1, steps // per_update)
start, cpu = time.perf_counter(), time.process_time()
for _ in range(updates):
    runner, metrics = update(runner)
jax.block_until_ready(metrics)
print(json.dumps({{"steps": updates * per_update, "seconds": time.perf_counter() - start,
                  "cpu_seconds": time.process_time() - cpu, "compile_s": compile_s}}))
"""


_BOUND = """
import json, sys, time, jax, jax.numpy as jnp, torch
from rimrl.envs import make_env
from rimrl.jax.envs import make_pickup
from rimrl.jax.policy import policy_from_torch
from rimrl.jax.train import make_jax_ready_agent, ppo_settings
torch.set_num_threads(1)
core, rows = sys.argv[1], 256
policy, params = policy_from_torch(make_jax_ready_agent(make_env("{env}", n_envs=1), core, 0, "index").policy)
_, obs = jax.vmap(make_pickup("{env}").reset)(jax.random.split(jax.random.PRNGKey(0), rows))
step = jax.jit(lambda p, o, s: policy.apply(p, o, s, jnp.zeros((1, rows))))
cost = step.lower(params, jax.tree_util.tree_map(lambda a: a[None], obs), policy.initial_state(params, rows)).compile()
cost = cost.cost_analysis()
cost = cost[0] if isinstance(cost, list) else cost
a = jnp.ones((1024, 1024), jnp.float32)
matmul = jax.jit(lambda a: a @ a)
matmul(a).block_until_ready()
best = float("inf")
for _ in range(5):
    start = time.perf_counter()
    for _ in range(10):
        out = matmul(a)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / 10)
print(json.dumps({{"flops_per_row_step": cost["flops"] / rows, "n_epochs": ppo_settings("{env}", core).n_epochs,
                  "matmul_flops_per_s": 2 * 1024 ** 3 / best}}))
"""


def _run(code: str, args: list[str], env: dict[str, str] | None = None, one_core: bool = False) -> dict:
    prefix = ONE_CORE if one_core else []
    proc = subprocess.run([*prefix, sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sequence_length(text: str) -> str:
    if text != "preset" and not (text.isdigit() and int(text) > 0):
        raise argparse.ArgumentTypeError(f"expected 'preset' or a positive number of steps, got {text!r}")
    return text


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cores", nargs="+", default=["lstm", "rim"], choices=["lstm", "gru", "rim", "srm"])
    parser.add_argument("--steps", type=int, default=16384, help="timed env steps per configuration")
    parser.add_argument("--tie-break", choices=("index", "torch"), default="index",
                        help="the JAX agent's RIM tie-break (python -m rimrl.jax.train --tie-break)")
    parser.add_argument("--sequence-lengths", nargs="+", type=_sequence_length, default=["preset", "16"],
                        metavar="preset|STEPS", help="the JAX agent's training sequence lengths "
                        "(python -m rimrl.jax.train --sequence-length) [default: preset 16]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if shutil.which(ONE_CORE[0]) is None:
        parser.error(f"the one-core rows need {ONE_CORE[0]} (util-linux)")
    rows, bounds = [], []
    for core in args.cores:
        torch_result = _run(_TORCH.format(env=ENV), [core, str(args.steps)])
        torch_rate = torch_result["steps"] / torch_result["seconds"]
        torch_cpu_rate = torch_result["steps"] / torch_result["cpu_seconds"]
        rows.append({"core": core, "agent": "torch (sb3-contrib RecurrentPPO, 1 thread)", "steps_per_s": torch_rate,
                     "ratio": 1.0, "steps_per_cpu_s": torch_cpu_rate, "cpu_ratio": 1.0, "compile_s": None})
        for length in args.sequence_lengths:
            sequences = "whole columns" if length == "preset" else f"sequences of {length}"
            for threads, one_core in (("all cores", False), ("1 core", True)):
                env = {"XLA_FLAGS": ONE_THREAD_XLA} if one_core else None
                result = _run(_JAX.format(env=ENV), [core, str(args.steps), args.tie_break, length], env, one_core)
                rate, cpu_rate = result["steps"] / result["seconds"], result["steps"] / result["cpu_seconds"]
                rows.append({"core": core, "agent": f"jax ({threads}, {sequences})", "steps_per_s": rate,
                             "ratio": rate / torch_rate, "steps_per_cpu_s": cpu_rate,
                             "cpu_ratio": cpu_rate / torch_cpu_rate, "compile_s": result["compile_s"]})
        for row in rows[-1 - 2 * len(args.sequence_lengths):]:
            print(f"{row['core']:5s} {row['agent']:55s} {row['steps_per_s']:8.0f} steps/s x{row['ratio']:.2f}  "
                  f"{row['steps_per_cpu_s']:8.0f} steps/cpu-s x{row['cpu_ratio']:.2f}"
                  + (f"  (compile {row['compile_s']:.1f} s)" if row["compile_s"] else ""), flush=True)
        for cores, one_core in (("1 core", True), ("all cores", False)):
            bound = _run(_BOUND.format(env=ENV), [core], {"XLA_FLAGS": ONE_THREAD_XLA} if one_core else None, one_core)
            flops_per_env_step = bound["flops_per_row_step"] * (1 + 3 * bound["n_epochs"])
            ceiling = bound["matmul_flops_per_s"] / flops_per_env_step
            bounds.append({"core": core, "cores": cores, **bound, "flops_per_env_step": flops_per_env_step,
                           "ceiling_steps_per_s": ceiling, "torch_steps_per_s": torch_rate,
                           "ceiling_ratio": ceiling / torch_rate, "torch_flops_per_s": flops_per_env_step * torch_rate})
    print("\n| core | agent | env steps/s (wall) | x torch | env steps/s (CPU time) | x torch | compile s |\n"
          "| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        compile_s = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
        print(f"| {row['core']} | {row['agent']} | {row['steps_per_s']:.0f} | {row['ratio']:.2f} | "
              f"{row['steps_per_cpu_s']:.0f} | {row['cpu_ratio']:.2f} | {compile_s} |")
    print("\n| core | MFLOP per policy step | MFLOP per env step | torch GFLOP/s | on | matmul GFLOP/s | "
          "ceiling env steps/s | ceiling x torch (wall) |\n| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for b in bounds:
        print(f"| {b['core']} | {b['flops_per_row_step'] / 1e6:.2f} | {b['flops_per_env_step'] / 1e6:.1f} | "
              f"{b['torch_flops_per_s'] / 1e9:.1f} | {b['cores']} | {b['matmul_flops_per_s'] / 1e9:.0f} | "
              f"{b['ceiling_steps_per_s']:.0f} | {b['ceiling_ratio']:.1f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"env": ENV, "steps": args.steps, "rows": rows, "bounds": bounds},
                                              indent=2))
    return rows


if __name__ == "__main__":
    main()
