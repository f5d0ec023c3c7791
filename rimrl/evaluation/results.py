"""Result records: one row per model x variant, the per-episode records behind it, across-seed
aggregates per core, and the per-game Atari comparison of two cores.

Column meanings are listed in :data:`RESULT_COLUMNS`, :data:`EPISODE_COLUMNS`,
:data:`AGGREGATE_COLUMNS` and :data:`COMPARISON_COLUMNS` (and in ``docs/evaluate.md``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from rimrl.envs import is_atari, suite_of
from rimrl.evaluation.atari_scores import game_key, human_normalized_score, relative_improvement
from rimrl.evaluation.rollout import EpisodeRecord
from rimrl.evaluation.stats import (
    DEFAULT_BOOTSTRAP_REPS,
    aggregate_scores,
    bootstrap_mean_interval,
    wilson_interval,
)

__all__ = [
    "AGGREGATE_COLUMNS",
    "COMPARISON_COLUMNS",
    "EPISODE_COLUMNS",
    "RESULT_COLUMNS",
    "AggregateRow",
    "EpisodeRow",
    "GameComparison",
    "ResultRow",
    "aggregate_rows",
    "compare_games",
    "group_of",
    "summarize",
]

#: Variant name of the across-variants aggregate over every out-of-distribution variant.
OOD = "ood"
#: Variant name of the across-games Atari aggregate.
ALL_GAMES = "all-games"


@dataclass(frozen=True)
class ResultRow:
    """One model on one variant (a row of ``results.csv``)."""

    model: str  # short unique label, e.g. "rim-seed0"
    run: str  # run directory (or the zip when there is none)
    model_path: str  # the .zip evaluated
    core: str
    seed: int | None  # training seed (None: unknown)
    train_env: str  # env the model was trained on
    group: str  # what seeds are pooled over: the suite ("pickup"), or the env id, or "atari"
    env: str  # env id evaluated on
    variant: str  # "train", "more", "novel", "more+novel", or "default" outside a suite
    episodes: int
    successes: int | None  # None where the env has no success notion (Atari)
    success_rate: float  # successes / episodes (NaN for Atari)
    success_ci_low: float  # Wilson 95 % interval
    success_ci_high: float
    mean_return: float  # undiscounted; Atari: raw game score over all lives
    return_ci_low: float  # percentile bootstrap 95 % interval of the mean
    return_ci_high: float
    std_return: float
    mean_length: float
    human_normalized_score: float  # Atari only: of mean_return (NaN elsewhere)
    hns_ci_low: float
    hns_ci_high: float
    deterministic: bool
    eval_seed: int
    n_envs: int


@dataclass(frozen=True)
class EpisodeRow:
    """One episode (a row of ``episodes.csv``): enough to hand-count every success rate."""

    model: str
    core: str
    seed: int | None
    env: str
    variant: str
    episode: int
    env_index: int
    episode_return: float
    length: int
    success: bool | None


@dataclass(frozen=True)
class AggregateRow:
    """Across-seed estimate for one core on one variant (a row of ``aggregates.csv``)."""

    group: str
    core: str
    variant: str  # a variant, "ood" (all OOD variants as tasks), a game, or "all-games"
    metric: str  # "success_rate" (MiniGrid) or "human_normalized_score" (Atari)
    n_runs: int
    n_tasks: int
    iqm: float
    iqm_ci_low: float  # stratified bootstrap 95 % interval (rliable)
    iqm_ci_high: float
    mean: float
    mean_ci_low: float
    mean_ci_high: float
    models: str  # ";"-joined model labels pooled


@dataclass(frozen=True)
class GameComparison:
    """One Atari game, challenger core vs baseline core (a row of ``atari_compare.csv``)."""

    game: str
    challenger: str
    baseline: str
    challenger_score: float  # mean raw score over the challenger's models (seeds)
    baseline_score: float
    challenger_hns: float
    baseline_hns: float
    improvement_pct: float  # 100 (c - b) / (max(human, b) - random)
    n_challenger: int
    n_baseline: int


def _columns(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


RESULT_COLUMNS = _columns(ResultRow)
EPISODE_COLUMNS = _columns(EpisodeRow)
AGGREGATE_COLUMNS = _columns(AggregateRow)
COMPARISON_COLUMNS = _columns(GameComparison)


def as_dict(row: ResultRow | EpisodeRow | AggregateRow | GameComparison) -> dict:
    """A row as a plain dict in column order."""
    return asdict(row)


def group_of(train_env: str) -> str:
    """What seeds are pooled over: the distractor suite, ``"atari"`` (games are tasks), or the env id."""
    located = suite_of(train_env)
    if located:
        return located[0]
    return "atari" if is_atari(train_env) else train_env


def summarize(
    records: Sequence[EpisodeRecord],
    *,
    model: str,
    run: str,
    model_path: str,
    core: str,
    seed: int | None,
    train_env: str,
    env: str,
    variant: str,
    deterministic: bool,
    eval_seed: int,
    n_envs: int,
    reps: int = DEFAULT_BOOTSTRAP_REPS,
) -> ResultRow:
    """Statistics of one model's episodes on one variant (see :mod:`rimrl.evaluation.stats`)."""
    if not records:
        raise ValueError("summarize needs at least one episode")
    returns = np.array([r.episode_return for r in records], dtype=np.float64)
    outcomes = [r.success for r in records]
    if any(o is None for o in outcomes):
        successes, rate, low, high = None, math.nan, math.nan, math.nan
    else:
        successes = int(sum(bool(o) for o in outcomes))
        rate = successes / len(records)
        low, high = wilson_interval(successes, len(records))
    ret_low, ret_high = bootstrap_mean_interval(returns, reps=reps, seed=eval_seed)
    mean_return = float(returns.mean())
    hns = hns_low = hns_high = math.nan
    if is_atari(env) and game_key(env) is not None:
        # Human normalisation is an increasing affine map, so it maps the return CI onto the HNS CI.
        hns, hns_low, hns_high = (human_normalized_score(env, v) for v in (mean_return, ret_low, ret_high))
    return ResultRow(
        model=model,
        run=run,
        model_path=model_path,
        core=core,
        seed=seed,
        train_env=train_env,
        group=group_of(train_env),
        env=env,
        variant=variant,
        episodes=len(records),
        successes=successes,
        success_rate=rate,
        success_ci_low=low,
        success_ci_high=high,
        mean_return=mean_return,
        return_ci_low=ret_low,
        return_ci_high=ret_high,
        std_return=float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
        mean_length=float(np.mean([r.length for r in records])),
        human_normalized_score=hns,
        hns_ci_low=hns_low,
        hns_ci_high=hns_high,
        deterministic=deterministic,
        eval_seed=eval_seed,
        n_envs=n_envs,
    )


def episode_rows(records: Sequence[EpisodeRecord], row: ResultRow) -> list[EpisodeRow]:
    """The per-episode rows of ``records`` that ``row`` summarises."""
    return [
        EpisodeRow(
            model=row.model,
            core=row.core,
            seed=row.seed,
            env=row.env,
            variant=row.variant,
            episode=r.episode,
            env_index=r.env_index,
            episode_return=r.episode_return,
            length=r.length,
            success=r.success,
        )
        for r in records
    ]


def _metric_of(group: str) -> str:
    """The score pooled across seeds: success rate (MiniGrid) or human-normalised score (Atari)."""
    return "human_normalized_score" if group == "atari" else "success_rate"


def _value_of(row: ResultRow) -> float:
    return row.human_normalized_score if row.group == "atari" else row.success_rate


def aggregate_rows(
    rows: Sequence[ResultRow], min_runs: int = 2, reps: int = DEFAULT_BOOTSTRAP_REPS, seed: int = 0
) -> list[AggregateRow]:
    """Pool the models of each core (its seeds) with rliable: IQM and mean, stratified-bootstrap CIs.

    MiniGrid: per group (suite) and core, one estimate per variant (the seeds' success rates, one
    task) and, when at least two out-of-distribution variants were evaluated, one for ``"ood"``
    (every non-``train`` variant a task). Atari: per core, one estimate per game and, with at least
    two games, one for ``"all-games"`` (games as tasks) of the human-normalised scores; when games
    have different numbers of seeds, the first ``min(count)`` models of each game (by seed) enter it.
    Only cores with at least ``min_runs`` models are aggregated.
    """
    cells: dict[tuple[str, str], dict[str, list[ResultRow]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        cells[(row.group, row.core)][row.env if row.group == "atari" else row.variant].append(row)

    requests: dict[str, np.ndarray] = {}
    described: dict[str, tuple[str, str, str, str, list[str]]] = {}

    def add(group: str, core: str, task: str, matrix: np.ndarray, models: list[str]) -> None:
        if matrix.shape[0] >= min_runs and np.isfinite(matrix).all():
            key = f"{group}|{core}|{task}"
            requests[key] = matrix
            described[key] = (group, core, task, _metric_of(group), models)

    for (group, core), tasks in cells.items():
        for task, entries in tasks.items():
            add(group, core, task, np.array([_value_of(r) for r in entries])[:, None], [r.model for r in entries])
        pooled = list(tasks) if group == "atari" else [t for t in tasks if t != "train"]
        if len(pooled) >= 2:
            n_runs = min(len(tasks[t]) for t in pooled)
            chosen = [sorted(tasks[t], key=_seed_order)[:n_runs] for t in pooled]
            matrix = np.array([[_value_of(r) for r in column] for column in chosen], dtype=np.float64).T
            models = sorted({r.model for column in chosen for r in column})
            add(group, core, ALL_GAMES if group == "atari" else OOD, matrix, models)

    estimates = aggregate_scores(requests, reps=reps, seed=seed)
    out = []
    for key, estimate in estimates.items():
        group, core, variant, metric, models = described[key]
        out.append(
            AggregateRow(group=group, core=core, variant=variant, metric=metric, models=";".join(models), **estimate.as_dict())
        )
    return out


def _seed_order(row: ResultRow) -> tuple[bool, int, str]:
    return (row.seed is None, row.seed if row.seed is not None else 0, row.model)


def compare_games(rows: Sequence[ResultRow], challenger: str = "rim", baseline: str = "lstm") -> list[GameComparison]:
    """Per Atari game, ``challenger`` vs ``baseline``: mean raw scores over seeds, HNS and relative improvement.

    Games where either core has no model are left out. Sorted by improvement, largest first.
    """
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.group == "atari" and row.core in (challenger, baseline):
            scores[row.env][row.core].append(row.mean_return)
    out = []
    for game, by_core in scores.items():
        if not by_core.get(challenger) or not by_core.get(baseline):
            continue
        c, b = float(np.mean(by_core[challenger])), float(np.mean(by_core[baseline]))
        out.append(
            GameComparison(
                game=game,
                challenger=challenger,
                baseline=baseline,
                challenger_score=c,
                baseline_score=b,
                challenger_hns=human_normalized_score(game, c),
                baseline_hns=human_normalized_score(game, b),
                improvement_pct=relative_improvement(game, c, b),
                n_challenger=len(by_core[challenger]),
                n_baseline=len(by_core[baseline]),
            )
        )
    return sorted(out, key=lambda g: (-g.improvement_pct if math.isfinite(g.improvement_pct) else math.inf, g.game))
