"""Which units (modules) of trained RIM / SRM agents are active, at episode starts and later.

For each model, plays ``--steps`` vector steps of ``--n-envs`` envs with the model's sampled
actions, records the core's active-unit masks and null attention at every step, and prints per
unit: how often it is active on an episode's first step and on later steps, its mean null
attention, and how often the active set changes within an episode. This is the measurement behind
the choice of what to do about ties at episode starts (docs/policies.md): with ``h = 0`` every RIM
unit's query is zero, all units attend equally to the null slot, and ``topk`` picks the same units.
For a policy with a vector projection in front of the core (``core_input_projection``) it also
prints the share of the projection's units that fire on some input, and per input: a ReLU
projection whose units have died feeds the core (almost) nothing.

    .venv/bin/python -m benchmarks.unit_activity runs/rimrl-Pickup-Train-v0/rim/seed0/model.zip
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._common import print_table, write_json


def unit_activity(path: str, env_id: str, n_envs: int, steps: int, seed: int) -> dict:
    """Per-unit activity of one model; see the module docstring."""
    from sb3_contrib import RecurrentPPO

    from rimrl.agents.activity import core_activity_summary
    from rimrl.envs import make_env

    model = RecurrentPPO.load(path, device="cpu")
    core = model.policy.core
    if not hasattr(core, "last_active_mask"):
        raise SystemExit(f"{path}: core {model.policy.core_name!r} has no active units")
    env = make_env(env_id, n_envs=n_envs, seed=seed)
    core.record_attention = True
    # The vector interface's projection (ProjectedCore): which of its units ever fire.
    projection = getattr(model.policy.lstm_actor, "proj", None)
    projected: list[torch.Tensor] = []
    if projection is not None:
        projection.register_forward_hook(lambda _module, _inputs, output: projected.append(output.detach().reshape(
            -1, output.shape[-1])))
    obs, state, starts = env.reset(), None, np.ones(n_envs, dtype=bool)
    masks, nulls, firsts = [], [], []
    for _ in range(steps):
        actions, state = model.predict(obs, state=state, episode_start=starts)
        masks.append(core.last_active_mask[-1])
        nulls.append(core.last_input_attention[-1, ..., 0])
        firsts.append(torch.as_tensor(starts))
        obs, _, starts, _ = env.step(actions)
    env.close()
    mask, null, first = torch.stack(masks), torch.stack(nulls), torch.stack(firsts)  # (T, B, U), (T, B)
    changes = (mask[1:] != mask[:-1]).any(dim=-1) & ~first[1:]
    fired = torch.cat(projected) > 0 if projected else None  # (samples, projection units)
    return {
        "model": path,
        "projection_units_alive": None if fired is None else float(fired.any(dim=0).float().mean()),
        "projection_active_per_input": None if fired is None else float(fired.float().mean()),
        "first_step_active": mask[first].float().mean(0).tolist(),
        "later_active": mask[~first].float().mean(0).tolist(),
        "null_attention": null.mean(dim=(0, 1)).tolist(),
        "first_step_null_attention": null[first].mean(0).tolist(),
        "active_set_changes": float(changes.float().mean()),
        "summary": core_activity_summary(mask, null, getattr(core, "k", None)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model.zip files of RIM / SRM agents")
    parser.add_argument("--env", default="rimrl/Pickup-Train-v0")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400, help="vector steps per model")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [unit_activity(path, args.env, args.n_envs, args.steps, args.seed) for path in args.models]
    rows = []
    for result in results:
        for unit, (first, later, null) in enumerate(
            zip(result["first_step_active"], result["later_active"], result["null_attention"], strict=True)
        ):
            rows.append([result["model"] if unit == 0 else "", unit, first, later, null,
                         result["active_set_changes"] if unit == 0 else ""])
    print_table(
        f"{args.env}: {args.steps} steps x {args.n_envs} envs, sampled actions",
        ["model", "unit", "active at t=0", "active later", "null attention", "set changes/step"],
        rows,
    )
    for result in results:
        if result["projection_units_alive"] is not None:
            print(f"{result['model']}: projection units that fire on some input: "
                  f"{100 * result['projection_units_alive']:.1f}%; per input: "
                  f"{100 * result['projection_active_per_input']:.1f}%")
    write_json(args.json, {"env": args.env, "steps": args.steps, "n_envs": args.n_envs, "results": results})


if __name__ == "__main__":
    main()
