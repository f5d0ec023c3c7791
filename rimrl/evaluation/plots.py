"""Plots: per-variant bars per core (the in- vs out-of-distribution gap at a glance) and the
per-game Atari comparison (relative improvement, sorted, as in the RIMs paper's Atari figure).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (evaluation runs headless)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rimrl.evaluation.results import AggregateRow, GameComparison, ResultRow  # noqa: E402

__all__ = ["CORE_COLORS", "CORE_ORDER", "bar_values", "plot_comparison", "plot_results"]

#: Bars appear in this order (others after, alphabetically); colours stay fixed per core.
CORE_ORDER = ("lstm", "gru", "rim", "srm")
CORE_COLORS = {"lstm": "#7f7f7f", "gru": "#bcbd22", "rim": "#1f77b4", "srm": "#d62728"}


def _metric(rows: Sequence[ResultRow]) -> str:
    if all(math.isfinite(r.success_rate) for r in rows):
        return "success_rate"
    if all(math.isfinite(r.human_normalized_score) for r in rows):
        return "human_normalized_score"
    return "mean_return"


def _value_and_ci(row: ResultRow, metric: str) -> tuple[float, float, float]:
    if metric == "success_rate":
        return row.success_rate, row.success_ci_low, row.success_ci_high
    if metric == "human_normalized_score":
        return row.human_normalized_score, row.hns_ci_low, row.hns_ci_high
    return row.mean_return, row.return_ci_low, row.return_ci_high


def bar_values(
    rows: Sequence[ResultRow], aggregates: Sequence[AggregateRow] = ()
) -> tuple[str, list[tuple[str, str]], list[str], dict[tuple[tuple[str, str], str], tuple[float, float, float, int]]]:
    """What :func:`plot_results` draws: ``(metric, groups, cores, bars)``.

    ``groups`` are ``(group, variant-or-env)`` in order of appearance; ``bars[(group, core)]`` is
    ``(value, ci_low, ci_high, n_models)``: the rliable IQM and its stratified-bootstrap CI when the
    core has an aggregate there (several seeds), else the single model's value and CI (Wilson for
    success rate, bootstrap for return), else (no aggregate for a metric) the mean over models.
    """
    metric = _metric(rows)
    groups: list[tuple[str, str]] = []
    by_bar: dict[tuple[tuple[str, str], str], list[ResultRow]] = {}
    for row in rows:
        group = (row.group, row.env if row.variant == "default" else row.variant)
        if group not in groups:
            groups.append(group)
        by_bar.setdefault((group, row.core), []).append(row)
    pooled = {
        ((a.group, a.variant), a.core): a for a in aggregates if a.metric == metric and a.variant not in ("ood", "all-games")
    }
    bars: dict[tuple[tuple[str, str], str], tuple[float, float, float, int]] = {}
    for key, members in by_bar.items():
        if key in pooled:
            a = pooled[key]
            bars[key] = (a.iqm, a.iqm_ci_low, a.iqm_ci_high, len(members))
        elif len(members) == 1:
            bars[key] = (*_value_and_ci(members[0], metric), 1)
        else:
            values = [_value_and_ci(m, metric)[0] for m in members]
            bars[key] = (float(np.mean(values)), math.nan, math.nan, len(members))
    present = {core for _, core in by_bar}
    cores = [c for c in CORE_ORDER if c in present] + sorted(present - set(CORE_ORDER))
    return metric, groups, cores, bars


def plot_results(rows: Sequence[ResultRow], aggregates: Sequence[AggregateRow], path: str | Path) -> Path:
    """Grouped bars: one group per variant (``train`` first, then the OOD variants), one bar per core,
    95 % CI whiskers. A dashed line separates in-distribution from out-of-distribution variants."""
    if not rows:
        raise ValueError("plot_results needs at least one result row")
    metric, groups, cores, bars = bar_values(rows, aggregates)
    width = 0.8 / len(cores)
    x = np.arange(len(groups))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) * max(1, len(cores)) / 2 + 2), 4.2))
    palette = plt.get_cmap("tab10")
    for j, core in enumerate(cores):
        values, lows, highs, labels = [], [], [], []
        for group in groups:
            value, low, high, n = bars.get((group, core), (math.nan, math.nan, math.nan, 0))
            values.append(value)
            lows.append(value - low if math.isfinite(low) else 0.0)
            highs.append(high - value if math.isfinite(high) else 0.0)
            labels.append(n)
        n_models = max(labels) if labels else 0
        color = CORE_COLORS.get(core, palette(j % 10))
        legend = f"{core} ({'IQM of ' + str(n_models) + ' seeds' if n_models > 1 else '1 model'})"
        positions = x + (j - (len(cores) - 1) / 2) * width
        ax.bar(positions, values, width, yerr=[lows, highs], capsize=3, color=color, label=legend)
        for position, value, above in zip(positions, values, highs, strict=True):
            if math.isfinite(value):  # label above the whisker, where it cannot collide with it
                text = f"{value:.0%}" if metric == "success_rate" else f"{value:.2g}"
                ax.text(position, value + above, text, ha="center", va="bottom", fontsize=7)
    multiple_groups = len({g for g, _ in groups}) > 1
    ax.set_xticks(x, [f"{g}\n{v}" if multiple_groups else v for g, v in groups])
    train_positions = [i for i, (_, v) in enumerate(groups) if v == "train"]
    if train_positions and len(groups) > 1:
        boundary = max(train_positions) + 0.5
        ax.axvline(boundary, color="0.5", ls="--", lw=1)
        ax.text(boundary, 1.0, " out-of-distribution →", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8, color="0.4")
    labels = {"success_rate": "success rate", "human_normalized_score": "human-normalised score", "mean_return": "mean return"}
    ax.set_ylabel(labels[metric])
    if metric == "success_rate":
        ax.set_ylim(0, 1.05)
    ax.set_title(f"{labels[metric]} per variant (95% CI; several seeds: IQM, stratified bootstrap)", fontsize=9, pad=14)
    ax.legend(fontsize=8, loc="best")
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path, dpi: int = 110) -> Path:
    """Lay out ``fig``, write it as ``path`` (folders created) and close it; returns the path.

    Saved with ``bbox_inches="tight"``: the image grows to hold every title, label and legend
    instead of cutting what ``tight_layout`` could not fit.
    """
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.15)
    plt.close(fig)
    return path


def plot_comparison(comparison: Sequence[GameComparison], path: str | Path) -> Path:
    """Bars of the relative score improvement per game, sorted, positive blue and negative grey."""
    if not comparison:
        raise ValueError("plot_comparison needs at least one game")
    ordered = sorted(comparison, key=lambda g: g.improvement_pct if math.isfinite(g.improvement_pct) else -math.inf, reverse=True)
    values = [g.improvement_pct if math.isfinite(g.improvement_pct) else 0.0 for g in ordered]
    colors = ["#1f77b4" if v >= 0 else "#7f7f7f" for v in values]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(ordered) + 2), 4.2))
    ax.bar(range(len(ordered)), values, color=colors)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(ordered)), [g.game.removeprefix("ALE/").removesuffix("-v5") for g in ordered], rotation=70, ha="right", fontsize=8)
    first = ordered[0]
    ax.set_ylabel(f"relative improvement of {first.challenger} over {first.baseline} (%)")
    ax.set_title("100 (score - baseline) / (max(human, baseline) - random), full games", fontsize=9)
    return save_figure(fig, path)
