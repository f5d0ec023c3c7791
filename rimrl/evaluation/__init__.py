"""rimrl.evaluation: rollouts on in- and out-of-distribution variants, statistics, tables, plots,
GIFs and activation maps.

>>> from rimrl.evaluation import EvaluationOptions, evaluate            # doctest: +SKIP
>>> report = evaluate(EvaluationOptions(["runs/rimrl-Pickup-Train-v0/rim/seed0"], out="eval"))  # doctest: +SKIP

See ``docs/evaluate.md`` for the files written and the statistics used.
"""

from rimrl.evaluation.atari_scores import (
    ATARI_REFERENCE_SCORES,
    ATARI_SCORES_SOURCE,
    human_normalized_score,
    reference_scores,
    relative_improvement,
)
from rimrl.evaluation.environments import EvaluationInputError, VariantEnv, resolve_variants
from rimrl.evaluation.pipeline import EvaluationOptions, check_spaces, evaluate
from rimrl.evaluation.report import EvaluationReport, write_outputs
from rimrl.evaluation.results import (
    AGGREGATE_COLUMNS,
    COMPARISON_COLUMNS,
    EPISODE_COLUMNS,
    RESULT_COLUMNS,
    AggregateRow,
    EpisodeRow,
    GameComparison,
    ResultRow,
    aggregate_rows,
    compare_games,
    summarize,
)
from rimrl.evaluation.rollout import EpisodeRecord, EpisodeTrace, episode_quotas, run_episodes, trace_episode
from rimrl.evaluation.stats import (
    ImprovementEstimate,
    aggregate_scores,
    bootstrap_mean_interval,
    probability_of_improvement,
    wilson_interval,
)

__all__ = [
    "AGGREGATE_COLUMNS",
    "ATARI_REFERENCE_SCORES",
    "ATARI_SCORES_SOURCE",
    "COMPARISON_COLUMNS",
    "EPISODE_COLUMNS",
    "RESULT_COLUMNS",
    "AggregateRow",
    "EpisodeRecord",
    "EpisodeRow",
    "EpisodeTrace",
    "EvaluationInputError",
    "EvaluationOptions",
    "EvaluationReport",
    "GameComparison",
    "ImprovementEstimate",
    "ResultRow",
    "VariantEnv",
    "aggregate_rows",
    "aggregate_scores",
    "bootstrap_mean_interval",
    "check_spaces",
    "compare_games",
    "episode_quotas",
    "evaluate",
    "human_normalized_score",
    "probability_of_improvement",
    "reference_scores",
    "relative_improvement",
    "resolve_variants",
    "run_episodes",
    "summarize",
    "trace_episode",
    "wilson_interval",
    "write_outputs",
]
