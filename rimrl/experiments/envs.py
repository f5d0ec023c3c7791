"""The envs of a training run: the training ``VecEnv`` (with its monitor CSV) and the
evaluation ones (played as evaluate.py plays them)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from rimrl.agents.training import EpisodeCSV
from rimrl.experiments.errors import ExperimentInputError
from rimrl.experiments.io import one_line, to_yaml_safe
from rimrl.experiments.options import EVAL_SEED_OFFSET, MONITOR_DIR, SESSION_SEED_STRIDE, ResolvedTrial

__all__ = ["make_eval_env", "make_train_env"]


@contextlib.contextmanager
def _sigint_ignored(active: bool) -> Iterator[None]:
    """Ignore SIGINT while starting subprocess envs, so a Ctrl-C reaches only the trainer (which
    checkpoints and then closes the workers) instead of killing the workers mid-step."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def make_train_env(trial: ResolvedTrial, session: int) -> Any:
    """The training ``VecEnv``: ``make_env`` + one monitor CSV per session under ``<run>/monitor/``."""
    from rimrl.envs import make_env

    options = trial.options
    seed = options.seed + SESSION_SEED_STRIDE * session
    try:
        with _sigint_ignored(trial.vec_env == "subproc"):
            venv = make_env(options.env, n_envs=trial.n_envs, seed=seed, vec_env=trial.vec_env, **options.env_kwargs)
    except Exception as error:  # bad --env-kwargs end in asserts deep in gymnasium/minigrid too
        given = f" (with --env-kwargs {to_yaml_safe(options.env_kwargs)})" if options.env_kwargs else ""
        raise ExperimentInputError(f"cannot make {options.env!r}{given}: {type(error).__name__} {one_line(error)}".rstrip()) from None
    monitor_dir = options.run_dir / MONITOR_DIR
    monitor_dir.mkdir(parents=True, exist_ok=True)
    # Not SB3's VecMonitor: it would recount each episode from the rewards it sees (clipped, and cut
    # at every life loss, in Atari training envs) and overwrite the raw-score ``info["episode"]``
    # that the per-env Monitor wrote, and it raises KeyError on a done without ``info["success"]``.
    # EpisodeCSV writes that per-env record as it is, one file per session (docs/train.md).
    return EpisodeCSV(venv, str(monitor_dir / f"session{session}"), options.env, trial.family == "minigrid")


def make_eval_env(trial: ResolvedTrial, env_id: str | None = None) -> Any:
    """An evaluation ``VecEnv`` (the train variant, or ``env_id``): at most ``eval_episodes`` envs, in-process.

    Built with evaluate.py's env arguments (:func:`rimrl.evaluation.environments.eval_env_kwargs`),
    so the episodes that pick ``best_model.zip`` are played as evaluate.py plays them (Atari:
    whole games, FIRE after a life loss, the same frame cap).
    """
    from rimrl.envs import make_env
    from rimrl.evaluation.environments import eval_env_kwargs

    env_id = trial.options.env if env_id is None else env_id
    n_envs = max(1, min(trial.options.eval_episodes, trial.n_envs))
    vec_env = "ale" if trial.vec_env == "ale" else "dummy"
    kwargs = eval_env_kwargs(env_id, None, trial.options.env_kwargs)
    try:
        return make_env(env_id, n_envs=n_envs, seed=trial.options.seed + EVAL_SEED_OFFSET, vec_env=vec_env, **kwargs)
    except Exception as error:
        raise ExperimentInputError(f"cannot make the evaluation env {env_id!r}: {type(error).__name__} {one_line(error)}".rstrip()) from None
