"""Training machinery that outlives a process: atomic files, checkpoints, evaluation history,
per-episode monitor CSVs, a NaN guard and signal-driven stops.

``rimrl.experiments.run`` orchestrates a run with these pieces; they hold no command-line logic, so a
script or notebook can use them directly.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.monitor import ResultsWriter
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_RE = re.compile(r"^model_(\d+)_steps\.zip$")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _process_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: restore at once
    os.umask(mask)
    return mask


#: Read once at import (os.umask cannot be read without a brief, thread-unsafe change).
_UMASK = _process_umask()


def atomic_replace(write: Callable[[Path], None], path: str | Path) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file in the same folder (its name ends
    in ``path``'s suffix), which is fsynced and ``os.replace``\\ d onto ``path``. A crash leaves
    either the old file or the new one, never a torn file (only a stray ``.tmp-*`` file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: give the file the mode open() would
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


class NonFiniteError(RuntimeError):
    """The loss or the parameters became NaN/inf; the run stops and keeps its last good checkpoint."""


def divergence_reason(error: BaseException, model: Any) -> str | None:
    """Why ``error`` (raised inside ``model.learn``) means training diverged, or ``None`` if it is
    not a divergence (a bug, which must keep its traceback).

    Divergence shows up in three places: the weights themselves (NaN/inf); the policy's outputs
    while the weights are still finite but huge (torch.distributions rejects NaN logits with a
    ``ValueError`` during the rollout or the update); the optimizer (a learning rate beyond float32
    makes Adam's step overflow with a ``RuntimeError``)."""
    if isinstance(error, NonFiniteError):
        return str(error)
    if not params_finite(model):
        return "the parameters became non-finite during an update"
    text = " ".join(str(error).split())
    if isinstance(error, ValueError) and "Expected parameter" in text and "invalid values" in text:
        return "the policy's outputs became non-finite (NaN logits; the weights diverged)"
    if isinstance(error, RuntimeError) and "overflow" in text:
        return f"the optimizer step overflowed ({text[:120]})"
    return None


# ==============================================================================================
# Options
# ==============================================================================================


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``[(num_timesteps, path), ...]`` of ``<run>/checkpoints/model_<N>_steps.zip``, newest first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)



class EpisodeCSV(VecEnvWrapper):
    """Append each finished episode (``infos[i]["episode"]``: raw return ``r``, length ``l``,
    ``success`` when the env reports it) to one SB3 monitor CSV, which ``load_results`` reads.

    One file per training session (``monitor/session<i>.monitor.csv``): a resumed run appends a
    new file instead of truncating the old one, and the header's ``t_start`` keeps times absolute.
    """

    def __init__(self, venv: VecEnv, filename: str, env_id: str, with_success: bool) -> None:
        super().__init__(venv)
        self.t_start = time.time()
        extra = ("success",) if with_success else ()
        self.writer = ResultsWriter(filename, header={"t_start": self.t_start, "env_id": env_id}, extra_keys=extra)
        self.with_success = with_success

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        for done, info in zip(dones, infos, strict=True):
            episode = info.get("episode") if done else None
            if episode is not None:
                row = {"r": round(float(episode["r"]), 6), "l": int(episode["l"]),
                       "t": round(time.time() - self.t_start, 6)}
                if self.with_success:
                    row["success"] = bool(episode.get("success", info.get("success", False)))
                self.writer.write_row(row)
        return obs, rewards, dones, infos

    def close(self) -> None:
        self.writer.close()
        super().close()




@dataclass
class EvalResult:
    """Per-episode outcomes of one evaluation."""

    returns: list[float]
    lengths: list[int]
    successes: list[bool] | None  # None when the env reports no success (Atari)

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    @property
    def std_return(self) -> float:
        return float(np.std(self.returns)) if self.returns else float("nan")

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.successes)) if self.successes else None

    def score(self) -> tuple[float, ...]:
        """Ordering for "best model": success rate first (when known), then mean return."""
        return (self.success_rate, self.mean_return) if self.success_rate is not None else (self.mean_return,)

    def summary(self) -> str:
        parts = []
        if self.success_rate is not None:
            parts.append(f"success {self.success_rate:.2f}")
        parts.append(f"return {self.mean_return:.3g} ± {self.std_return:.2g}")
        parts.append(f"length {np.mean(self.lengths):.0f}")
        return ", ".join(parts) + f" ({len(self.returns)} episodes)"


def evaluate_recurrent(
    model: Any, env: VecEnv, n_episodes: int, deterministic: bool = False, seed: int | None = None
) -> EvalResult:
    """Play ``n_episodes`` with :func:`rimrl.evaluation.rollout.run_episodes` (recurrent state and
    episode starts carried per env, fair per-env quotas, whole games for Atari, raw scores).

    With ``seed`` the env and torch are reseeded first, so every evaluation of a run sees the same
    episodes; torch's RNG state is restored afterwards, so training's random stream is untouched.
    """
    import torch

    from rimrl.evaluation.rollout import run_episodes

    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        records = run_episodes(model, env, n_episodes, deterministic=deterministic, seed=seed)
    finally:
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
    successes = [record.success for record in records]
    return EvalResult(
        returns=[float(record.episode_return) for record in records],
        lengths=[int(record.length) for record in records],
        successes=None if any(s is None for s in successes) else [bool(s) for s in successes],
    )


# ==============================================================================================
# Checkpoints
# ==============================================================================================


def params_finite(model: Any) -> bool:
    """Whether every policy parameter is finite."""
    import torch

    with torch.no_grad():
        return all(bool(torch.isfinite(p).all()) for p in model.policy.parameters())


def save_model_atomic(model: Any, path: Path, weights: bool = True) -> Path:
    """``model.save`` into a temp file beside ``path``, then ``os.replace`` (never a torn zip).

    With ``weights`` (default) the pickle-free pair ``X.weights.pt`` + ``X.spec.json`` follows,
    written the same way (:func:`rimrl.agents.safe.save_weights`). A model the spec cannot
    describe gets no pair (a stale one is removed) and a warning.
    """
    atomic_replace(lambda tmp: model.save(tmp), path)
    if weights:
        from rimrl.agents.safe import SpecError, remove_weights, save_weights

        try:
            save_weights(model, path)
        except SpecError as error:
            remove_weights(path)
            warnings.warn(f"no weights-only copy of {Path(path).name}: {error}", stacklevel=2)
    return Path(path)


class CheckpointManager:
    """``<run>/checkpoints/model_<N>_steps.zip`` (+ its weights-only pair): atomic, never NaN, the
    newest ``keep`` kept."""

    def __init__(self, run_dir: Path, keep: int = 5) -> None:
        self.folder = Path(run_dir) / CHECKPOINT_DIR
        self.keep = keep
        self.folder.mkdir(parents=True, exist_ok=True)
        for stray in self.folder.glob(".tmp-*"):  # left by a SIGKILL mid-write
            stray.unlink(missing_ok=True)

    def path_for(self, num_timesteps: int) -> Path:
        return self.folder / f"model_{num_timesteps}_steps.zip"

    def latest(self) -> tuple[int, Path] | None:
        found = list_checkpoints(self.folder.parent)
        return found[0] if found else None

    def save(self, model: Any) -> Path:
        """Checkpoint ``model`` at its ``num_timesteps``; refuses (``NonFiniteError``) NaN weights."""
        if not params_finite(model):
            raise NonFiniteError("refusing to checkpoint non-finite parameters")
        path = save_model_atomic(model, self.path_for(int(model.num_timesteps)))
        self._prune()
        return path

    def _prune(self) -> None:
        if self.keep <= 0:
            return
        from rimrl.agents.safe import remove_weights

        for _, old in list_checkpoints(self.folder.parent)[self.keep:]:
            old.unlink(missing_ok=True)
            remove_weights(old)


class EvalHistory:
    """``evaluations.npz`` in SB3's EvalCallback layout (``timesteps``, ``results``, ``ep_lengths``,
    ``successes`` when known), reloaded on resume so "best" spans sessions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.timesteps: list[int] = []
        self.results: list[list[float]] = []
        self.lengths: list[list[float]] = []
        self.successes: list[list[float]] = []
        self.best_score: tuple[float, ...] | None = None
        self.best_timesteps: int | None = None
        if path.is_file():
            self._load()

    def _load(self) -> None:
        with np.load(self.path) as data:
            self.timesteps = [int(t) for t in data["timesteps"]]
            self.results = [[float(x) for x in row if not math.isnan(x)] for row in data["results"]]
            self.lengths = [[float(x) for x in row if not math.isnan(x)] for row in data["ep_lengths"]]
            if "successes" in data:
                self.successes = [[float(x) for x in row if not math.isnan(x)] for row in data["successes"]]
            if "best_timesteps" in data:
                self.best_timesteps = int(data["best_timesteps"])
                self.best_score = tuple(float(x) for x in data["best_score"])

    def add(self, timesteps: int, result: EvalResult) -> bool:
        """Record an evaluation; True if it is the best so far."""
        self.timesteps.append(int(timesteps))
        self.results.append(list(result.returns))
        self.lengths.append([float(x) for x in result.lengths])
        if result.successes is not None:
            self.successes.append([float(x) for x in result.successes])
        is_best = self.best_score is None or result.score() > self.best_score
        if is_best:
            self.best_score, self.best_timesteps = result.score(), int(timesteps)
        self._save()
        return is_best

    @staticmethod
    def _pad(rows: list[list[float]]) -> np.ndarray:
        width = max((len(r) for r in rows), default=0)
        return np.array([r + [math.nan] * (width - len(r)) for r in rows], dtype=float).reshape(len(rows), width)

    def _save(self) -> None:
        arrays = {
            "timesteps": np.array(self.timesteps, dtype=np.int64),
            "results": self._pad(self.results),
            "ep_lengths": self._pad(self.lengths),
            "best_timesteps": np.array(self.best_timesteps, dtype=np.int64),
            "best_score": np.array(self.best_score, dtype=float),
        }
        if self.successes and len(self.successes) == len(self.timesteps):
            arrays["successes"] = self._pad(self.successes)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)

        atomic_replace(write, self.path)


class StopRequest:
    """SIGINT/SIGTERM as a request to stop, not a crash.

    While :func:`stop_on_signals` is active the handler only records the signal; the training
    callback polls it at every env step, so the run checkpoints what is trained and exits with
    128 + signal. A signal during setup stops the run as soon as training starts; one during the
    final save and evaluation lets them finish. A second signal kills the process at once.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, _frame: Any = None) -> None:
        if self.signum is not None:  # impatient: the default action now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum


#: The process-wide stop request (one training run per process at a time).
STOP = StopRequest()


@contextlib.contextmanager
def stop_on_signals(keep_pending: bool = False) -> Iterator[StopRequest]:
    """Route SIGINT/SIGTERM to :data:`STOP` (main thread only; elsewhere, e.g. a thread, no-op).

    :param keep_pending: keep a signal recorded before this call (a sweep worker's), else clear it.
    """
    if not keep_pending:
        STOP.signum = None
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, OSError):
                previous[signum] = signal.signal(signum, STOP.handler)
    try:
        yield STOP
    finally:
        for signum, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(signum, handler)


