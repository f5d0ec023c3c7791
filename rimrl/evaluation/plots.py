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
from matplotlib.lines import Line2D  # noqa: E402

from rimrl.evaluation.results import AggregateRow, GameComparison, ResultRow  # noqa: E402

__all__ = ["CORE_COLORS", "CORE_ORDER", "bar_values", "model_values", "plot_comparison", "plot_results", "save_figure"]

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


#: How a bar's whisker was computed, as the legend says it (bars mix these when a core has one seed).
_WHISKER_KINDS = {
    "seeds": ("95% CI across seeds (IQM, stratified bootstrap)", dict(color="k", lw=1.4, ls="-")),
    "model": ("95% CI within one model, over its episodes", dict(color="0.35", lw=1.2, ls=(0, (2, 1.5)))),
}


def _whisker_kind(n_models: int, low: float, high: float) -> str | None:
    """``"seeds"``, ``"model"`` or None (several models but no aggregate: no interval drawn)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return "seeds" if n_models > 1 else "model"


def model_values(rows: Sequence[ResultRow], metric: str) -> dict[tuple[tuple[str, str], str], list[float]]:
    """Every model's own value per bar of :func:`bar_values` (the dots drawn on the bars)."""
    values: dict[tuple[tuple[str, str], str], list[float]] = {}
    for row in rows:
        group = (row.group, row.env if row.variant == "default" else row.variant)
        values.setdefault((group, row.core), []).append(_value_and_ci(row, metric)[0])
    return values


def plot_results(rows: Sequence[ResultRow], aggregates: Sequence[AggregateRow], path: str | Path) -> Path:
    """Grouped bars: one group per variant (``train`` first, then the OOD variants), one bar per core.

    Made so that it cannot be misread: every bar has its core's name on the x axis and its value
    above it (a 0 % bar is still named), each model's own value is a dot on its bar, and the
    whiskers say in the legend whether they are a CI across seeds or a CI within one model (solid
    and dashed). A dashed vertical line separates in- from out-of-distribution variants.
    """
    if not rows:
        raise ValueError("plot_results needs at least one result row")
    metric, groups, cores, bars = bar_values(rows, aggregates)
    points = model_values(rows, metric)
    width = 0.8 / len(cores)
    x = np.arange(len(groups))
    # The legend sits right of the axes (never over a bar): the figure is widened for it.
    fig, ax = plt.subplots(figsize=(max(7.5, 0.6 * len(groups) * len(cores) + 5.0), 4.6))
    palette = plt.get_cmap("tab10")
    kinds_used: set[str] = set()
    tick_positions: list[float] = []
    tick_labels: list[str] = []
    for j, core in enumerate(cores):
        color = CORE_COLORS.get(core, palette(j % 10))
        counts = sorted({bars[(group, core)][3] for group in groups if (group, core) in bars})
        models = "/".join(map(str, counts))
        legend = f"{core} ({models} model{'s' if counts != [1] else ''}{', IQM' if counts[-1] > 1 else ''})"
        positions = x + (j - (len(cores) - 1) / 2) * width
        for position, group in zip(positions, groups, strict=True):
            if (group, core) not in bars:
                continue
            value, low, high, n = bars[(group, core)]
            ax.bar(position, value if math.isfinite(value) else 0.0, width, color=color, label=legend, edgecolor="0.2", lw=0.5)
            legend = "_nolegend_"  # one legend entry per core
            tick_positions.append(position)
            tick_labels.append(core)
            kind = _whisker_kind(n, low, high)
            if kind is not None:
                kinds_used.add(kind)
                style = _WHISKER_KINDS[kind][1]
                whisker = ax.errorbar(position, value, yerr=[[value - low], [high - value]], fmt="none", capsize=3,
                                      ecolor=style["color"], elinewidth=style["lw"])
                for bar_line in whisker.lines[2]:  # the line style of the whisker itself (errorbar's ls is the data line's)
                    bar_line.set_linestyle(style["ls"])
            own = points.get((group, core), [])
            if own:  # each model's own value, spread across the bar so that equal values stay countable
                spread = np.linspace(-width * 0.25, width * 0.25, len(own)) if len(own) > 1 else np.zeros(1)
                ax.scatter(position + spread, own, s=12, color="k", zorder=4, edgecolors="w", linewidths=0.5)
            if math.isfinite(value):  # label above the whisker (or the highest dot), where nothing collides
                top = max([value, high if math.isfinite(high) else value, *[v for v in own if math.isfinite(v)]])
                text = f"{value:.0%}" if metric == "success_rate" else f"{value:.3g}"
                ax.text(position, top, text, ha="center", va="bottom", fontsize=7)
            else:
                ax.text(position, 0, "n/a", ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(tick_positions, tick_labels, fontsize=7, rotation=90 if len(cores) > 3 else 0)
    ax.tick_params(axis="x", length=0)
    multiple_groups = len({g for g, _ in groups}) > 1
    variants_axis = ax.secondary_xaxis("bottom")
    variants_axis.set_xticks(x, [f"{g}\n{v}" if multiple_groups else v for g, v in groups], fontsize=9)
    variants_axis.tick_params(length=0, pad=24 if len(cores) <= 3 else 34)
    variants_axis.spines["bottom"].set_visible(False)
    train_positions = [i for i, (_, v) in enumerate(groups) if v == "train"]
    if train_positions and len(groups) > 1:
        boundary = max(train_positions) + 0.5
        ax.axvline(boundary, color="0.5", ls="--", lw=1)
        ax.text(boundary, 1.0, " out-of-distribution →", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8, color="0.4")
    labels = {"success_rate": "success rate", "human_normalized_score": "human-normalised score", "mean_return": "mean return"}
    ax.set_ylabel(labels[metric])
    if metric == "success_rate":
        ax.set_ylim(-0.03, 1.12)  # below 0: a model at 0 % is a whole dot, not half of one
    ax.set_title(f"{labels[metric]} per variant and core: bar = IQM over seeds (one model: its value), "
                 f"dots = each model", fontsize=9, pad=16)
    handles, names = ax.get_legend_handles_labels()
    for kind in ("seeds", "model"):
        if kind in kinds_used:
            handles.append(Line2D([], [], marker="_", ms=8, **_WHISKER_KINDS[kind][1]))
            names.append(_WHISKER_KINDS[kind][0])
    handles.append(Line2D([], [], ls="", marker="o", color="k", ms=4))
    names.append("one model (seed)")
    ax.legend(handles, names, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
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
    for i, game in enumerate(ordered):  # the number on every bar: a 0 % or missing bar is still read right
        finite = math.isfinite(game.improvement_pct)
        text = f"{game.improvement_pct:+.0f}%" if finite else "n/a"
        ax.text(i, values[i], text, ha="center", va="bottom" if values[i] >= 0 else "top", fontsize=6.5,
                color="k" if finite else "0.4", rotation=90 if len(ordered) > 12 else 0)
    ax.set_xticks(range(len(ordered)), [g.game.removeprefix("ALE/").removesuffix("-v5") for g in ordered], rotation=70, ha="right", fontsize=8)
    first = ordered[0]
    ax.set_ylabel(f"relative improvement of {first.challenger} over {first.baseline} (%)")
    ax.set_title(f"100 (score - baseline) / (max(human, baseline) - random), full games;\nmean score of "
                 f"{first.challenger} and {first.baseline} over their models (no interval)", fontsize=9)
    return save_figure(fig, path)
