"""Moved: the sweep runner is :mod:`rimrl.experiments.sweep`; its names are re-exported here for
code that imports them from this module."""

from rimrl.experiments.sweep import (  # noqa: F401 - re-exports
    _TEST_KILL_ENV,
    RAY_MISSING,
    import_ray,
    preflight,
    print_summary,
    run_local,
    run_ray,
    run_sweep,
    run_trial_safely,
    sweep_exit_code,
)

__all__ = [
    "RAY_MISSING",
    "import_ray",
    "preflight",
    "print_summary",
    "run_local",
    "run_ray",
    "run_sweep",
    "run_trial_safely",
    "sweep_exit_code",
]
