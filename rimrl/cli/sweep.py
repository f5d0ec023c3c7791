"""Run a grid of training trials (envs x cores x seeds) and summarise them.

Every trial is an ordinary :func:`rimrl.cli.train.execute_trial` in its own process, with the same
run-directory layout as a single run. Backends:

- ``local`` (default): a process pool (``forkserver`` with torch & co. preloaded), ``--workers``
  trials at a time, one fresh process per trial. Workers sit in their own process group: a Ctrl-C reaches only this driver, which
  forwards it once to the running trials (they checkpoint and stop) and cancels the pending ones.
- ``ray``: each trial is a Ray task (``num_cpus`` = the trial's torch threads) on a new local Ray
  instance or, with ``--ray-address``, on a running cluster. Ray is imported lazily.

Before anything runs, every trial is validated (env id, hyperparameter keys and types, run
directory conflicts) and each distinct (env, core, hyperparameters) agent is built once, so a bad
grid fails at once with exit status 2. After that a failing trial is reported and the others go on.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rimrl.cli.common import CLIError, one_line
from rimrl.cli.train import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    STOP,
    ResolvedTrial,
    TrainOptions,
    TrialResult,
    execute_trial,
    resolve_trial,
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

RAY_MISSING = "the ray backend needs Ray: pip install rimrl[ray]  (or: pip install 'ray>=2.9')"
_STATUS_STYLE = {
    "completed": "green", "skipped": "cyan", "interrupted": "yellow", "cancelled": "yellow",
    "nan": "red", "invalid": "red", "failed": "red",
}


def _say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, flush=True)


def _result_for(options: TrainOptions, status: str, exit_code: int, message: str) -> TrialResult:
    return TrialResult(env=options.env, core=options.core, seed=options.seed, run_dir=str(options.run_dir),
                       status=status, exit_code=exit_code, message=message)


# ----------------------------------------------------------------------------------------------
# One trial, never raising (the unit of work sent to pool workers and Ray tasks)
# ----------------------------------------------------------------------------------------------


def run_trial_safely(options: TrainOptions, keep_pending_signal: bool = False) -> TrialResult:
    """:func:`execute_trial`, turning every exception into a failed :class:`TrialResult`."""
    try:
        return execute_trial(options, keep_pending_signal=keep_pending_signal)
    except CLIError as error:
        print(f"[{options.label}] error: {one_line(error)}", file=sys.stderr, flush=True)
        return _result_for(options, "invalid", error.exit_code, one_line(error))
    except KeyboardInterrupt:
        return _result_for(options, "interrupted", 130, "interrupted before training started")
    except Exception as error:  # a bug or a crash inside training: report it, keep the sweep going
        traceback.print_exc()
        message = f"{type(error).__name__}: {one_line(error)}"
        print(f"[{options.label}] error: trial failed: {message}", file=sys.stderr, flush=True)
        return _result_for(options, "failed", EXIT_FAILED, message)


#: Set by the driver on SIGINT/SIGTERM: pool trials that start afterwards are cancelled.
_STOP_EVENT: Any = None


def _worker_init(stop_event: Any) -> None:
    """Pool worker setup: own process group (the driver forwards signals to it), signals recorded as
    a stop request from the start (a signal during setup must not kill the worker and break the
    pool), one torch thread."""
    global _STOP_EVENT
    _STOP_EVENT = stop_event
    os.setpgrp()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, STOP.handler)
    import torch

    torch.set_num_threads(1)


def _pool_trial(options: TrainOptions) -> TrialResult:
    """A pool worker's trial: cancelled if the sweep was stopped before it began."""
    if STOP.signum is not None or (_STOP_EVENT is not None and _STOP_EVENT.is_set()):
        return _result_for(options, "cancelled", EXIT_FAILED, "the sweep was stopped before it started")
    return run_trial_safely(options, keep_pending_signal=True)


# ----------------------------------------------------------------------------------------------
# Validation before launch
# ----------------------------------------------------------------------------------------------


def _probe_key(trial: ResolvedTrial) -> str:
    payload = {"env": trial.options.env, "core": trial.options.core, "preset": trial.preset_for_agent,
               "overrides": trial.overrides}
    return json.dumps(payload, sort_keys=True, default=str)


def _probe(trial: ResolvedTrial) -> None:
    """Build the agent once on a throwaway env to surface invalid core hyperparameters (k > num_units)."""
    from rimrl.agents import make_agent
    from rimrl.envs import make_env

    options = trial.options
    vec_env = "ale" if trial.vec_env == "ale" else "dummy"
    try:
        env = make_env(options.env, n_envs=trial.n_envs, seed=0, vec_env=vec_env, **options.env_kwargs)
    except (ValueError, TypeError) as error:
        raise CLIError(f"{options.name}: {one_line(error)}") from None
    try:
        make_agent(env, core=options.core, preset=trial.preset_for_agent, seed=0, device="cpu", **trial.overrides)
    except (ValueError, TypeError, AssertionError) as error:
        raise CLIError(f"{options.name}: invalid hyperparameters for core {options.core!r}: {one_line(error)}") from None
    finally:
        env.close()


def preflight(trials: Sequence[TrainOptions]) -> list[ResolvedTrial]:
    """Validate every trial and build each distinct agent once; :class:`CLIError` on the first problem."""
    resolved = []
    for options in trials:
        try:
            resolved.append(resolve_trial(dataclasses.replace(options, quiet=True)))
        except CLIError as error:
            raise CLIError(f"{options.name}: {error}", error.exit_code) from None
    seen: set[str] = set()
    for trial in resolved:
        key = _probe_key(trial)
        if key not in seen:
            seen.add(key)
            _probe(trial)
    return resolved


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------


class _StopOnSignal:
    """While active, SIGINT/SIGTERM call ``on_signal(signum)`` once (a second one is the default)."""

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self.on_signal = on_signal
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_DFL)
        if self.signum is None:
            self.signum = signum
            self.on_signal(signum)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


#: Imported once by the forkserver, so each trial process starts without re-importing torch & co.
_PRELOAD = ["rimrl.cli.train", "rimrl.agents", "rimrl.envs", "rimrl.evaluation.rollout"]


def _pool_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with the heavy imports preloaded (fresh, fast trial processes); ``spawn`` where
    there is no forkserver."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def run_local(trials: Sequence[TrainOptions], workers: int | None = None,
              on_result: Callable[[TrialResult], None] | None = None) -> tuple[list[TrialResult], int | None]:
    """Run the trials in a process pool (one process per trial); return (results in grid order, signal or None)."""
    workers = max(1, workers or min(len(trials), os.cpu_count() or 1))
    results: dict[int, TrialResult] = {}
    context = _pool_context()
    stop_event = context.Event()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                               initargs=(stop_event,), max_tasks_per_child=1)
    futures: dict[Future, int] = {}

    def stop(signum: int) -> None:
        stop_event.set()
        for future in futures:
            future.cancel()  # only those not started
        for process in list(getattr(pool, "_processes", {}).values()):
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    with _StopOnSignal(stop) as guard:
        try:
            futures.update({pool.submit(_pool_trial, options): i for i, options in enumerate(trials)})
            for future in as_completed(futures):
                index = futures[future]
                results[index] = _collect(future, trials[index])
                if on_result is not None:
                    on_result(results[index])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return [results[i] for i in range(len(trials))], guard.signum


def _collect(future: Future, options: TrainOptions) -> TrialResult:
    try:
        return future.result()
    except CancelledError:
        return _result_for(options, "cancelled", EXIT_FAILED, "cancelled before it started")
    except BrokenProcessPool as error:
        return _result_for(options, "failed", EXIT_FAILED, f"worker process died: {one_line(error)}")
    except Exception as error:
        return _result_for(options, "failed", EXIT_FAILED, f"{type(error).__name__}: {one_line(error)}")


def import_ray() -> Any:
    """``import ray``, or a :class:`CLIError` telling how to install it."""
    try:
        import ray
    except ImportError:
        raise CLIError(RAY_MISSING) from None
    return ray


def run_ray(trials: Sequence[TrainOptions], workers: int | None = None, address: str | None = None,
            on_result: Callable[[TrialResult], None] | None = None) -> tuple[list[TrialResult], int | None]:
    """Run each trial as a Ray task; return (results in grid order, signal or None).

    Without ``address`` a local Ray instance with ``workers`` CPUs (default: min(trials, CPUs)) is
    started and shut down afterwards; with one, the tasks go to that cluster (whose nodes need
    rimrl installed and the log folder on shared storage).
    """
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
        if address:
            ray.init(address=address, **init_kwargs)
        else:
            ray.init(num_cpus=max(1, workers or min(len(trials), os.cpu_count() or 1)), **init_kwargs)
    results: dict[int, TrialResult] = {}
    try:
        pending: dict[Any, int] = {}
        for i, options in enumerate(trials):
            task = ray.remote(num_cpus=max(1, options.threads), max_retries=0)(run_trial_safely)
            pending[task.remote(options)] = i

        def stop(_signum: int) -> None:
            for ref in list(pending):
                ray.cancel(ref)  # a running trial gets KeyboardInterrupt -> SIGINT handler -> checkpoint

        with _StopOnSignal(stop) as guard:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    results[index] = _ray_result(ray, ref, trials[index], cancelled=guard.signum is not None)
                    if on_result is not None:
                        on_result(results[index])
    finally:
        if started_here:
            ray.shutdown()
    return [results[i] for i in range(len(trials))], guard.signum


def _ray_result(ray: Any, ref: Any, options: TrainOptions, cancelled: bool) -> TrialResult:
    try:
        return ray.get(ref)
    except Exception as error:  # RayTaskError, WorkerCrashedError, TaskCancelledError, ...
        if cancelled:
            return _result_for(options, "cancelled", EXIT_FAILED, "cancelled")
        return _result_for(options, "failed", EXIT_FAILED, f"{type(error).__name__}: {one_line(error)}")


# ----------------------------------------------------------------------------------------------
# Summary and the driver
# ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(results: Sequence[TrialResult], file: Any = None) -> None:
    """A rich table: each trial's status, steps, final train success rate and mean return."""
    from rich.console import Console
    from rich.table import Table

    stream = file or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    table = Table(title=f"sweep: {len(results)} trials", show_lines=False)
    for column, justify in (("env", "left"), ("core", "left"), ("seed", "right"), ("status", "left"),
                            ("steps", "right"), ("success", "right"), ("return", "right"), ("time", "right"),
                            ("note", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for r in results:
        style = _STATUS_STYLE.get(r.status, "")
        table.add_row(
            r.env, r.core, str(r.seed), f"[{style}]{r.status}[/]" if style else r.status,
            "-" if r.num_timesteps is None else f"{r.num_timesteps:,}", _fmt(r.success_rate, ".2f"),
            _fmt(r.mean_return, ".3g"), "-" if r.wall_time_s is None else f"{r.wall_time_s:.0f}s",
            r.message if r.status not in ("completed", "skipped") else "",
        )
    console.print(table)


def sweep_exit_code(results: Sequence[TrialResult], signum: int | None) -> int:
    """128 + signal if interrupted; 1 if any trial did not complete; else 0."""
    if signum is not None:
        return 128 + signum
    return EXIT_OK if all(r.status in ("completed", "skipped") for r in results) else EXIT_FAILED


def run_sweep(trials: Sequence[TrainOptions], backend: str = "local", workers: int | None = None,
              ray_address: str | None = None) -> int:
    """Validate, run and summarise a grid of trials; the exit status for ``rimrl-train``."""
    if not trials:
        raise CLIError("nothing to run: the grid is empty")
    if backend not in ("local", "ray"):
        raise CLIError(f"unknown backend {backend!r}; choose local or ray")
    if workers is not None and workers < 1:
        raise CLIError(f"--workers must be >= 1, got {workers}")
    if backend == "ray":
        import_ray()  # fail before any work when Ray is missing
    quiet = trials[0].quiet
    trials = [
        dataclasses.replace(
            t, log_folder=str(Path(t.log_folder).resolve()), label=t.label or t.name, progress_bar=False,
            tensorboard=str(Path(t.tensorboard).resolve()) if t.tensorboard else None,
        )
        for t in trials
    ]
    _say(f"sweep: validating {len(trials)} trials", quiet)
    try:
        preflight(trials)
    except CLIError as error:
        raise CLIError(str(error), EXIT_USAGE) from None
    where = f"Ray ({ray_address or 'local instance'})" if backend == "ray" else f"{workers or 'auto'} local workers"
    _say(f"sweep: running {len(trials)} trials on {where}", quiet)

    def report(result: TrialResult) -> None:
        _say(f"sweep: {result.env}/{result.core}/seed{result.seed}: {result.status}", quiet)

    if backend == "ray":
        results, signum = run_ray(trials, workers, ray_address, on_result=report)
    else:
        results, signum = run_local(trials, workers, on_result=report)
    print_summary(results)
    return sweep_exit_code(results, signum)
