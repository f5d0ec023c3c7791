"""Learning table of train.py run directories: training-episode success per bin of env steps.

For each run directory (``<root>/<env>/<core>/seed<k>``, as train.py writes them), prints the mean
success of the training episodes that ended in each ``--bin``-step window (from the monitor CSVs,
all envs together), the success over the run's last fifth of episodes, and the first step at which
a window reached ``--threshold``, and for RIM / SRM the share of units active per step (the
``core/active_fraction`` TensorBoard scalar, mean over the second half of training). The runs themselves come from train.py; the command that made
them is in each run's ``config.yml`` (``command``) and is printed under the table.

    .venv/bin/python train.py --core rim --seed 0 1 -n 200000 -f runs/learning
    .venv/bin/python -m benchmarks.learning runs/learning/rimrl-Pickup-Train-v0/*/seed*
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks._common import print_table, write_json
from rimrl.cli.common import read_yaml
from rimrl.evaluation.curves import _monitor_rows, curve_edges, training_success
from rimrl.experiments.options import CONFIG_FILE, MONITOR_DIR


def last_fifth_success(run_dir: Path) -> float:
    """Success over the last 20% of the run's training episodes (all sessions)."""
    outcomes = [_monitor_rows(path)[1] for path in sorted((run_dir / MONITOR_DIR).glob("*.monitor.csv"))]
    episodes = np.concatenate(outcomes) if outcomes else np.zeros(0)
    return float(episodes[int(0.8 * len(episodes)):].mean()) if len(episodes) else float("nan")


def active_fraction(run_dir: Path) -> float | None:
    """Mean of the run's ``core/active_fraction`` TensorBoard scalar (share of RIM/SRM units active
    per step, logged per rollout by :class:`rimrl.agents.activity.CoreActivityCallback`) over the
    second half of its rollouts; ``None`` for cores without units or runs without events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: list[float] = []
    for events_dir in sorted((run_dir / "tb").glob("*")):
        accumulator = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "core/active_fraction" in accumulator.Tags()["scalars"]:
            values += [event.value for event in accumulator.Scalars("core/active_fraction")]
    return float(np.mean(values[len(values) // 2:])) if values else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="train.py run directories")
    parser.add_argument("--bin", type=int, default=25_000, help="env steps per window [default: 25_000]")
    parser.add_argument("--threshold", type=float, default=0.9, help="success that counts as learned [0.9]")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows, results, commands = [], [], set()
    for run in args.runs:
        config = read_yaml(run / CONFIG_FILE, what="run config")
        steps = int(config.get("n_timesteps") or 0)
        edges = curve_edges(steps, args.bin)
        curve = training_success(run, edges)
        reached = [int(edges[k + 1]) for k, value in enumerate(curve) if value >= args.threshold]
        last = last_fifth_success(run)
        active = active_fraction(run)
        label = f"{config.get('core')} seed{config.get('seed')}"
        rows.append([str(run), label, " ".join("-" if np.isnan(v) else f"{v:.2f}" for v in curve),
                     last, f"{reached[0]:,}" if reached else "never", "-" if active is None else f"{active:.3f}"])
        results.append({"run": str(run), "core": config.get("core"), "seed": config.get("seed"),
                        "edges": edges.tolist(), "success": curve.tolist(), "last_fifth": last,
                        "first_reached": reached[0] if reached else None, "active_fraction": active})
        commands.add(str(config.get("command", "")))
    print_table(f"training-episode success per {args.bin:,} env steps",
                ["run", "agent", "success per window", "last fifth", f">= {args.threshold:g} at", "active units"],
                rows)
    for command in sorted(commands):
        print(f"made by: {command}")
    write_json(args.json, {"bin": args.bin, "threshold": args.threshold, "runs": results})


if __name__ == "__main__":
    main()
