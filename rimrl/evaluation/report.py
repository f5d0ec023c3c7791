"""Writing results: ``results.csv/json/md``, ``episodes.csv``, ``aggregates.csv``,
``atari_compare.csv``, and the rich tables printed on the terminal.

CSV cells: NaN and None are written empty; booleans as ``True``/``False``. JSON: NaN becomes
``null`` (strict JSON).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from rimrl.evaluation.atari_scores import ATARI_SCORES_SOURCE
from rimrl.evaluation.results import (
    AGGREGATE_COLUMNS,
    COMPARISON_COLUMNS,
    EPISODE_COLUMNS,
    RESULT_COLUMNS,
    AggregateRow,
    EpisodeRow,
    GameComparison,
    ResultRow,
    as_dict,
)

__all__ = [
    "EvaluationReport",
    "aggregates_table",
    "comparison_table",
    "results_table",
    "write_csv",
    "write_outputs",
]


@dataclass
class EvaluationReport:
    """Everything one evaluation produced (``files``: every file written, in order)."""

    rows: list[ResultRow] = field(default_factory=list)
    episodes: list[EpisodeRow] = field(default_factory=list)
    aggregates: list[AggregateRow] = field(default_factory=list)
    comparison: list[GameComparison] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Set when ``--out`` could not be written after the rollouts: where the results went instead.
    write_error: str | None = None


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(rows: Sequence[Any], columns: Sequence[str], path: str | Path) -> Path:
    """Write dataclass rows as CSV with the given column order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in as_dict(row).items()})
    return path


def _json_rows(rows: Sequence[Any]) -> list[dict[str, Any]]:
    return [{k: _json_value(v) for k, v in as_dict(row).items()} for row in rows]


def write_json(report: EvaluationReport, path: str | Path) -> Path:
    """``results.json``: settings, the per model x variant rows, the aggregates and the comparison."""
    path = Path(path)
    data = {
        "settings": report.settings,
        "columns": list(RESULT_COLUMNS),
        "results": _json_rows(report.rows),
        "aggregates": _json_rows(report.aggregates),
        "atari_comparison": None if report.comparison is None else _json_rows(report.comparison),
    }
    if any(row.group == "atari" for row in report.rows):
        data["atari_reference_scores"] = ATARI_SCORES_SOURCE
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def _pct(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{100 * value:.1f}%"


def _num(value: float, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _interval(low: float, high: float, fmt: Any) -> str:
    return "" if not (math.isfinite(low) and math.isfinite(high)) else f"[{fmt(low)}, {fmt(high)}]"


def _result_cells(row: ResultRow) -> list[str]:
    success = "–" if row.successes is None else f"{_pct(row.success_rate)} {_interval(row.success_ci_low, row.success_ci_high, _pct)}"
    cells = [
        row.model,
        row.core,
        "" if row.seed is None else str(row.seed),
        row.variant if row.variant != "default" else row.env,
        str(row.episodes),
        success,
        f"{_num(row.mean_return)} {_interval(row.return_ci_low, row.return_ci_high, _num)}",
        _num(row.mean_length, 1),
    ]
    return cells


_RESULT_HEADERS = ["model", "core", "seed", "variant", "episodes", "success [95% CI]", "return [95% CI]", "length"]


def results_table(rows: Sequence[ResultRow]) -> Table:
    """Rich table: one line per model x variant."""
    show_hns = any(math.isfinite(row.human_normalized_score) for row in rows)
    table = Table(title="Evaluation (95% CIs: Wilson for success, bootstrap for return)")
    for header in _RESULT_HEADERS + (["human-norm."] if show_hns else []):
        table.add_column(header, justify="left" if header in ("model", "core", "variant") else "right")
    for row in rows:
        table.add_row(*_result_cells(row), *([_num(row.human_normalized_score, 3)] if show_hns else []))
    return table


def _aggregate_cells(row: AggregateRow) -> list[str]:
    fmt = _pct if row.metric == "success_rate" else (lambda v: _num(v, 3))
    return [
        row.group,
        row.core,
        row.variant,
        row.metric,
        str(row.n_runs),
        f"{fmt(row.iqm)} {_interval(row.iqm_ci_low, row.iqm_ci_high, fmt)}",
        f"{fmt(row.mean)} {_interval(row.mean_ci_low, row.mean_ci_high, fmt)}",
    ]


_AGGREGATE_HEADERS = ["group", "core", "variant", "metric", "runs", "IQM [95% CI]", "mean [95% CI]"]


def aggregates_table(rows: Sequence[AggregateRow]) -> Table:
    """Rich table of the across-seed aggregates (rliable, stratified bootstrap)."""
    table = Table(title="Across seeds (rliable: IQM and mean, stratified bootstrap 95% CIs)")
    for header in _AGGREGATE_HEADERS:
        table.add_column(header, justify="right" if header in ("runs",) else "left")
    for row in rows:
        table.add_row(*_aggregate_cells(row))
    return table


def _comparison_cells(row: GameComparison) -> list[str]:
    return [
        row.game,
        f"{_num(row.challenger_score, 1)} (n={row.n_challenger})",
        f"{_num(row.baseline_score, 1)} (n={row.n_baseline})",
        _num(row.challenger_hns, 3),
        _num(row.baseline_hns, 3),
        "–" if not math.isfinite(row.improvement_pct) else f"{row.improvement_pct:+.1f}%",
    ]


def comparison_table(rows: Sequence[GameComparison]) -> Table:
    """Rich table of the per-game Atari comparison."""
    challenger = rows[0].challenger if rows else "challenger"
    baseline = rows[0].baseline if rows else "baseline"
    table = Table(title=f"Atari: {challenger} vs {baseline} (raw full-game scores, mean over seeds)")
    for header in ("game", f"{challenger} score", f"{baseline} score", f"{challenger} HNS", f"{baseline} HNS", "relative improvement"):
        table.add_column(header, justify="left" if header == "game" else "right")
    for row in rows:
        table.add_row(*_comparison_cells(row))
    return table


def _markdown_table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    escape = [[cell.replace("|", "\\|") for cell in line] for line in lines]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in escape]
    return "\n".join(out)


def write_markdown(report: EvaluationReport, path: str | Path) -> Path:
    """``results.md``: the terminal tables as Markdown, with the settings used."""
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items() if k != "models")
    parts = [
        "# Evaluation results",
        "",
        f"Settings: {settings}.",
        "",
        "Success rate: Wilson 95% interval. Mean return: percentile bootstrap 95% interval.",
        "",
        _markdown_table(_RESULT_HEADERS + ["human-norm."], [_result_cells(r) + [_num(r.human_normalized_score, 3)] for r in report.rows]),
    ]
    if report.aggregates:
        parts += [
            "",
            "## Across seeds",
            "",
            "rliable: interquartile mean and mean, stratified bootstrap 95% intervals.",
            "",
            _markdown_table(_AGGREGATE_HEADERS, [_aggregate_cells(r) for r in report.aggregates]),
        ]
    if report.comparison:
        first = report.comparison[0]
        parts += [
            "",
            f"## Atari: {first.challenger} vs {first.baseline}",
            "",
            "Relative improvement: 100 (challenger - baseline) / (max(human, baseline) - random).",
            f"Reference scores: {ATARI_SCORES_SOURCE}.",
            "",
            _markdown_table(
                ["game", f"{first.challenger} score", f"{first.baseline} score", f"{first.challenger} HNS", f"{first.baseline} HNS", "relative improvement"],
                [_comparison_cells(r) for r in report.comparison],
            ),
        ]
    if report.notes:
        parts += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    path = Path(path)
    path.write_text("\n".join(parts) + "\n")
    return path


def write_outputs(report: EvaluationReport, out: str | Path) -> list[Path]:
    """Write every table file of ``report`` into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        write_csv(report.rows, RESULT_COLUMNS, out / "results.csv"),
        write_json(report, out / "results.json"),
        write_markdown(report, out / "results.md"),
        write_csv(report.episodes, EPISODE_COLUMNS, out / "episodes.csv"),
    ]
    if report.aggregates:
        files.append(write_csv(report.aggregates, AGGREGATE_COLUMNS, out / "aggregates.csv"))
    if report.comparison is not None:
        files.append(write_csv(report.comparison, COMPARISON_COLUMNS, out / "atari_compare.csv"))
    return files
