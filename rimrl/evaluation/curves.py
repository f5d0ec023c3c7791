"""Learning curves from run directories: success (or return) against env steps, per core and
variant, the mean over seeds with a 95 % bootstrap CI across seeds. No model is loaded.

Two sources, both written by ``train.py`` (see ``docs/train.md``, "Run directory"):

- **Periodic evaluations** (:func:`read_run_evaluations`, :func:`evaluation_curves`):
  ``evaluations.npz`` on the training variant and ``evaluations_<variant>.npz`` on each
  ``--eval-variants`` variant, SB3 EvalCallback layout (``timesteps``, ``results``, ``ep_lengths``
  and ``successes`` when the env reports success; rows padded with NaN). A run's value at a step is
  the mean over that evaluation's episodes.
- **Training episodes** (:func:`training_success`, :func:`training_curves`): the success of the
  episodes in ``monitor/session<i>.monitor.csv``, binned by env steps.

Across seeds, at each step: the **mean** of the runs' values and the 95 % **percentile bootstrap**
of that mean over runs (:func:`rimrl.evaluation.stats.bootstrap_mean_interval`). With one task per
step this is rliable's stratified bootstrap of the mean, computed vectorised (rliable's own loop
would take minutes for a 30-point x 4-variant x 4-core figure). A single seed has no interval.

Runs whose evaluation steps differ (another ``--eval-freq``, a shorter or resumed run) are
**aligned on their common grid**: a core's curve has only the steps that every one of its seeds
evaluated, so each point averages the same seeds (``n_seeds`` is constant along a curve) and
nothing is interpolated. The steps left out are counted in :attr:`Curve.dropped_steps`.

:func:`plot_curves` draws any list of :class:`CurvePanel` with rliable's
``plot_utils.plot_sample_efficiency_curve``; ``evaluate.py --curves`` and ``benchmarks/study.py``
both use it.
"""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (evaluation runs headless)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from rimrl.agents.presets import read_yaml_mapping  # noqa: E402
from rimrl.evaluation.environments import EvaluationInputError  # noqa: E402
from rimrl.evaluation.plots import CORE_COLORS, CORE_ORDER, save_figure  # noqa: E402
from rimrl.evaluation.stats import DEFAULT_BOOTSTRAP_REPS, bootstrap_mean_interval  # noqa: E402

__all__ = [
    "CURVE_COLUMNS",
    "EVALUATIONS_FILE",
    "Curve",
    "CurvePanel",
    "EvaluationSeries",
    "RunEvaluations",
    "CurvesReport",
    "aggregate_curve",
    "band_caption",
    "curve_edges",
    "curve_panels",
    "evaluation_curves",
    "learning_curves",
    "plot_curves",
    "read_run_evaluations",
    "training_curves",
    "training_success",
    "variant_evaluations_file",
    "write_curves_csv",
]

# The run-directory layout of docs/train.md, read here without importing the training CLI.
EVALUATIONS_FILE = "evaluations.npz"
CONFIG_FILE = "config.yml"
MONITOR_DIR = "monitor"
TRAIN_VARIANT = "train"

#: Columns of ``curves.csv``.
CURVE_COLUMNS = ("core", "variant", "step", "n_seeds", "metric", "mean", "ci_low", "ci_high")

METRIC_LABELS = {"success_rate": "success rate", "mean_return": "mean return"}


def variant_evaluations_file(variant: str) -> str:
    """``evaluations_<variant>.npz``: the periodic evaluations on another variant (``--eval-variants``)."""
    return f"evaluations_{variant}.npz"


# ==============================================================================================
# One run
# ==============================================================================================


@dataclass(frozen=True)
class EvaluationSeries:
    """One run's periodic evaluations on one variant: per evaluation, the mean over its episodes."""

    steps: np.ndarray
    mean_return: np.ndarray
    success_rate: np.ndarray | None  # None when the env reports no success (Atari)

    def values(self, metric: str) -> np.ndarray:
        """``success_rate`` or ``mean_return`` per step."""
        values = self.success_rate if metric == "success_rate" else self.mean_return
        if values is None:
            raise ValueError("this run's evaluations record no success")
        return values


@dataclass(frozen=True)
class RunEvaluations:
    """The periodic evaluations of one run directory, per variant (the training variant first)."""

    run_dir: Path
    env: str
    core: str
    seed: int | None
    series: dict[str, EvaluationSeries]


def _row_means(matrix: np.ndarray) -> np.ndarray:
    """Mean of each row, ignoring the NaN padding (NaN for an all-NaN row)."""
    matrix = np.asarray(matrix, dtype=np.float64).reshape(len(matrix), -1)
    counts = np.isfinite(matrix).sum(axis=1)
    sums = np.where(np.isfinite(matrix), matrix, 0.0).sum(axis=1)
    return np.divide(sums, counts, out=np.full(len(matrix), np.nan), where=counts > 0)


def _read_series(path: Path) -> EvaluationSeries:
    try:
        with np.load(path) as data:
            steps = np.asarray(data["timesteps"], dtype=np.int64).ravel()
            returns = _row_means(data["results"])
            success = _row_means(data["successes"]) if "successes" in data else None
    except (OSError, ValueError, KeyError) as error:
        raise EvaluationInputError(f"{path}: not a train.py evaluations file ({type(error).__name__}: {error})") from None
    if len(returns) != len(steps) or (success is not None and len(success) != len(steps)):
        raise EvaluationInputError(f"{path}: {len(steps)} timesteps but {len(returns)} result rows")
    return EvaluationSeries(steps, returns, success)


def _variant_order(env: str, variants: Sequence[str]) -> list[str]:
    """The training variant, then the suite's order, then any others alphabetically."""
    from rimrl.envs import DISTRACTOR_SUITES, suite_of

    found = suite_of(env)
    order = list(DISTRACTOR_SUITES[found[0]]) if found else []
    known = [v for v in order if v in variants and v != TRAIN_VARIANT]
    return [TRAIN_VARIANT] * (TRAIN_VARIANT in variants) + known + sorted(set(variants) - {TRAIN_VARIANT, *known})


def read_run_evaluations(run_dir: str | Path) -> RunEvaluations:
    """Read a run directory's ``config.yml`` (env, core, seed) and its evaluation files.

    The training variant's series is keyed ``"train"`` (whatever the suite calls it), the others by
    their ``--eval-variants`` name. :class:`EvaluationInputError` (one line) for a path that is not a
    run directory or holds no ``evaluations.npz``.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not run_dir.is_dir() or not config_path.is_file():
        raise EvaluationInputError(f"--curves needs run directories written by train.py (with {CONFIG_FILE}): {str(run_dir)!r}")
    config = read_yaml_mapping(config_path, what="run config", error=EvaluationInputError)
    main = run_dir / EVALUATIONS_FILE
    if not main.is_file():
        raise EvaluationInputError(f"{str(run_dir)!r} has no {EVALUATIONS_FILE}: train it with periodic evaluation "
                                   f"(train.py --eval-freq N) to draw learning curves")
    series = {TRAIN_VARIANT: _read_series(main)}
    prefix, suffix = variant_evaluations_file("|").split("|")
    for path in sorted(run_dir.glob(variant_evaluations_file("*"))):
        series[path.name[len(prefix) : -len(suffix)]] = _read_series(path)
    env = str(config.get("env") or "?")
    seed = config.get("seed")
    return RunEvaluations(
        run_dir=run_dir,
        env=env,
        core=str(config.get("core") or "?"),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        series={v: series[v] for v in _variant_order(env, list(series))},
    )


# ==============================================================================================
# Across seeds
# ==============================================================================================


@dataclass
class Curve:
    """One core's curve on one variant: the mean over seeds and its CI at each step.

    ``per_seed`` maps a run's label (``"seed0"``, or its directory when seeds repeat) to its values
    on ``steps``; ``dropped_steps`` counts the steps some seeds evaluated but not all.
    """

    core: str
    variant: str
    metric: str
    steps: np.ndarray
    mean: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    per_seed: dict[str, np.ndarray] = field(default_factory=dict)
    env: str = ""
    dropped_steps: int = 0

    @property
    def n_seeds(self) -> int:
        """Runs averaged at every step."""
        return len(self.per_seed)

    def as_dict(self) -> dict[str, object]:
        """Plain lists (for JSON); non-finite numbers become None."""
        def plain(values: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]

        return {"core": self.core, "variant": self.variant, "env": self.env, "metric": self.metric,
                "steps": [int(s) for s in self.steps], "n_seeds": self.n_seeds, "mean": plain(self.mean),
                "ci_low": plain(self.ci_low), "ci_high": plain(self.ci_high),
                "per_seed": {k: plain(v) for k, v in self.per_seed.items()}, "dropped_steps": self.dropped_steps}


def aggregate_curve(
    matrix: np.ndarray, reps: int = DEFAULT_BOOTSTRAP_REPS, confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean, ci_low, ci_high)`` per column of a ``(runs, steps)`` matrix.

    NaN entries (a bin without episodes) are left out of their column. The CI is the percentile
    bootstrap of the mean over runs, seeded by the column index so a figure repeats exactly; a
    column with fewer than two finite values has no CI (NaN).
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    columns = matrix.shape[1] if matrix.ndim == 2 else 0
    mean, low, high = np.full(columns, np.nan), np.full(columns, np.nan), np.full(columns, np.nan)
    for k in range(columns):
        values = matrix[:, k][np.isfinite(matrix[:, k])]
        if values.size:
            mean[k] = values.mean()
        if values.size >= 2:
            low[k], high[k] = bootstrap_mean_interval(values, confidence=confidence, reps=reps, seed=k)
    return mean, low, high


def _run_labels(runs: Sequence[RunEvaluations]) -> list[str]:
    labels = [f"seed{r.seed}" if r.seed is not None else r.run_dir.name for r in runs]
    if len(set(labels)) < len(labels):  # the same seed twice (two sweeps): name them by directory
        labels = [str(r.run_dir) for r in runs]
    return labels


def _core_order(cores: Sequence[str]) -> list[str]:
    present = set(cores)
    return [c for c in CORE_ORDER if c in present] + sorted(present - set(CORE_ORDER))


def evaluation_curves(
    runs: Sequence[RunEvaluations], reps: int = DEFAULT_BOOTSTRAP_REPS, confidence: float = 0.95
) -> list[Curve]:
    """Per env, variant and core: the periodic evaluations' curve across seeds.

    The metric of an (env, variant) is the success rate when every run there records success, else
    the mean return. A core's seeds are aligned on the steps all of them evaluated (module docstring).
    Curves come grouped by env and variant (training variant first), cores in ``CORE_ORDER``.
    """
    curves: list[Curve] = []
    for env in dict.fromkeys(r.env for r in runs):
        at_env = [r for r in runs if r.env == env]
        variants = _variant_order(env, list(dict.fromkeys(v for r in at_env for v in r.series)))
        for variant in variants:
            having = [r for r in at_env if variant in r.series]
            metric = "success_rate" if all(r.series[variant].success_rate is not None for r in having) else "mean_return"
            for core in _core_order([r.core for r in having]):
                members = [r for r in having if r.core == core]
                grids = [set(r.series[variant].steps.tolist()) for r in members]
                common = sorted(set.intersection(*grids))
                matrix = np.array([[dict(zip(r.series[variant].steps.tolist(), r.series[variant].values(metric), strict=True))[s]
                                    for s in common] for r in members], dtype=np.float64).reshape(len(members), len(common))
                mean, low, high = aggregate_curve(matrix, reps=reps, confidence=confidence)
                curves.append(Curve(
                    core=core, variant=variant, metric=metric, steps=np.array(common, dtype=np.int64), mean=mean,
                    ci_low=low, ci_high=high, env=env, dropped_steps=len(set.union(*grids)) - len(common),
                    per_seed=dict(zip(_run_labels(members), matrix, strict=True)),
                ))
    return curves


# ==============================================================================================
# Training episodes (monitor CSVs)
# ==============================================================================================


def _monitor_rows(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Episode lengths and successes of one ``monitor/session<i>.monitor.csv`` (a ``#{json}`` line,
    then ``r,l,t,success``)."""
    lengths, successes = [], []
    with path.open(newline="") as handle:
        lines = (line for line in handle if not line.startswith("#"))
        for row in csv.DictReader(lines):
            lengths.append(int(float(row["l"])))
            successes.append(str(row.get("success", "")).strip().lower() in ("true", "1", "1.0"))
    return np.array(lengths, dtype=np.int64), np.array(successes, dtype=np.float64)


def curve_edges(n_timesteps: int, bin_steps: int) -> np.ndarray:
    """``0, bin, 2 bin, ..., n``: the last bin ends at ``n`` (later episodes count in it)."""
    return np.array(sorted({*range(0, n_timesteps, bin_steps), n_timesteps}), dtype=np.int64)


def training_success(run_dir: str | Path, edges: np.ndarray) -> np.ndarray:
    """Mean training-episode success per bin ``(edges[k], edges[k+1]]`` of env steps (NaN: no episode).

    An episode's step is where it ended: the session's start (``config.yml`` ``sessions[i]
    .from_timesteps``) plus the cumulative sum of ``l`` over every env's episodes in its monitor CSV.
    A session's episodes past the next session's start are dropped: that session resumed from an
    earlier checkpoint, so they were not trained on.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    config = read_yaml_mapping(config_path) if config_path.is_file() else {}
    starts = [int(s.get("from_timesteps") or 0) for s in config.get("sessions") or [{}]]
    steps, success = [], []
    for i, start in enumerate(starts):
        path = run_dir / MONITOR_DIR / f"session{i}.monitor.csv"
        if not path.is_file():
            continue
        lengths, outcomes = _monitor_rows(path)
        ends = start + np.cumsum(lengths)
        keep = ends <= starts[i + 1] if i + 1 < len(starts) else np.ones(len(ends), dtype=bool)
        steps.append(ends[keep])
        success.append(outcomes[keep])
    curve = np.full(len(edges) - 1, np.nan)
    if not steps:
        return curve
    all_steps = np.minimum(np.concatenate(steps), edges[-1])
    all_success = np.concatenate(success)
    bins = np.clip(np.searchsorted(edges, all_steps, side="left") - 1, 0, len(edges) - 2)
    for k in range(len(curve)):
        chosen = all_success[bins == k]
        if chosen.size:
            curve[k] = chosen.mean()
    return curve


def training_curves(
    runs: Mapping[str, Mapping[str, str | Path]], edges: np.ndarray, reps: int = DEFAULT_BOOTSTRAP_REPS
) -> list[Curve]:
    """Per core (``runs[core][seed label] = run_dir``): training-episode success per bin, across seeds.

    A curve's steps are the bin centres; its variant is ``"training episodes"``.
    """
    centres = ((edges[:-1] + edges[1:]) / 2).astype(np.int64)
    curves = []
    for core in _core_order(list(runs)):
        labels = list(runs[core])
        if not labels:
            continue
        matrix = np.array([training_success(runs[core][label], edges) for label in labels])
        mean, low, high = aggregate_curve(matrix, reps=reps)
        curves.append(Curve(core=core, variant="training episodes", metric="success_rate", steps=centres, mean=mean,
                            ci_low=low, ci_high=high, per_seed=dict(zip(labels, matrix, strict=True))))
    return curves


# ==============================================================================================
# Output
# ==============================================================================================


def write_curves_csv(curves: Sequence[Curve], path: str | Path) -> Path:
    """``curves.csv``: one row per core x variant x step (:data:`CURVE_COLUMNS`; no CI: empty cells)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    multiple_envs = len({c.env for c in curves} - {""}) > 1  # training-episode curves have no env
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CURVE_COLUMNS)
        for c in curves:
            variant = f"{c.env}:{c.variant}" if multiple_envs and c.env else c.variant
            for k, step in enumerate(c.steps):
                cells = (c.mean[k], c.ci_low[k], c.ci_high[k])
                writer.writerow([c.core, variant, int(step), c.n_seeds, c.metric,
                                 *(f"{v:.6g}" if math.isfinite(v) else "" for v in cells)])
    return path


@dataclass
class CurvePanel:
    """One panel of :func:`plot_curves`: a title and the curves (one per core) it draws."""

    title: str
    curves: list[Curve]


def curve_panels(curves: Sequence[Curve]) -> list[CurvePanel]:
    """One panel per (env, variant), in the curves' order; the env is named only when there are several."""
    multiple_envs = len({c.env for c in curves} - {""}) > 1  # training-episode curves have no env
    panels: dict[tuple[str, str], CurvePanel] = {}
    for c in curves:
        key = (c.env, c.variant)
        if key not in panels:
            where = "in distribution" if c.variant == TRAIN_VARIANT else "out of distribution"
            title = f"{c.variant} ({where})" if c.variant != "training episodes" else c.variant
            panels[key] = CurvePanel(f"{c.env}\n{title}" if multiple_envs and c.env else title, [])
        panels[key].curves.append(c)
    return list(panels.values())


def band_caption(curves: Sequence[Curve], confidence: float = 0.95) -> str:
    """What the line and the band are, for a figure's title."""
    single = sorted({c.core for c in curves if c.n_seeds < 2})
    text = (f"line: mean over seeds; band: {confidence:.0%} percentile-bootstrap CI of that mean across seeds "
            f"(not episodes); runs aligned on the steps every seed evaluated")
    if single:
        text += f"; one seed, no band: {', '.join(single)}"
    return text


def _steps_label(value: float, _position: int) -> str:
    """``250000`` -> ``250k``, ``1500000`` -> ``1.5M``: tick labels that do not run into each other."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def plot_curves(panels: Sequence[CurvePanel], path: str | Path, title: str = "") -> Path:
    """Draw ``panels`` side by side with ``rliable.plot_utils.plot_sample_efficiency_curve``.

    One line per core (mean over seeds, markers when there are few points), its CI band, the number
    of seeds in the legend; success panels share a 0-1 axis. ``title`` goes above
    :func:`band_caption`, wrapped so that nothing is cut.
    """
    from rliable import plot_utils

    panels = [p for p in panels if p.curves]
    if not panels:
        raise ValueError("plot_curves needs at least one curve")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels) + 0.6, 4.4), squeeze=False)
    palette = plt.get_cmap("tab10")
    for ax, panel in zip(axes[0], panels, strict=True):
        metrics = {c.metric for c in panel.curves}
        for j, curve in enumerate(panel.curves):
            seeds = "1 seed, no band" if curve.n_seeds == 1 else f"{curve.n_seeds} seeds"
            label = f"{curve.core} ({seeds})"
            plot_utils.plot_sample_efficiency_curve(
                curve.steps, {label: curve.mean}, {label: (curve.ci_low, curve.ci_high)}, algorithms=[label],
                colors={label: CORE_COLORS.get(curve.core, palette(j % 10))}, ax=ax,
                xlabel="env steps", ylabel=" / ".join(METRIC_LABELS[m] for m in sorted(metrics, reverse=True)),
                labelsize="medium", ticklabelsize="small", marker="o" if len(curve.steps) <= 25 else "",
                linewidth=1.6,
            )
        if metrics == {"success_rate"}:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(FuncFormatter(_steps_label))
        ax.set_title(panel.title, fontsize=9)
        ax.legend(fontsize=8, loc="best")
    caption = band_caption([c for p in panels for c in p.curves])
    width_chars = int(18 * (4.4 * len(panels) + 0.6))  # ~18 characters per inch at 8 pt
    text = "\n".join(textwrap.fill(line, width_chars) for line in [*title.splitlines(), caption] if line)
    fig.suptitle(text, fontsize=8)
    return save_figure(fig, path)


@dataclass
class CurvesReport:
    """What :func:`learning_curves` computed and wrote."""

    curves: list[Curve]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def learning_curves(paths: Sequence[str | Path], out: str | Path | None = None,
                    reps: int = DEFAULT_BOOTSTRAP_REPS) -> CurvesReport:
    """``evaluate.py --curves``: the evaluation curves of run directories; with ``out``,
    ``curves.png`` (:func:`plot_curves`) and ``curves.csv`` (:func:`write_curves_csv`) there.

    :class:`EvaluationInputError` (one line) for a path that is not a run directory with
    ``evaluations.npz``.
    """
    if not paths:
        raise EvaluationInputError("--curves needs at least one run directory")
    runs = [read_run_evaluations(path) for path in paths]
    curves = evaluation_curves(runs, reps=reps)
    report = CurvesReport(curves)
    for c in curves:
        if c.dropped_steps:
            report.notes.append(f"{c.core} on {c.variant}: {c.dropped_steps} evaluation step(s) not evaluated by every "
                                f"seed left out (curves use the steps all {c.n_seeds} seeds share)")
        if not len(c.steps):
            report.notes.append(f"{c.core} on {c.variant}: its seeds share no evaluation step; no curve")
    for env in dict.fromkeys(r.env for r in runs):
        variants = {v for r in runs if r.env == env for v in r.series}
        for r in runs:
            missing = sorted(variants - set(r.series)) if r.env == env else []
            if missing:
                report.notes.append(f"{r.run_dir} has no evaluations on {', '.join(missing)} (train.py --eval-variants)")
    if out is not None:
        out = Path(out)
        report.files.append(write_curves_csv(curves, out / "curves.csv"))
        drawn = [c for c in curves if len(c.steps)]
        if drawn:
            envs = ", ".join(dict.fromkeys(c.env for c in drawn))
            title = f"{envs}: periodic evaluations during training (train.py evaluations*.npz) vs env steps"
            report.files.append(plot_curves(curve_panels(drawn), out / "curves.png", title))
    return report
