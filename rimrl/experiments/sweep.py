"""Run a grid of training trials (envs x cores x seeds) and summarise them.

Every trial is an ordinary :func:`rimrl.experiments.run.execute_trial` in its own process, with the same
run-directory layout as a single run. Backends:

- ``local`` (default): a process pool (``forkserver`` with torch & co. preloaded), ``--workers``
  trials at a time, one fresh process per trial. Workers sit in their own process group: a Ctrl-C reaches only this driver, which
  forwards it once to the running trials (they checkpoint and stop) and cancels the pending ones.
  A worker that dies (SIGKILL, segfault, OOM kill) breaks the pool, which stops its other workers
  (SIGTERM: they checkpoint). The driver then starts a new pool: the dead worker's trial is retried
  once with ``--resume`` semantics, the stopped ones continue from their checkpoints and the pending
  ones run as planned. A trial whose worker dies twice is reported as failed.
- ``ray``: each trial is a Ray task (``num_cpus`` = the trial's torch threads) on a new local Ray
  instance or, with ``--ray-address``, on a running cluster. Ray is imported lazily. A task whose
  worker dies is retried once the same way (Ray's own retries would rerun it without ``--resume``).

Before anything runs, every trial is validated (env id, hyperparameter keys and types, run
directory conflicts) and each distinct (env, core, hyperparameters) agent is built once, so a bad
grid fails at once (:class:`~rimrl.experiments.errors.ExperimentInputError`, exit status 2 in
the CLI). After that a failing trial is reported and the others go on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rimrl.agents.training import STOP
from rimrl.experiments.errors import EXIT_USAGE, ExperimentInputError
from rimrl.experiments.io import one_line
from rimrl.experiments.options import (
    CONFIG_FILE,
    EXIT_FAILED,
    EXIT_OK,
    ResolvedTrial,
    TrainOptions,
    TrialResult,
)
from rimrl.experiments.run import execute_trial
from rimrl.experiments.validation import resolve_trial

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
    "completed": "green", "skipped": "cyan", "interrupted": "yellow", "cancelled": "yellow", "pruned": "yellow",
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
    except ExperimentInputError as error:
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
#: Shared with the driver, one slot per trial: 0 (not started in this pool), the pid of the worker
#: running it, or -1 (returned). A pid left behind when the pool broke names the worker that died.
_SLOTS: Any = None
_NOT_STARTED, _RETURNED = 0, -1

#: Test-only hook, never set by users: ``"SEED[:N],..."`` makes that seed's trial SIGKILL its own
#: worker right after a checkpoint until its worker has died N (default 1) times, so the tests can
#: make a worker die at a known point. Read in the worker process; unset, it costs one lookup.
_TEST_KILL_ENV = "RIMRL_TEST_KILL_SEEDS"


@contextlib.contextmanager
def _test_kill_hook(options: TrainOptions, deaths: int) -> Iterator[None]:
    """Arm :data:`_TEST_KILL_ENV` for a trial whose workers died ``deaths`` times so far (a no-op
    unless the variable names this seed)."""
    spec = os.environ.get(_TEST_KILL_ENV, "")
    kills: dict[int, int] = {}
    for item in filter(None, spec.split(",")):
        seed, _, times = item.partition(":")
        kills[int(seed)] = int(times or 1)
    if deaths >= kills.get(options.seed, 0):
        yield
        return
    from rimrl.experiments.callbacks import RunCheckpointCallback

    original = RunCheckpointCallback.save

    def save_then_die(self: Any, model: Any) -> Path:
        path = original(self, model)
        os.kill(os.getpid(), signal.SIGKILL)
        return path  # pragma: no cover - not reached

    RunCheckpointCallback.save = save_then_die  # type: ignore[method-assign]
    try:
        yield
    finally:  # Ray reuses its workers: leave no armed hook behind
        RunCheckpointCallback.save = original  # type: ignore[method-assign]


def _worker_init(stop_event: Any, slots: Any = None) -> None:
    """Pool worker setup: own process group (the driver forwards signals to it), signals recorded as
    a stop request from the start (a signal during setup must not kill the worker and break the
    pool), one torch thread."""
    global _STOP_EVENT, _SLOTS
    _STOP_EVENT, _SLOTS = stop_event, slots
    os.setpgrp()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, STOP.handler)
    import torch

    torch.set_num_threads(1)


def _pool_trial(index: int, options: TrainOptions, deaths: int = 0) -> TrialResult:
    """A pool worker's trial (``index`` in the grid; its workers died ``deaths`` times before):
    cancelled if the sweep was stopped before it began; its slot tells the driver which trial
    this worker runs."""
    if _SLOTS is not None:
        _SLOTS[index] = os.getpid()
    try:
        if STOP.signum is not None or (_STOP_EVENT is not None and _STOP_EVENT.is_set()):
            return _result_for(options, "cancelled", EXIT_FAILED, "the sweep was stopped before it started")
        with _test_kill_hook(options, deaths):
            return run_trial_safely(options, keep_pending_signal=True)
    finally:
        if _SLOTS is not None:
            _SLOTS[index] = _RETURNED


def _ray_trial(options: TrainOptions, deaths: int = 0) -> TrialResult:
    """A Ray task's trial (its workers died ``deaths`` times before)."""
    with _test_kill_hook(options, deaths):
        return run_trial_safely(options)


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
        env = make_env(options.env, n_envs=trial.n_envs, seed=0, vec_env=vec_env, wrappers=options.env_wrapper,
                       **options.env_kwargs)
    except (ValueError, TypeError) as error:
        raise ExperimentInputError(f"{options.name}: {one_line(error)}") from None
    try:
        make_agent(env, core=options.core, preset=trial.preset_for_agent, seed=0, device="cpu",
                   allow_imports=options.allow_imports, env_id=options.env, **trial.overrides)
    except (ValueError, TypeError, AssertionError) as error:
        raise ExperimentInputError(f"{options.name}: invalid hyperparameters for core {options.core!r}: {one_line(error)}") from None
    finally:
        env.close()


def preflight(trials: Sequence[TrainOptions]) -> list[ResolvedTrial]:
    """Validate every trial and build each distinct agent once; :class:`ExperimentInputError` on the first problem."""
    resolved = []
    for options in trials:
        try:
            resolved.append(resolve_trial(dataclasses.replace(options, quiet=True)))
        except ExperimentInputError as error:
            raise ExperimentInputError(f"{options.name}: {error}", error.exit_code) from None
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
_PRELOAD = ["rimrl.experiments.run", "rimrl.agents", "rimrl.envs", "rimrl.evaluation.rollout"]


def _pool_context() -> multiprocessing.context.BaseContext:
    """``forkserver`` with the heavy imports preloaded (fresh, fast trial processes); ``spawn`` where
    there is no forkserver."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _warn(message: str) -> None:
    """A sweep notice that matters even with ``-q`` (a worker died, a trial is retried)."""
    print(f"sweep: {message}", file=sys.stderr, flush=True)


def _trial_id(options: TrainOptions) -> str:
    """``env/core/seedK``, as the sweep's progress lines name a trial."""
    return f"{options.env}/{options.core}/seed{options.seed}"


def _death_cause(exitcode: int | None) -> str:
    """How a worker process ended, for messages: ``SIGKILL``, ``exit code 3`` or ``cause unknown``."""
    if exitcode is None:
        return "cause unknown"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _died_message(causes: Sequence[str]) -> str:
    shown = causes[0] if len(set(causes)) == 1 else ", then ".join(causes)
    return f"worker process died twice ({shown})"


def _rerun_result(result: TrialResult, note: str) -> TrialResult:
    """A rerun trial's result with ``note`` as its message (unless it has its own). "Already complete"
    means the lost attempt finished the run before its result got back: that is ``completed``."""
    status = "completed" if result.status == "skipped" else result.status
    return dataclasses.replace(result, status=status, message=result.message or note)


def _retry_options(options: TrainOptions, started: bool, since: float) -> TrainOptions:
    """The options for running a lost trial again: ``--resume`` semantics once it has started (it
    continues from its latest checkpoint, or starts afresh without one).

    A trial that never started runs as planned; so does an ``--overwrite`` one whose run directory
    was not rewritten since ``since`` (it died before replacing the old run, which must not be resumed).
    """
    if not started:
        return options
    if options.overwrite:
        try:
            rewritten = (options.run_dir / CONFIG_FILE).stat().st_mtime >= since
        except OSError:
            rewritten = False
        if not rewritten:
            return options
    # Without "hyperparams" among the explicit fields, resuming does not print a note about ignoring
    # them: they are the very ones this run saved.
    return dataclasses.replace(options, resume=True, overwrite=False, explicit=options.explicit - {"hyperparams"})


def run_local(trials: Sequence[TrainOptions], workers: int | None = None,
              on_result: Callable[[TrialResult], None] | None = None) -> tuple[list[TrialResult], int | None]:
    """Run the trials in a process pool (one process per trial); return (results in grid order, signal or None).

    A worker that dies breaks the pool: every unfinished trial's future fails and the pool stops its
    other workers (SIGTERM, so their trials checkpoint). The trials are then run again in a new pool
    (see :func:`_retry_options`); the one whose worker died counts a death, and a second death makes
    it ``failed``. An operator's SIGINT/SIGTERM stops everything and retries nothing.
    """
    workers = max(1, workers or min(len(trials), os.cpu_count() or 1))
    count = len(trials)
    results: dict[int, TrialResult] = {}
    context = _pool_context()
    stop_event = context.Event()
    slots = context.Array("q", count)  # see _SLOTS
    runs = list(trials)  # each trial's next attempt
    causes: list[list[str]] = [[] for _ in range(count)]  # how its own workers died
    notes = [""] * count
    pool: ProcessPoolExecutor | None = None
    futures: dict[Future, int] = {}
    broken = False

    def finish(index: int, result: TrialResult) -> None:
        if notes[index]:  # a rerun after a broken pool
            result = _rerun_result(result, notes[index])
        results[index] = result
        if on_result is not None:
            on_result(result)

    def stop(signum: int) -> None:
        stop_event.set()
        for future in list(futures):
            future.cancel()  # only those not started
        if pool is None or broken:
            return  # a broken pool has signalled its workers already: a second signal would kill them
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            if process.pid is not None and process.is_alive():
                try:
                    os.kill(process.pid, signum)
                except ProcessLookupError:
                    pass

    todo = list(range(count))
    with _StopOnSignal(stop) as guard:
        while todo:
            since = time.time()
            for index in todo:
                slots[index] = _NOT_STARTED
            pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                       initargs=(stop_event, slots), max_tasks_per_child=1)
            broken, lost = False, []
            # The pool's pid -> worker map (private; read only if present): it still holds a dead
            # worker after the break, so its exit code tells how it died.
            processes: dict[int, Any] = getattr(pool, "_processes", None)
            if processes is None:
                processes = {}
            futures = {}
            try:
                for index in todo:
                    try:
                        futures[pool.submit(_pool_trial, index, runs[index], len(causes[index]))] = index
                    except BrokenProcessPool:
                        broken = True
                        lost.append(index)
                for future in as_completed(futures):
                    index = futures[future]
                    if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
                        if not broken and guard.signum is None:
                            _warn("a worker process died; the pool stops its other trials (they save a checkpoint) "
                                  "and they are run again")
                        broken = True
                        lost.append(index)
                    else:
                        finish(index, _collect(future, runs[index]))
            finally:
                pool.shutdown(wait=True, cancel_futures=True)  # also waits for the stopped trials' checkpoints
            todo = _after_break(sorted(lost), runs, slots, processes, causes, notes, since, guard.signum, finish)
    return [results[i] for i in range(count)], guard.signum


def _after_break(lost: Sequence[int], runs: list[TrainOptions], slots: Any, processes: dict[int, Any],
                 causes: list[list[str]], notes: list[str], since: float, signum: int | None,
                 finish: Callable[[int, TrialResult], None]) -> list[int]:
    """Settle the trials a broken pool lost; return those to run again (updating ``runs``).

    A trial whose slot still holds a pid was running in a worker that died (the others return and
    reset theirs); when none does, the cause is unknown and every lost trial counts the death, so a
    pool that keeps breaking cannot retry forever.
    """
    exitcodes = {pid: getattr(process, "exitcode", None) for pid, process in list(processes.items())}
    died = [i for i in lost if slots[i] > 0]
    charged = set(died or lost)
    again = []
    for index in lost:
        options, slot = runs[index], slots[index]
        if signum is not None:  # the operator stopped the sweep: no retries
            finish(index, _result_for(options, "cancelled", EXIT_FAILED,
                                      "the sweep was stopped while its worker pool was broken; --resume continues it"))
            continue
        if index in charged:
            cause = _death_cause(exitcodes.get(slot) if slot > 0 else None)
            causes[index].append(cause)
            if len(causes[index]) >= 2:
                message = _died_message(causes[index])
                print(f"[{options.label}] error: {message}; giving up on this trial", file=sys.stderr, flush=True)
                finish(index, _result_for(options, "failed", EXIT_FAILED, message))
                continue
            what = f"its worker process died ({cause})" if slot > 0 else "the pool broke (cause unknown)"
            _warn(f"{_trial_id(options)}: {what}; retrying it once with --resume")
            notes[index] = f"retried: {what}"
        elif slot != _NOT_STARTED:
            _warn(f"{_trial_id(options)}: stopped because the pool broke; continuing it with --resume")
            notes[index] = notes[index] or "continued with --resume after another trial's worker died"
        runs[index] = _retry_options(options, started=slot != _NOT_STARTED, since=since)
        again.append(index)
    return again


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
    """``import ray``, or a :class:`ExperimentInputError` telling how to install it."""
    try:
        import ray
    except ImportError:
        raise ExperimentInputError(RAY_MISSING) from None
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
    runs = list(trials)  # each trial's next attempt
    deaths: list[str] = [""] * len(trials)  # the first worker death, if any
    pending: dict[Any, int] = {}

    def submit(index: int) -> None:
        # No Ray retries: Ray would rerun the task as it was, without --resume.
        task = ray.remote(num_cpus=max(1, runs[index].threads), max_retries=0)(_ray_trial)
        pending[task.remote(runs[index], 1 if deaths[index] else 0)] = index

    def stop(_signum: int) -> None:
        for ref in list(pending):
            ray.cancel(ref)  # a running trial gets KeyboardInterrupt -> SIGINT handler -> checkpoint

    try:
        with _StopOnSignal(stop) as guard:
            submitted = time.time()
            for i in range(len(trials)):
                submit(i)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    options = runs[index]
                    result, died = _ray_result(ray, ref, options, cancelled=guard.signum is not None)
                    if died and not deaths[index]:
                        deaths[index] = died
                        _warn(f"{_trial_id(options)}: its worker process died ({died}); retrying it once with --resume")
                        runs[index] = _retry_options(options, started=True, since=submitted)
                        submit(index)
                        continue
                    if died:
                        message = f"worker process died twice ({died})"
                        print(f"[{options.label}] error: {message}; giving up on this trial", file=sys.stderr,
                              flush=True)
                        result = _result_for(options, "failed", EXIT_FAILED, message)
                    elif deaths[index]:
                        result = _rerun_result(result, f"retried: its worker process died ({deaths[index]})")
                    results[index] = result
                    if on_result is not None:
                        on_result(result)
    finally:
        if started_here:
            ray.shutdown()
    return [results[i] for i in range(len(trials))], guard.signum


#: Ray errors meaning the task's worker (or its node) died, not that the trial raised.
_RAY_DEATHS = ("WorkerCrashedError", "OutOfMemoryError", "NodeDiedError", "LocalRayletDiedError")


def _ray_result(ray: Any, ref: Any, options: TrainOptions, cancelled: bool) -> tuple[TrialResult, str]:
    """The task's result, and the name of the Ray error when its worker died (else "")."""
    try:
        return ray.get(ref), ""
    except Exception as error:  # RayTaskError, WorkerCrashedError, TaskCancelledError, ...
        if cancelled:
            return _result_for(options, "cancelled", EXIT_FAILED, "cancelled"), ""
        message = f"{type(error).__name__}: {one_line(error)}"
        deaths = tuple(getattr(ray.exceptions, name) for name in _RAY_DEATHS if hasattr(ray.exceptions, name))
        died = type(error).__name__ if deaths and isinstance(error, deaths) else ""
        return _result_for(options, "failed", EXIT_FAILED, message), died


# ----------------------------------------------------------------------------------------------
# Summary and the driver
# ----------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_summary(results: Sequence[TrialResult], file: Any = None) -> None:
    """A rich table: each trial's status, steps, final train success rate and mean return."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stream = file or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    table = Table(title=f"sweep: {len(results)} trials", show_lines=False)
    for column, justify in (("env", "left"), ("core", "left"), ("seed", "right"), ("status", "left"),
                            ("steps", "right"), ("success", "right"), ("return", "right"), ("time", "right"),
                            ("note", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for r in results:
        style = _STATUS_STYLE.get(r.status, "")
        # Text, not markup: a note like "[rimrl/...] error" or a "[k]" key must print as it is.
        table.add_row(
            Text(r.env), Text(r.core), str(r.seed), Text(r.status, style=style),
            "-" if r.num_timesteps is None else f"{r.num_timesteps:,}", _fmt(r.success_rate, ".2f"),
            _fmt(r.mean_return, ".3g"), "-" if r.wall_time_s is None else f"{r.wall_time_s:.0f}s",
            Text(r.message),
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
        raise ExperimentInputError("nothing to run: the grid is empty")
    if backend not in ("local", "ray"):
        raise ExperimentInputError(f"unknown backend {backend!r}; choose local or ray")
    if workers is not None and workers < 1:
        raise ExperimentInputError(f"--workers must be >= 1, got {workers}")
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
    except ExperimentInputError as error:
        raise ExperimentInputError(str(error), EXIT_USAGE) from None
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
