"""Unit tests of rimrl.evaluation's statistics, Atari scores, summaries and the Atari comparison."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rimrl.evaluation import (
    ATARI_REFERENCE_SCORES,
    EpisodeRecord,
    aggregate_rows,
    aggregate_scores,
    bootstrap_mean_interval,
    compare_games,
    episode_quotas,
    human_normalized_score,
    reference_scores,
    relative_improvement,
    summarize,
    wilson_interval,
)
from rimrl.evaluation.plots import bar_values, plot_comparison


def test_wilson_interval_known_values() -> None:
    low, high = wilson_interval(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [0.0, 0.0, 1.0, 0.5, 0.9, 0.0, 0.7]
    low, high = bootstrap_mean_interval(values, seed=3)
    assert low < np.mean(values) < high
    assert bootstrap_mean_interval(values, seed=3) == (low, high)
    assert bootstrap_mean_interval([2.0]) == (2.0, 2.0)


def test_episode_quotas_split_evenly() -> None:
    assert episode_quotas(10, 3) == [4, 3, 3]
    assert episode_quotas(100, 8) == [13, 13, 13, 13, 12, 12, 12, 12]
    assert sum(episode_quotas(7, 7)) == 7


def test_human_normalisation_of_known_scores() -> None:
    assert len(ATARI_REFERENCE_SCORES) == 57
    assert reference_scores("Breakout") == (1.7, 30.5)
    assert human_normalized_score("ALE/Breakout-v5", 30.5) == pytest.approx(1.0)
    assert human_normalized_score("BreakoutNoFrameskip-v4", 1.7) == pytest.approx(0.0)
    assert human_normalized_score("breakout", 16.1) == pytest.approx(0.5)
    # Pong: random -20.7, human 14.6.
    assert human_normalized_score("Pong", 21.0) == pytest.approx((21.0 + 20.7) / 35.3)
    assert human_normalized_score("UpNDown", 533.4) == pytest.approx(0.0)  # spelling-free lookup
    assert math.isnan(human_normalized_score("NotAGame", 1.0))


def test_relative_improvement_uses_max_of_human_and_baseline() -> None:
    # Breakout: random 1.7, human 30.5. Baseline below human: divide by human - random.
    assert relative_improvement("Breakout", 30.5, 1.7) == pytest.approx(100.0)
    # Baseline above human: divide by baseline - random.
    assert relative_improvement("Breakout", 101.7, 51.7) == pytest.approx(100.0 * 50 / 50)
    assert relative_improvement("Breakout", 10.0, 20.0) < 0


def _records(successes: list[bool], returns: list[float]) -> list[EpisodeRecord]:
    return [EpisodeRecord(i, i % 2, i // 2, r, 5 + i, s) for i, (s, r) in enumerate(zip(successes, returns, strict=True))]


def _row(model: str, core: str, seed: int, variant: str, successes: list[bool], env: str = "rimrl/Pickup-Train-v0"):
    records = _records(successes, [float(s) for s in successes])
    return summarize(
        records, model=model, run=model, model_path=model, core=core, seed=seed, train_env="rimrl/Pickup-Train-v0",
        env=env, variant=variant, deterministic=True, eval_seed=0, n_envs=2,
    )


def test_summary_counts_successes() -> None:
    row = _row("m", "rim", 0, "train", [True, False, True, True])
    assert (row.episodes, row.successes, row.success_rate) == (4, 3, 0.75)
    assert (row.success_ci_low, row.success_ci_high) == pytest.approx(wilson_interval(3, 4))
    assert row.mean_return == 0.75 and row.mean_length == 6.5 and row.group == "pickup"
    assert math.isnan(row.human_normalized_score)


def test_aggregates_pool_seeds_per_core_and_variant() -> None:
    rows = [
        _row("rim-0", "rim", 0, "train", [True, True]),
        _row("rim-1", "rim", 1, "train", [True, False]),
        _row("rim-0", "rim", 0, "novel", [True, False], "rimrl/Pickup-Novel-v0"),
        _row("rim-1", "rim", 1, "novel", [False, False], "rimrl/Pickup-Novel-v0"),
        _row("rim-0", "rim", 0, "more", [True, False], "rimrl/Pickup-More-v0"),
        _row("rim-1", "rim", 1, "more", [True, False], "rimrl/Pickup-More-v0"),
        _row("lstm-0", "lstm", 0, "train", [True, True]),
    ]
    by_variant = {a.variant: a for a in aggregate_rows(rows, reps=500)}
    assert set(by_variant) == {"train", "novel", "more", "ood"}  # lstm has a single seed
    assert by_variant["train"].mean == pytest.approx(0.75) and by_variant["train"].n_runs == 2
    assert by_variant["ood"].n_tasks == 2 and by_variant["ood"].mean == pytest.approx((0.5 + 0.0 + 0.5 + 0.5) / 4)


def test_aggregate_scores_constant_and_spread() -> None:
    estimates = aggregate_scores({"flat": np.full((3, 2), 0.4), "spread": np.array([[0.0], [1.0], [0.5], [0.5]])}, reps=500)
    flat = estimates["flat"]
    assert (flat.iqm, flat.mean, flat.iqm_ci_low, flat.iqm_ci_high) == pytest.approx((0.4, 0.4, 0.4, 0.4))
    spread = estimates["spread"]
    assert spread.iqm == pytest.approx(0.5) and spread.mean_ci_low < 0.5 < spread.mean_ci_high


def _atari_row(core: str, seed: int, game: str, score: float):
    records = [EpisodeRecord(0, 0, 0, score, 100, None)]
    return summarize(
        records, model=f"{core}-{game}-{seed}", run="r", model_path="m", core=core, seed=seed, train_env=game,
        env=game, variant="default", deterministic=True, eval_seed=0, n_envs=1,
    )


def test_atari_comparison_and_plot(tmp_path: Path) -> None:
    rows = [
        _atari_row("rim", 0, "ALE/Breakout-v5", 30.5),
        _atari_row("rim", 1, "ALE/Breakout-v5", 30.5),
        _atari_row("lstm", 0, "ALE/Breakout-v5", 1.7),
        _atari_row("rim", 0, "ALE/Pong-v5", -20.7),
        _atari_row("lstm", 0, "ALE/Pong-v5", 14.6),
    ]
    assert rows[0].success_rate != rows[0].success_rate  # NaN: Atari has no success notion
    assert rows[0].human_normalized_score == pytest.approx(1.0)
    comparison = compare_games(rows)
    assert [(g.game, round(g.improvement_pct, 6)) for g in comparison] == [("ALE/Breakout-v5", 100.0), ("ALE/Pong-v5", -100.0)]
    assert comparison[0].n_challenger == 2 and comparison[0].n_baseline == 1
    aggregates = {(a.core, a.variant): a for a in aggregate_rows(rows, reps=200)}
    assert set(aggregates) == {("rim", "ALE/Breakout-v5")}  # only rim/Breakout has two seeds
    path = plot_comparison(comparison, tmp_path / "compare.png")
    with Image.open(path) as image:
        image.verify()
    metric, groups, cores, bars = bar_values(rows, list(aggregates.values()))
    assert metric == "human_normalized_score" and cores == ["lstm", "rim"]
    assert bars[(("atari", "ALE/Breakout-v5"), "rim")][3] == 2


def test_variants_resolve_from_the_suite_aliases_and_ids() -> None:
    from rimrl.evaluation import EvaluationInputError, resolve_variants

    assert [v.variant for v in resolve_variants("rimrl/Pickup-Train-v0")] == ["train", "more", "novel", "more+novel"]
    chosen = resolve_variants("rimrl/Pickup-Train-v0", ["more_novel", "rimrl/Pickup-Novel-v0", "novel"])
    assert [(v.variant, v.env_id) for v in chosen] == [("more+novel", "rimrl/Pickup-MoreNovel-v0"), ("novel", "rimrl/Pickup-Novel-v0")]
    assert [(v.variant, v.env_id) for v in resolve_variants("ALE/Breakout-v5")] == [("default", "ALE/Breakout-v5")]
    with pytest.raises(EvaluationInputError, match="unknown variant 'huge'"):
        resolve_variants("rimrl/Pickup-Train-v0", ["huge"])
    with pytest.raises(EvaluationInputError, match="unknown env"):
        resolve_variants("NoSuchEnv-v0")


def test_labels_are_short_and_unique(tmp_path: Path) -> None:
    from rimrl.evaluation.sources import ModelSource, label_sources

    def source(env: str, core: str, seed: int | None) -> ModelSource:
        return ModelSource(path=tmp_path / "model.zip", run_dir=None, env_id=env, core=core, seed=seed)

    same_env = [source("rimrl/Pickup-Train-v0", "rim", 0), source("rimrl/Pickup-Train-v0", "rim", 0), source("rimrl/Pickup-Train-v0", "lstm", None)]
    label_sources(same_env)
    assert [s.label for s in same_env] == ["rim-seed0", "rim-seed0#2", "model"]
    games = [source("ALE/Breakout-v5", "rim", 0), source("ALE/Pong-v5", "rim", 0)]
    label_sources(games)
    assert [s.label for s in games] == ["Breakout-v5/rim-seed0", "Pong-v5/rim-seed0"]


def test_probability_of_improvement_known_values_and_seeded_intervals() -> None:
    from rimrl.evaluation import probability_of_improvement

    pairs = {
        "better": (np.array([0.9, 0.8, 0.95]), np.array([0.1, 0.2, 0.3])),
        "equal": (np.array([0.5, 0.5]), np.array([0.5, 0.5])),
        # x > y in 1 of 12 pairs, ties (0.2, 0.2) and (0.3, 0.3) count half: (1 + 2 * 0.5) / 12
        "ties": (np.array([0.1, 0.2, 0.3]), np.array([0.2, 0.3, 0.4, 0.5])),
    }
    estimates = probability_of_improvement(pairs, reps=200, seed=0)
    assert estimates["better"].probability == 1.0 and (estimates["better"].ci_low, estimates["better"].ci_high) == (1.0, 1.0)
    assert estimates["equal"].probability == 0.5
    ties = estimates["ties"]
    assert ties.probability == pytest.approx(2 / 12)
    assert 0.0 <= ties.ci_low <= ties.probability <= ties.ci_high <= 1.0
    assert (ties.n_runs_x, ties.n_runs_y, ties.n_tasks) == (3, 4, 1)
    assert probability_of_improvement(pairs, reps=200, seed=0) == estimates  # seeded
    with pytest.raises(ValueError, match="tasks"):
        probability_of_improvement({"bad": (np.zeros((2, 2)), np.zeros((2, 3)))})
