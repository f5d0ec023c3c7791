"""One training run: :class:`Trainer` builds the envs and the agent, runs ``learn`` with the run's
callbacks (:mod:`rimrl.experiments.callbacks`), then saves ``model.zip``, the final evaluation and
``final_metrics.json``; :func:`execute_trial` validates options and runs them in this process.

Bad input raises :class:`~rimrl.experiments.errors.ExperimentInputError`; a run that stops on a
signal, on NaN or on a full disk returns a :class:`~rimrl.experiments.options.TrialResult` saying so.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import shlex
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecEnv

from rimrl.agents.activity import CoreActivityCallback
from rimrl.agents.storage import LOCK_FILES, DirectoryBusyError, directory_lock, has_content
from rimrl.agents.training import (
    CHECKPOINT_RE,
    STOP,
    CheckpointManager,
    EvalHistory,
    EvalResult,
    NonFiniteError,
    divergence_reason,
    list_checkpoints,
    params_finite,
    save_model_atomic,
    stop_on_signals,
)
from rimrl.experiments.callbacks import (
    Printer,
    RecurrentEvalCallback,
    RunCallback,
    RunCheckpointCallback,
    fmt_duration,
    logger_of,
)
from rimrl.experiments.envs import make_eval_env, make_train_env
from rimrl.experiments.errors import ExperimentInputError
from rimrl.experiments.io import (
    git_info,
    one_line,
    package_versions,
    program_name,
    to_yaml_safe,
    write_json,
    write_yaml,
)
from rimrl.experiments.options import (
    BEST_MODEL_FILE,
    CONFIG_FILE,
    EVAL_SEED_OFFSET,
    EVALUATIONS_FILE,
    EXIT_FAILED,
    EXIT_OK,
    METRICS_FILE,
    MODEL_FILE,
    SESSION_SEED_STRIDE,
    TB_DIR,
    TB_LOG_NAME,
    ResolvedTrial,
    TrainOptions,
    TrialResult,
    variant_evaluations_file,
)
from rimrl.experiments.validation import resolve_trial

__all__ = ["Trainer", "execute_trial"]


#: ``OSError`` numbers that mean "the storage refused a write", not a bug.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                             errno.ENOENT})


def _remove_run_dir(run_dir: Path, log_folder: str) -> None:
    """Delete ``run_dir`` and the ``<env>/<core>`` folders above it that are left empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    root = Path(log_folder).resolve()
    for parent in (run_dir.parent, run_dir.parent.parent):
        if parent.resolve() == root:
            break
        with contextlib.suppress(OSError):
            parent.rmdir()  # only if empty


class Trainer:
    """Run one resolved trial: build, train, checkpoint, evaluate, save. See :meth:`run`."""

    def __init__(self, trial: ResolvedTrial) -> None:
        self.trial = trial
        options = trial.options
        self.say = Printer(options.label, options.quiet)
        tty = sys.stdout.isatty()
        wanted = options.progress_bar if options.progress_bar is not None else tty
        self.show_progress_bar = bool(wanted and not options.quiet and not options.label)
        self.run_dir = options.run_dir
        self.model: Any = None
        self.eval_env: Any = None
        self.history: EvalHistory | None = None
        # --eval-variants: variant -> (its evaluation env, its history file)
        self.variant_evals: dict[str, tuple[Any, EvalHistory]] = {}
        self.checkpointer: RunCheckpointCallback | None = None  # periodic, final and signal checkpoints
        self.evaluator: RecurrentEvalCallback | None = None  # periodic and final evaluations
        self.fresh = False  # run() created this run directory (nothing of the user's is in it)
        self.started = time.time()

    @property
    def stop_reason(self) -> str | None:
        """Set when ``options.on_evaluation`` asked to stop (its message); the run ends as ``pruned``."""
        return self.evaluator.stop_reason if self.evaluator is not None else None

    @property
    def last_eval(self) -> EvalResult | None:
        """The latest evaluation on the train variant (``None`` before the first)."""
        return self.evaluator.last_result if self.evaluator is not None else None

    # --- small pieces ----------------------------------------------------------------------------
    @property
    def tensorboard_dir(self) -> Path:
        options = self.trial.options
        if options.tensorboard:
            return options.dir_under(options.tensorboard)
        return self.run_dir / TB_DIR

    def check_finite(self, model: Any, where: str) -> None:
        """Raise :class:`NonFiniteError` if the last loss or any parameter is NaN/inf."""
        logger = logger_of(model)
        loss = logger.name_to_value.get("train/loss") if logger is not None else None
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteError(f"the loss is non-finite ({loss}) {where}")
        if not params_finite(model):
            raise NonFiniteError(f"the parameters became non-finite {where}")

    @property
    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint of this run (written or resumed from), ``None`` before setup."""
        return self.checkpointer.last_checkpoint if self.checkpointer is not None else None

    def checkpoint(self, model: Any) -> Path:
        """Checkpoint ``model`` now (see :class:`~rimrl.experiments.callbacks.RunCheckpointCallback`)."""
        assert self.checkpointer is not None
        return self.checkpointer.save(model)

    def evaluate(self, model: Any, steps: int) -> EvalResult:
        """Evaluate now; ``best_model.zip`` when it is the best so far (see
        :class:`~rimrl.experiments.callbacks.RecurrentEvalCallback`)."""
        assert self.evaluator is not None
        return self.evaluator.evaluate(model, steps)

    # --- setup -----------------------------------------------------------------------------------
    def _prepare_dir(self) -> tuple[int, dict[str, Any]]:
        """Create (or clear, with --overwrite) the run dir; return (session index, config)."""
        options = self.trial.options
        if options.overwrite:  # everything but the lock this process holds
            for child in self.run_dir.iterdir():
                if child.name not in LOCK_FILES:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        for stray in self.run_dir.glob(".tmp-*"):
            stray.unlink(missing_ok=True)
        config = self._config()
        session = len(config["sessions"]) - 1
        write_yaml(self.run_dir / CONFIG_FILE, config)
        return session, config

    def _config(self) -> dict[str, Any]:
        """``config.yml``: the top-level settings, every resolved hyperparameter and provenance."""
        trial, options = self.trial, self.trial.options
        saved = trial.saved_config or {}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        command = shlex.join([program_name("train.py", "rimrl-train"), *options.argv])
        sessions = list(saved.get("sessions") or [])
        sessions.append({"started": now, "command": command, "from_timesteps": self._start_timesteps})
        return {
            "env": options.env,
            "core": options.core,
            "seed": options.seed,
            "n_timesteps": options.n_timesteps,
            "n_envs": trial.n_envs,
            "vec_env": trial.vec_env,
            "preset": options.preset,
            "hyperparams": to_yaml_safe(trial.params),
            "env_kwargs": to_yaml_safe(options.env_kwargs),
            "gym_packages": list(options.gym_packages),
            "env_wrapper": to_yaml_safe(list(options.env_wrapper)),
            "overrides": to_yaml_safe(saved.get("overrides", options.hyperparams)),
            "family": trial.family,
            "eval_freq": options.eval_freq,
            "eval_episodes": options.eval_episodes,
            "eval_deterministic": options.eval_deterministic,
            "eval_variants": list(options.eval_variants),
            "save_freq": options.save_freq,
            "keep_checkpoints": options.keep_checkpoints,
            "device": options.device,
            "resolved_device": str(get_device(options.device)),  # what "auto" became on this machine
            "tensorboard": options.tensorboard,
            "tensorboard_dir": str(self.tensorboard_dir),
            "command": saved.get("command", command),
            "argv": saved.get("argv", list(options.argv)),
            "cwd": saved.get("cwd", os.getcwd()),
            "created": saved.get("created", now),
            "versions": package_versions(),
            "git": git_info(),
            "sessions": sessions,
        }

    @property
    def _start_timesteps(self) -> int:  # where this session starts
        resume_from = self.trial.resume_from
        match = CHECKPOINT_RE.match(resume_from.name) if resume_from is not None else None
        return int(match.group(1)) if match else 0

    def _build_model(self, env: Any) -> Any:
        """A new agent (``make_agent``) or the latest checkpoint (``load_agent``)."""
        from rimrl.agents import AgentLoadError, load_agent, make_agent

        trial, options = self.trial, self.trial.options
        if trial.resume_from is not None:
            errors = []
            for _, path in list_checkpoints(self.run_dir):  # newest first; skip unreadable ones
                try:
                    model = load_agent(path, env=env, device=options.device)
                except AgentLoadError as error:
                    errors.append(one_line(error))
                    # Set aside, not deleted (nothing lost): no longer a checkpoint to resume from or
                    # to count against --keep-checkpoints.
                    aside = path.with_name(path.name + ".unreadable")
                    path.replace(aside)
                    self.say.warn(f"skipping unreadable checkpoint {path.name} (kept as {aside.name}): {errors[-1]}")
                    continue
                trial.resume_from = path
                model.tensorboard_log = str(self.tensorboard_dir)
                return model
            raise ExperimentInputError(f"cannot resume {str(self.run_dir)!r}: no loadable checkpoint ({'; '.join(errors)})")
        try:
            return make_agent(
                env, core=options.core, preset=trial.preset_for_agent, seed=options.seed,
                tensorboard_log=str(self.tensorboard_dir), verbose=0, device=options.device,
                allow_imports=options.allow_imports, env_id=options.env, **trial.overrides,
            )
        except (ValueError, TypeError, AssertionError) as error:
            raise ExperimentInputError(f"invalid hyperparameters for core {options.core!r}: {one_line(error)}") from None

    def _already_complete(self) -> dict[str, Any] | None:
        metrics_path = self.run_dir / METRICS_FILE
        if not (self.trial.options.resume and metrics_path.is_file() and (self.run_dir / MODEL_FILE).is_file()):
            return None
        import json

        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            return None
        if int(metrics.get("num_timesteps") or 0) >= self.trial.options.n_timesteps:
            return metrics
        return None

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> TrialResult:
        """Train to ``n_timesteps`` (or stop on a signal / NaN) and report the outcome."""
        options = self.trial.options
        started = self.started = time.time()
        done = self._already_complete()
        if done is not None:
            self.say(f"{self.run_dir} is already complete ({done.get('num_timesteps'):,} steps): nothing to do")
            return self._result("skipped", EXIT_OK, started, done)

        self.fresh = not has_content(self.run_dir) or options.overwrite
        try:
            with directory_lock(self.run_dir, what="run directory"):  # one writer per run directory
                return self._run_locked(started)
        except DirectoryBusyError as error:
            raise ExperimentInputError(str(error)) from None

    def _run_locked(self, started: float) -> TrialResult:
        if self.trial.options.resume and self.trial.resume_from is None:
            self.say(f"nothing to resume in {self.run_dir}: starting a new run")
        env = tracker = result = None
        try:
            session, config = self._prepare_dir()
            env = make_train_env(self.trial, session)
            self._setup(env, session)
            if self.trial.options.track:  # before learn() creates the TensorBoard writer W&B syncs
                from rimrl.experiments.tracking import start_tracking

                tracker = start_tracking(self.trial.options, config, self.run_dir)
            result = self._train(started)
        except OSError as error:
            if error.errno not in _STORAGE_ERRNOS:
                self._discard_if_nothing_kept()
                raise
            result = self._storage_failed(error, started)
        except BaseException:
            self._discard_if_nothing_kept()
            raise
        finally:
            for each in (env, self.eval_env, *(e for e, _ in self.variant_evals.values())):
                if each is not None:
                    each.close()
            if tracker is not None:
                tracker.finish(result.status if result is not None else "failed")
        if result.status in ("nan", "failed"):
            self._discard_if_nothing_kept()
        return result

    def _storage_failed(self, error: OSError, started: float) -> TrialResult:
        """A write failed mid-run (disk full, quota, the folder made read-only): stop cleanly, keeping
        the checkpoints already written (atomic writes never leave a torn one)."""
        kept = self.last_checkpoint
        where = (f"the last good checkpoint is {kept}; free space and continue with --resume" if kept
                 else "nothing was trained to keep")
        target = f" {error.filename}" if error.filename else ""
        message = f"training stopped: cannot write{target}: {error.strerror or error}; {where}"
        print(f"{self.say.prefix}error: {message}", file=sys.stderr, flush=True)
        return self._result("failed", EXIT_FAILED, started, {}, message=message)

    def _discard_if_nothing_kept(self) -> None:
        """A new run that failed before its first checkpoint leaves no directory behind (it would
        block the corrected rerun and holds nothing to resume)."""
        if self.fresh and self.last_checkpoint is None and self.run_dir.is_dir():
            _remove_run_dir(self.run_dir, self.trial.options.log_folder)

    def _setup(self, env: VecEnv, session: int) -> None:
        options = self.trial.options
        resume_from = self.trial.resume_from
        self.model = self._build_model(env)
        if self.trial.resume_from != resume_from:  # the newest checkpoint was unreadable: record the real one
            write_yaml(self.run_dir / CONFIG_FILE, self._config())
        if session > 0:
            self.model.set_random_seed(options.seed + SESSION_SEED_STRIDE * session)
        self.eval_env = make_eval_env(self.trial)
        for variant, env_id in self.trial.variant_envs.items():
            self.variant_evals[variant] = (make_eval_env(self.trial, env_id),
                                           EvalHistory(self.run_dir / variant_evaluations_file(variant)))
        self.history = EvalHistory(self.run_dir / EVALUATIONS_FILE)
        self.checkpointer = RunCheckpointCallback(
            CheckpointManager(self.run_dir, keep=options.keep_checkpoints), options.save_freq,
            last=self.trial.resume_from,
        )
        self.evaluator = RecurrentEvalCallback(
            self.eval_env, self.history, self.run_dir / BEST_MODEL_FILE, options.eval_episodes, options.eval_freq,
            deterministic=bool(options.eval_deterministic), seed=options.seed + EVAL_SEED_OFFSET,
            variants=self.variant_evals, say=self.say, on_evaluation=options.on_evaluation,
        )

    def _train(self, started: float) -> TrialResult:
        options = self.trial.options
        model = self.model
        start_steps = int(model.num_timesteps)
        verb = f"resuming at step {start_steps:,}" if self.trial.resume_from else "training"
        self.say(
            f"{verb}: {options.core.upper()} on {options.env} (seed {options.seed}, {self.trial.n_envs} envs, "
            f"{options.n_timesteps:,} steps) -> {self.run_dir}"
        )

        callback = RunCallback(self)
        remaining = options.n_timesteps - start_steps
        if remaining > 0:
            stopped = self._learn(model, callback, remaining, reset=self.trial.resume_from is None)
            if stopped is not None:
                return stopped
        # Completed: final checkpoint, model.zip, final evaluation, metrics.
        try:
            self.check_finite(model, where="after the last update")
        except NonFiniteError as error:
            return self._non_finite(str(error), started)
        if self.last_checkpoint is None or self._steps_of(self.last_checkpoint) != model.num_timesteps:
            self.checkpoint(model)
        save_model_atomic(model, self.run_dir / MODEL_FILE)
        # Written at its step by evaluate(). The last update's train/* values stay unwritten, as in
        # SB3: dumping them here would put a second point at the step where the previous update's
        # values already are.
        final = self.evaluate(model, int(model.num_timesteps))
        wall = time.time() - started
        metrics = self._write_metrics(model, final, wall, start_steps)
        rate = (model.num_timesteps - start_steps) / max(wall, 1e-9)
        self.say(f"done: {model.num_timesteps:,} steps in {fmt_duration(wall)} ({rate:.0f} steps/s); "
                 f"final eval {final.summary()}")
        return self._result("completed", EXIT_OK, started, metrics)

    @staticmethod
    def _steps_of(path: Path) -> int | None:
        match = CHECKPOINT_RE.match(path.name)
        return int(match.group(1)) if match else None

    def _learn(self, model: Any, callback: RunCallback, remaining: int, reset: bool) -> TrialResult | None:
        """``model.learn``; a :class:`TrialResult` if it did not complete (signal, NaN)."""
        started = self.started
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*rich is experimental.*")
                warnings.filterwarnings("ignore", category=UserWarning, module="tqdm")
                # The NaN guard first (no checkpoint or evaluation of NaN weights), then checkpoint and
                # evaluation, which run before the activity logger records attention.
                assert self.checkpointer is not None and self.evaluator is not None
                callbacks = CallbackList([callback, self.checkpointer, self.evaluator, CoreActivityCallback()])
                model.learn(remaining, callback=callbacks, reset_num_timesteps=reset, tb_log_name=TB_LOG_NAME,
                            progress_bar=self.show_progress_bar)
        except Exception as error:
            reason = divergence_reason(error, model)
            if reason is None:
                raise
            return self._non_finite(reason, started)
        if callback.aborted:  # a signal (it wins over a pruning request at the same time)
            return self._interrupted(model, callback, started)
        if self.stop_reason:  # options.on_evaluation stopped it (a pruned search trial)
            return self._pruned(model, callback, started)
        return None  # completed (a signal during the last update still lets it finish and save)

    def _interrupted(self, model: Any, callback: RunCallback, started: float) -> TrialResult:
        """Checkpoint what is trained (the partial rollout is dropped) and exit 128 + signal."""
        signum = int(STOP.signum or signal.SIGINT)
        model.num_timesteps = callback.safe_timesteps
        path = self.checkpoint(model)
        name = signal.Signals(signum).name
        self.say(f"{name}: checkpoint at step {model.num_timesteps:,} saved to {path}; continue with --resume")
        return self._result("interrupted", 128 + signum, started, {"num_timesteps": int(model.num_timesteps)},
                            message=f"{name} at step {model.num_timesteps:,}; --resume continues it")

    def _pruned(self, model: Any, callback: RunCallback, started: float) -> TrialResult:
        """Stopped by ``options.on_evaluation`` (a pruned search trial): checkpoint what is trained
        (the step taken after the evaluation is dropped), so ``--resume`` could still continue it,
        and report the last evaluation."""
        model.num_timesteps = callback.safe_timesteps
        self.checkpoint(model)
        message = f"{self.stop_reason} at step {model.num_timesteps:,}"
        self.say(f"stopped: {message}")
        last = self.last_eval
        metrics = {"num_timesteps": int(model.num_timesteps),
                   "success_rate": last.success_rate if last else None,
                   "mean_return": last.mean_return if last else None}
        return self._result("pruned", EXIT_OK, started, metrics, message=message)

    def _non_finite(self, reason: str, started: float) -> TrialResult:
        kept = self.last_checkpoint
        if kept is not None:
            where, again = f"the last good checkpoint is {kept}", "start again with --overwrite"
        elif self.fresh:
            where, again = "nothing was trained to keep, so the run directory was removed", "start again"
        else:
            where, again = "no checkpoint was written yet", "start again with --overwrite"
        message = f"training stopped: {reason}; {where} (lower the learning rate or max_grad_norm and {again})"
        print(f"{self.say.prefix}error: {message}", file=sys.stderr, flush=True)
        return self._result("nan", EXIT_FAILED, started, {}, message=message)

    def _write_metrics(self, model: Any, final: EvalResult, wall: float, start_steps: int) -> dict[str, Any]:
        assert self.history is not None
        metrics = {
            "env": self.trial.options.env,
            "core": self.trial.options.core,
            "seed": self.trial.options.seed,
            "num_timesteps": int(model.num_timesteps),
            "success_rate": final.success_rate,
            "mean_return": final.mean_return,
            "std_return": final.std_return,
            "mean_length": float(np.mean(final.lengths)) if final.lengths else None,
            "n_episodes": len(final.returns),
            "deterministic": self.trial.options.eval_deterministic,
            "best_timesteps": self.history.best_timesteps,
            "best_score": list(self.history.best_score) if self.history.best_score else None,
            "wall_time_s": round(wall, 2),
            "steps_per_s": round((model.num_timesteps - start_steps) / max(wall, 1e-9), 1),
        }
        write_json(self.run_dir / METRICS_FILE, metrics)
        return metrics

    def _result(self, status: str, code: int, started: float, metrics: Mapping[str, Any],
                message: str = "") -> TrialResult:
        options = self.trial.options
        return TrialResult(
            env=options.env, core=options.core, seed=options.seed, run_dir=str(self.run_dir), status=status,
            exit_code=code, num_timesteps=metrics.get("num_timesteps"), success_rate=metrics.get("success_rate"),
            mean_return=metrics.get("mean_return"), wall_time_s=round(time.time() - started, 2), message=message,
        )


def execute_trial(options: TrainOptions, keep_pending_signal: bool = False) -> TrialResult:
    """Resolve and run one trial in this process, SIGINT/SIGTERM meaning "checkpoint and stop"
    (see :class:`StopRequest`). Bad input raises :class:`ExperimentInputError`."""
    import torch

    torch.set_num_threads(options.threads)
    printer = Printer(options.label, options.quiet)
    with stop_on_signals(keep_pending=keep_pending_signal):
        trial = resolve_trial(options, say=printer)
        return Trainer(trial).run()
