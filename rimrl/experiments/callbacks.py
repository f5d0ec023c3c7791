"""The callbacks of a training run, on SB3's callback classes.

- :class:`RunCallback`: NaN guard, graceful stop on SIGINT/SIGTERM, progress lines;
- :class:`RunCheckpointCallback` (SB3's ``CheckpointCallback``): ``checkpoints/model_<N>_steps.zip``
  through :class:`~rimrl.agents.training.CheckpointManager` (atomic, with the weights-only pair,
  pruned to ``keep``, never NaN weights);
- :class:`RecurrentEvalCallback` (SB3's ``EvalCallback``): recurrent-aware periodic evaluation
  with success rates, ``evaluations.npz`` (with ``successes``), an atomic ``best_model.zip``,
  the ``--eval-variants`` and TensorBoard points at the evaluation's step.

All of them act between rollouts (``_on_rollout_start``), where the parameters have been updated on
every collected step, so a checkpoint or an evaluation at ``num_timesteps`` is exact; their
thresholds lie on a fixed grid (multiples of the frequency), stable across resumes. SB3's own
callbacks count ``_on_step`` calls instead (``n_envs`` steps each), which would checkpoint or
evaluate mid-rollout, with weights that do not match the step in the file name.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from rimrl.agents.training import (
    STOP,
    CheckpointManager,
    EvalHistory,
    EvalResult,
    evaluate_recurrent,
    params_finite,
    save_model_atomic,
)
from rimrl.experiments.options import LOG_EVERY_S

if TYPE_CHECKING:
    from rimrl.experiments.run import Trainer

__all__ = [
    "Printer",
    "RecurrentEvalCallback",
    "RunCallback",
    "RunCheckpointCallback",
    "fmt_duration",
    "next_multiple",
]


def next_multiple(value: int, every: int) -> int:
    """The first multiple of ``every`` above ``value`` (never, i.e. ``sys.maxsize``, if ``every <= 0``)."""
    return (value // every + 1) * every if every > 0 else sys.maxsize


class Printer:
    """Log lines (to stdout, flushed), prefixed with the trial label; silent when quiet."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.prefix = f"[{label}] " if label else ""
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}{message}", flush=True)

    def warn(self, message: str) -> None:
        """``warning: ...`` on stderr, even when quiet (something the user must know)."""
        print(f"{self.prefix}warning: {message}", file=sys.stderr, flush=True)


def fmt_duration(seconds: float) -> str:
    """``"1h05m"``, ``"3m07s"`` or ``"42s"``."""
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _write_scalars_at(logger: Any, scalars: Mapping[str, float], step: int) -> None:
    """Write ``scalars`` through the SB3 ``logger``'s writers (TensorBoard, ...) at ``step`` now.

    An evaluation runs between rollouts; recorded the usual way, its values would wait for SB3's
    next dump, one rollout later (``evaluations.npz`` at 1024, TensorBoard at 2048). SB3's
    ``EvalCallback`` calls ``logger.dump(step)`` instead, but that would also flush the last
    update's pending ``train/*`` values at this step rather than at the next rollout's, so the
    ``train/*`` curves would change their step convention at every evaluation. Writing only these
    keys leaves the pending values to SB3's own dump.
    """
    from stable_baselines3.common.logger import KVWriter

    if not scalars:
        return
    values = dict(scalars)
    excluded: dict[str, tuple[str, ...] | None] = {key: None for key in values}
    for writer in logger.output_formats:
        if isinstance(writer, KVWriter):
            writer.write(values, excluded, step)


def logger_of(model: Any) -> Any:
    """The model's SB3 logger, or ``None`` when ``learn`` never ran in this process (a resume at -n)."""
    return getattr(model, "_logger", None)


class RunCallback(BaseCallback):
    """NaN guard, graceful stop and log lines for one run.

    ``_on_rollout_start`` checks that the last update left finite weights and loss (else
    :class:`~rimrl.agents.training.NonFiniteError` ends ``learn``) and records the step up to
    which the parameters are trained; ``_on_step`` only stops collection once a signal arrived.
    Put it first in the ``CallbackList``, so no checkpoint or evaluation sees NaN weights.

    :param trainer: the owning :class:`~rimrl.experiments.run.Trainer` (options, printer, NaN check).
    """

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(verbose=0)
        self.trainer = trainer
        self.aborted = False  # collection stopped early (the partial rollout is not trained on)
        self.safe_timesteps = 0  # num_timesteps up to which the parameters are trained
        self._last_line = 0.0
        self._t0 = 0.0
        self._steps0 = 0

    def _on_training_start(self) -> None:
        steps = int(self.model.num_timesteps)
        self.safe_timesteps = steps
        self._t0, self._steps0 = time.time(), steps
        self._last_line = self._t0
        from rimrl.experiments.tracking import log_hparams

        log_hparams(self.logger, self.trainer.trial, steps)

    def _on_step(self) -> bool:
        if STOP.signum is not None:
            self.aborted = True
            return False
        return True

    def _on_rollout_start(self) -> None:
        model = self.model
        self.trainer.check_finite(model, where=f"after the update at step {model.num_timesteps}")
        steps = int(model.num_timesteps)
        self.safe_timesteps = steps
        if not self.trainer.show_progress_bar and time.time() - self._last_line >= LOG_EVERY_S:
            self._print_progress(steps)

    def _on_rollout_end(self) -> None:
        # Our envs report ``info["success"]`` (kept in the Monitor's episode record), not the
        # ``is_success`` that SB3 would average into rollout/success_rate by itself.
        buffer = self.model.ep_info_buffer or []
        successes = [float(ep["success"]) for ep in buffer if "success" in ep]
        if successes:
            self.logger.record("rollout/success_rate", float(np.mean(successes)))

    def _print_progress(self, steps: int) -> None:
        now = time.time()
        self._last_line = now
        total = self.trainer.trial.options.n_timesteps
        rate = (steps - self._steps0) / max(now - self._t0, 1e-9)
        buffer = list(self.model.ep_info_buffer or [])
        parts = [f"step {steps:,}/{total:,} ({100 * steps / total:.0f}%)", f"{rate:.0f} steps/s"]
        if rate > 0 and steps < total:
            parts.append(f"eta {fmt_duration((total - steps) / rate)}")
        if buffer:
            parts.append(f"ep_return {np.mean([ep['r'] for ep in buffer]):.3g}")
            successes = [float(ep["success"]) for ep in buffer if "success" in ep]
            if successes:
                parts.append(f"success {np.mean(successes):.2f}")
        self.trainer.say(" | ".join(parts))


class RunCheckpointCallback(CheckpointCallback):
    """SB3's ``CheckpointCallback`` with rimrl's storage: ``<run>/checkpoints/model_<N>_steps.zip``
    (SB3's naming with ``name_prefix="model"``) written by a
    :class:`~rimrl.agents.training.CheckpointManager`: atomically, with the weights-only pair,
    refusing NaN weights, pruned to the newest ``keep``.

    :param manager: where and how checkpoints are written.
    :param save_freq: env steps between checkpoints (0: only when :meth:`save` is called).
    :param last: the checkpoint this session starts from, if any (:attr:`last_checkpoint` until
        the first save).
    """

    def __init__(self, manager: CheckpointManager, save_freq: int, last: Path | None = None) -> None:
        super().__init__(save_freq=save_freq, save_path=str(manager.folder), name_prefix="model", verbose=0)
        self.manager = manager
        self.last_checkpoint: Path | None = last
        self._next_save = 0

    def _init_callback(self) -> None:
        pass  # the manager made the folder (and cleared its stray temp files)

    def _on_training_start(self) -> None:
        self._next_save = next_multiple(int(self.model.num_timesteps), self.save_freq)

    def _on_step(self) -> bool:
        return True  # SB3 saves every save_freq calls; here, between rollouts (see the module doc)

    def _on_rollout_start(self) -> None:
        steps = int(self.model.num_timesteps)
        if steps >= self._next_save:
            self.save(self.model)
            self._next_save = next_multiple(steps, self.save_freq)

    def save(self, model: Any) -> Path:
        """Checkpoint ``model`` at its ``num_timesteps`` now (periodic, final or on a signal)."""
        self.last_checkpoint = self.manager.save(model)
        return self.last_checkpoint


class RecurrentEvalCallback(EvalCallback):
    """SB3's ``EvalCallback`` for recurrent policies, with rimrl's evaluation and files.

    Episodes are played by :func:`rimrl.agents.training.evaluate_recurrent`, i.e. the
    :func:`rimrl.evaluation.rollout.run_episodes` that evaluate.py uses, not SB3's
    ``evaluate_policy`` (which also carries recurrent states, but is a second loop): the episodes
    that choose ``best_model.zip`` are played exactly as evaluate.py plays them, with a fixed
    evaluation seed (torch's RNG restored after, so training's stream is untouched) and
    ``info["success"]`` recorded per episode. The best model is chosen by success rate
    first (where the env has one), then mean return; ``evaluations.npz`` keeps SB3's layout plus
    ``successes`` and the best so far (:class:`~rimrl.agents.training.EvalHistory`, atomic,
    reloaded on resume); ``best_model.zip`` is written atomically (with its weights pair) and
    never from NaN weights. Each evaluation's ``eval/*`` TensorBoard points are written at its
    step. SB3's ``callback_on_new_best`` / ``callback_after_eval`` are called after periodic
    evaluations as in SB3 (returning False stops training at the next env step), and
    ``last_mean_reward`` / ``best_mean_reward`` / ``evaluations_*`` are kept up to date.
    ``on_evaluation`` (``TrainOptions.on_evaluation``, ``--optimize``'s pruner) sees every
    train-variant evaluation; a message it returns after a periodic one stops training the same
    way, and is kept as :attr:`stop_reason` (the run ends as ``pruned``).

    :param eval_env: the train-variant evaluation env.
    :param history: where the evaluations are recorded (``<run>/evaluations.npz``).
    :param best_model_path: ``<run>/best_model.zip``.
    :param n_eval_episodes: episodes per evaluation.
    :param eval_freq: env steps between evaluations (0: only when :meth:`evaluate` is called).
    :param deterministic: greedy (True) or sampled actions.
    :param seed: the evaluation seed (the same episodes at every evaluation).
    :param variants: ``--eval-variants``: name -> (its env, its history); recorded, never used to
        choose the best model.
    :param say: prints a log line.
    :param on_evaluation: called as ``on_evaluation(steps, result)`` after each train-variant
        evaluation; a non-empty string returned asks training to stop (see above).
    """

    def __init__(
        self,
        eval_env: VecEnv,
        history: EvalHistory,
        best_model_path: Path,
        n_eval_episodes: int,
        eval_freq: int,
        deterministic: bool,
        seed: int,
        variants: Mapping[str, tuple[VecEnv, EvalHistory]] | None = None,
        say: Callable[[str], None] | None = None,
        callback_on_new_best: BaseCallback | None = None,
        callback_after_eval: BaseCallback | None = None,
        on_evaluation: Callable[[int, EvalResult], str | None] | None = None,
    ) -> None:
        super().__init__(
            eval_env, callback_on_new_best=callback_on_new_best, callback_after_eval=callback_after_eval,
            n_eval_episodes=n_eval_episodes, eval_freq=eval_freq, log_path=None,
            best_model_save_path=str(Path(best_model_path).parent), deterministic=deterministic, verbose=0,
            warn=False,
        )
        self.history = history
        self.best_model_path = Path(best_model_path)
        self.seed = seed
        self.variants = dict(variants or {})
        self.say = say or (lambda message: None)
        self.on_evaluation = on_evaluation
        self.stop_reason: str | None = None  # on_evaluation's message, once it asked to stop
        self.last_result: EvalResult | None = None  # the latest train-variant evaluation
        # SB3's record of the evaluations, shared with the history (reloaded on resume).
        self.evaluations_timesteps = history.timesteps
        self.evaluations_results = history.results
        self.evaluations_length = history.lengths  # type: ignore[assignment]
        self.evaluations_successes = history.successes  # type: ignore[assignment]
        if history.best_score is not None:  # a resumed run: its best so far (mean return last)
            self.best_mean_reward = float(history.best_score[-1])
        self._next_eval = 0
        self._continue = True

    def _init_callback(self) -> None:
        # Not SB3's: it warns when the training and evaluation envs differ in type, which they do
        # by design here (only the training env is wrapped in EpisodeCSV), and makes folders that
        # exist already. Its child callback is initialised as SB3 does.
        if self.callback_on_new_best is not None:
            self.callback_on_new_best.init_callback(self.model)

    def _on_training_start(self) -> None:
        self._next_eval = next_multiple(int(self.model.num_timesteps), self.eval_freq)

    def _on_step(self) -> bool:
        return self._continue  # evaluations run between rollouts; a child callback may stop training

    def _on_rollout_start(self) -> None:
        steps = int(self.model.num_timesteps)
        if steps >= self._next_eval:
            best_before = self.history.best_timesteps
            self.evaluate(self.model, steps)
            self._next_eval = next_multiple(steps, self.eval_freq)
            if self.history.best_timesteps != best_before and self.callback_on_new_best is not None:
                self._continue = self.callback_on_new_best.on_step() and self._continue
            if self.callback is not None:  # SB3's callback_after_eval
                self._continue = self._on_event() and self._continue
            if self.stop_reason:  # on_evaluation asked to stop (a pruned search trial)
                self._continue = False

    def evaluate(self, model: Any, steps: int) -> EvalResult:
        """Evaluate ``model`` (trained to ``steps``) on the train variant and each variant; save
        ``best_model.zip`` when it is the best so far. Usable outside ``learn`` (the final one)."""
        result = evaluate_recurrent(model, self.eval_env, self.n_eval_episodes, deterministic=self.deterministic,
                                    seed=self.seed)
        is_best = self.history.add(steps, result)
        self.last_result = result
        if self.on_evaluation is not None:
            self.stop_reason = self.on_evaluation(steps, result) or None
        if is_best and params_finite(model):
            save_model_atomic(model, self.best_model_path)
        self.last_mean_reward = result.mean_return
        if is_best:
            self.best_mean_reward = result.mean_return
        scalars = {"eval/mean_reward": result.mean_return, "eval/mean_ep_length": float(np.mean(result.lengths))}
        if result.success_rate is not None:
            scalars["eval/success_rate"] = result.success_rate
        self.say(f"eval @ {steps:,}: {result.summary()}{' [new best]' if is_best else ''}")
        for variant, (env, history) in self.variants.items():
            # Recorded only: the best model is chosen on the train variant alone.
            other = evaluate_recurrent(model, env, self.n_eval_episodes, deterministic=self.deterministic,
                                       seed=self.seed)
            history.add(steps, other)
            scalars[f"eval_{variant}/mean_reward"] = other.mean_return
            if other.success_rate is not None:
                scalars[f"eval_{variant}/success_rate"] = other.success_rate
            self.say(f"eval @ {steps:,} [{variant}]: {other.summary()}")
        logger = logger_of(model)
        if logger is not None:
            _write_scalars_at(logger, scalars, steps)
        return result
