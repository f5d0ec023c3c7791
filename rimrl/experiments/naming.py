"""Run directory names for several experiments of one env/core/seed (``--exp-id``, rl-zoo3 style)."""

from __future__ import annotations

from pathlib import Path

from rimrl.agents.storage import has_content
from rimrl.experiments.errors import ExperimentInputError

__all__ = ["exp_dirname", "resolve_exp_id"]


def exp_dirname(seed: int, number: int) -> str:
    """``seed<k>`` for experiment 1, ``seed<k>_<n>`` for n >= 2."""
    return f"seed{seed}" if number == 1 else f"seed{seed}_{number}"


def _used_numbers(parent: Path, seed: int) -> list[int]:
    """Experiment numbers whose directories under ``parent`` hold anything."""
    base = f"seed{seed}"
    used = []
    if parent.is_dir():
        for child in parent.iterdir():
            suffix = child.name[len(base) + 1:] if child.name.startswith(base + "_") else ""
            number = 1 if child.name == base else int(suffix) if suffix.isdigit() else 0
            if number >= 1 and has_content(child):
                used.append(number)
    return used


def resolve_exp_id(parent: Path, seed: int, spec: str, latest: bool) -> str:
    """``--exp-id`` -> the run directory's name under ``parent`` (``<log>/<env>/<core>``).

    :param spec: ``"N"`` (an integer >= 1) or ``"auto"``: the next unused number, or the latest
        used one when ``latest`` (``--resume`` / ``--overwrite``: continue or replace the newest
        experiment). Nothing used yet: ``seed<k>``.
    :raises ExperimentInputError: anything else.
    """
    if spec != "auto":
        try:
            number = int(spec)
        except ValueError:
            number = 0
        if number < 1:
            raise ExperimentInputError(f"--exp-id must be an integer >= 1 or auto, got {spec!r}")
        return exp_dirname(seed, number)
    used = _used_numbers(parent, seed)
    if not used:
        return exp_dirname(seed, 1)
    return exp_dirname(seed, max(used) if latest else max(used) + 1)
