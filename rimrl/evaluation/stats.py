"""Confidence intervals for one model (Wilson, bootstrap) and across seeds (rliable).

- Success rate of one model on one variant: the **Wilson score interval**. Episodes are
  Bernoulli trials; unlike the normal ("Wald") interval it stays inside [0, 1] and keeps close
  to its nominal coverage at 0 % or 100 % success and for small N, where RL evaluations often sit.
- Mean return of one model on one variant: a **percentile bootstrap** of the mean over episodes
  (``DEFAULT_BOOTSTRAP_REPS`` resamples, fixed seed, so reports repeat exactly). Returns are
  bounded and very skewed (MiniGrid: a spike at 0 for failures), where a t-interval's symmetry
  is a poor fit.
- Across seeds of one core: rliable's **IQM** and **mean** with **stratified bootstrap** CIs
  (Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice"): runs are resampled
  with replacement within each task, the scores being a ``(num_runs, num_tasks)`` matrix.
- One core against another: rliable's **probability of improvement** ``P(X > Y)`` (the
  Mann-Whitney U statistic over runs, averaged over tasks) with a stratified bootstrap CI that
  resamples each core's runs independently.
"""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_BOOTSTRAP_REPS",
    "AggregateEstimate",
    "ImprovementEstimate",
    "aggregate_scores",
    "bootstrap_mean_interval",
    "import_rliable",
    "probability_of_improvement",
    "wilson_interval",
]

#: Resamples for every bootstrap here: enough for stable 95 % percentile bounds, fast on 2 cores.
DEFAULT_BOOTSTRAP_REPS = 2000


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n`` (scipy's
    ``binomtest(...).proportion_ci(method="wilson")``); ``(nan, nan)`` for ``n == 0``."""
    from scipy.stats import binomtest

    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    _z(confidence)  # validates the level: (0, 1), where scipy also takes 0 and 1
    if n == 0:
        return math.nan, math.nan
    interval = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def bootstrap_mean_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    reps: int = DEFAULT_BOOTSTRAP_REPS,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (seeded: the same input gives the same bounds).

    ``(nan, nan)`` for no values; a single value (or all equal) gives a zero-width interval.
    """
    # Not scipy.stats.bootstrap: for these three lines it would give other bounds (another
    # resampling stream) for every results.json already written, and no less code.
    data = np.asarray(values, dtype=np.float64).ravel()
    _z(confidence)  # validates the level
    if data.size == 0:
        return math.nan, math.nan
    if np.all(data == data[0]):
        return float(data[0]), float(data[0])
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(reps, data.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def import_rliable() -> tuple[ModuleType, ModuleType]:
    """``(rliable.library, rliable.metrics)``, imported on first use (they pull in arch and pandas).

    rliable pins ``arch < 8``, which does not import under pandas 3: pyproject pins ``pandas < 3``.
    """
    return importlib.import_module("rliable.library"), importlib.import_module("rliable.metrics")


@dataclass(frozen=True)
class AggregateEstimate:
    """Across-seed estimates for one group of runs (e.g. one core on one variant)."""

    n_runs: int
    n_tasks: int
    iqm: float
    iqm_ci_low: float
    iqm_ci_high: float
    mean: float
    mean_ci_low: float
    mean_ci_high: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for CSV/JSON rows)."""
        return asdict(self)


def aggregate_scores(
    scores: Mapping[str, np.ndarray],
    reps: int = DEFAULT_BOOTSTRAP_REPS,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, AggregateEstimate]:
    """IQM and mean with stratified-bootstrap CIs for each entry of ``scores``, via rliable.

    Args:
        scores: name -> ``(num_runs, num_tasks)`` matrix (a 1-d array is one task).
        reps: bootstrap resamples.
        confidence: interval level.
        seed: seeds the bootstrap, so the same scores give the same intervals.
    """
    library, metrics = import_rliable()
    matrices = {name: _as_matrix(name, value) for name, value in scores.items()}
    if not matrices:
        return {}

    def both(matrix: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(matrix), metrics.aggregate_mean(matrix)])

    points, intervals = _interval_estimates(library, matrices, both, reps, confidence, seed)
    return {
        name: AggregateEstimate(
            n_runs=int(matrix.shape[0]),
            n_tasks=int(matrix.shape[1]),
            iqm=float(points[name][0]),
            iqm_ci_low=float(intervals[name][0, 0]),
            iqm_ci_high=float(intervals[name][1, 0]),
            mean=float(points[name][1]),
            mean_ci_low=float(intervals[name][0, 1]),
            mean_ci_high=float(intervals[name][1, 1]),
        )
        for name, matrix in matrices.items()
    }


@dataclass(frozen=True)
class ImprovementEstimate:
    """``P(X > Y)`` of one core's scores over another's, with its stratified-bootstrap interval."""

    probability: float
    ci_low: float
    ci_high: float
    n_runs_x: int
    n_runs_y: int
    n_tasks: int

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for CSV/JSON rows)."""
        return asdict(self)


def probability_of_improvement(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    reps: int = DEFAULT_BOOTSTRAP_REPS,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, ImprovementEstimate]:
    """rliable's probability of improvement ``P(X > Y)`` with a stratified-bootstrap CI per pair.

    Args:
        pairs: name -> ``(scores_x, scores_y)``, each a ``(num_runs, num_tasks)`` matrix (a 1-d
            array is one task) with the same tasks; the run counts may differ. ``P(X > Y)`` is
            ``rliable.metrics.probability_of_improvement``: per task the probability that a random
            run of X scores above a random run of Y (ties count half), averaged over tasks.
        reps: bootstrap resamples (``rliable.library.get_interval_estimates``; X's and Y's runs are
            resampled independently, within each task).
        confidence: interval level.
        seed: seeds the bootstrap, so the same scores give the same intervals.
    """
    library, metrics = import_rliable()
    matrices: dict[str, list[np.ndarray]] = {}
    for name, (x, y) in pairs.items():
        mx, my = _as_matrix(f"{name}[x]", x), _as_matrix(f"{name}[y]", y)
        if mx.shape[1] != my.shape[1]:
            raise ValueError(f"pairs[{name!r}]: X has {mx.shape[1]} tasks but Y has {my.shape[1]}")
        matrices[name] = [mx, my]
    if not matrices:
        return {}

    def poi(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.array([metrics.probability_of_improvement(x, y)])

    points, intervals = _interval_estimates(library, matrices, poi, reps, confidence, seed)
    return {
        name: ImprovementEstimate(
            probability=float(points[name][0]),
            ci_low=float(intervals[name][0, 0]),
            ci_high=float(intervals[name][1, 0]),
            n_runs_x=int(mx.shape[0]),
            n_runs_y=int(my.shape[0]),
            n_tasks=int(mx.shape[1]),
        )
        for name, (mx, my) in matrices.items()
    }


def _interval_estimates(
    library: Any, matrices: Mapping[str, Any], statistic: Any, reps: int, confidence: float, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``rliable.library.get_interval_estimates`` with a seeded bootstrap: point estimates and CIs.

    rliable's two-sample bootstrap (``StratifiedIndependentBootstrap``, used for pairs) draws its
    indices from numpy's global RNG and ignores ``random_state``: the global RNG is seeded here too,
    and restored afterwards, so the same scores always give the same intervals.
    """
    global_state = np.random.get_state()
    np.random.seed(seed)
    try:
        with warnings.catch_warnings():
            # arch (under rliable) deprecates the RandomState that rliable passes; the results are the same.
            warnings.simplefilter("ignore", FutureWarning)
            return library.get_interval_estimates(
                matrices, statistic, reps=reps, confidence_interval_size=confidence,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(global_state)


def _as_matrix(name: str, value: np.ndarray) -> np.ndarray:
    matrix = np.asarray(value, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise ValueError(f"scores[{name!r}] must be a non-empty (num_runs, num_tasks) matrix, got shape {matrix.shape}")
    return matrix
