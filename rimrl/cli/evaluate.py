"""``rimrl-evaluate`` / ``python evaluate.py``: evaluate trained agents in and out of distribution.

Argument parsing and printing only; the work is :func:`rimrl.evaluation.evaluate`. See
``docs/evaluate.md``. Bad input (missing path, corrupt zip, env with other spaces, unknown
variant, ...) ends with one ``error: ...`` line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from rimrl.cli.common import ArgumentParser, CLIError, main_guard, parse_key_values
from rimrl.experiments.io import program_name

__all__ = ["build_parser", "main"]

EXAMPLES = """examples:
  evaluate.py runs/rimrl-Pickup-Train-v0/rim/seed0 --episodes 100 --out eval/rim0
  evaluate.py runs/rimrl-Pickup-Train-v0/*/seed* --out eval/pickup --plot
  evaluate.py model.zip --env rimrl/Pickup-Train-v0 --variants train novel --gif 2 --activations --out eval/x
  evaluate.py runs/ALE-*/{rim,lstm}/seed* --episodes 10 --compare --out eval/atari
  evaluate.py runs/rimrl-Pickup-Train-v0/*/seed* --curves --out eval/curves
"""


def _variants(values: Sequence[str] | None) -> list[str] | None:
    """``--variants train novel`` and ``--variants train,novel`` both work."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    """The ``evaluate`` argument parser."""
    parser = ArgumentParser(
        prog=program_name("evaluate.py", "rimrl-evaluate"),
        description="Evaluate RecurrentPPO agents (RIM, SRM, LSTM, GRU cores) on MiniGrid distractor variants or Atari.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_ZIP", help="run directories (with config.yml) or model.zip files")
    parser.add_argument("--env", help="env id to evaluate on (required for a bare model.zip; overrides a run's env)")
    parser.add_argument(
        "--variants",
        nargs="+",
        metavar="VARIANT",
        help="variants of the run's suite (train, more, novel, more+novel) or env ids; default: all of the suite",
    )
    parser.add_argument("--episodes", type=int, default=100, help="episodes per variant per model (default: 100)")
    parser.add_argument("--seed", type=int, default=1000, help="evaluation seed: env i starts at seed+i (default: 1000)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", dest="deterministic", action="store_const", const=True, default=None,
                      help="greedy actions (default: the mode of each run's training-time evaluation, from its "
                      "config.yml; else sampled for MiniGrid/BabyAI/rimrl suites and Atari, greedy otherwise)")
    mode.add_argument("--stochastic", dest="deterministic", action="store_const", const=False,
                      help="actions sampled from the policy")
    parser.add_argument("--n-envs", type=int, default=8, help="parallel envs per variant (default: 8)")
    parser.add_argument("--out", metavar="DIR", help="write results.csv/json/md, episodes.csv and the figures here")
    parser.add_argument("--plot", action="store_true", help="write results.png: per variant, one bar per core, 95%% CIs")
    parser.add_argument("--gif", type=int, default=0, metavar="N", help="write N episode GIFs per model and variant")
    parser.add_argument("--activations", action="store_true", help="RIM/SRM: heatmap of active units; SRM: module geometry")
    parser.add_argument("--compare", action="store_true", help="Atari: per-game table and bar plot of --challenger over --baseline")
    parser.add_argument("--challenger", default="rim", help="core compared by --compare (default: rim)")
    parser.add_argument("--baseline", default="lstm", help="baseline core of --compare (default: lstm)")
    parser.add_argument("--curves", action="store_true",
                        help="learning curves only (no model is loaded): success/return vs env steps per core and "
                        "variant from the runs' evaluations*.npz, mean and 95%% CI across seeds; with --out: "
                        "curves.png and curves.csv")
    parser.add_argument("--best", action="store_true", help="evaluate best_model.zip of run directories instead of model.zip")
    parser.add_argument(
        "--env-kwargs",
        "--env-kwarg",  # the old spelling; train.py's is --env-kwargs
        dest="env_kwargs",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="extra make_env arguments for the evaluation envs, YAML-typed, e.g. max_frames_per_episode=27000",
    )
    parser.add_argument("--gym-packages", nargs="+", action="extend", default=[], metavar="MODULE",
                        help="modules to import first: the env ids, cores and env wrappers the runs use "
                        "(importing runs their code)")
    parser.add_argument("--device", default="cpu", help="torch device for the models (default: cpu)")
    trust = parser.add_mutually_exclusive_group()
    trust.add_argument("--safe", dest="safe", action="store_const", const=True, default=None,
                       help="load only the pickle-free X.weights.pt + X.spec.json beside each zip, never the "
                       "pickled zip (default: those when present; else a run directory's zip, with a warning)")
    trust.add_argument("--trust", dest="safe", action="store_const", const=False,
                       help="unpickle the .zip files, even outside run directories: this runs any code they "
                       "carry, so only for files you trust")
    parser.add_argument("--quiet", action="store_true", help="print only the tables")
    return parser


def _warning_printer(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints unpickling warnings as one ``warning: ...`` line on
    stderr and hands the others to ``fallback``."""
    from rimrl.agents import UnsafeLoadWarning

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, UnsafeLoadWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            fallback(message, category, *args, **kwargs)

    return show


class _EpisodeBar:
    """A rich progress bar per model x variant (episodes done / total), fed by
    :func:`rimrl.evaluation.evaluate`'s ``progress`` callback."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("episodes"), TimeElapsedColumn(), console=console)
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        if what not in self.tasks:
            self.tasks[what] = self.progress.add_task(what, total=total)
        self.progress.update(self.tasks[what], completed=done)

    def __enter__(self) -> _EpisodeBar:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _expected_errors() -> tuple[type[BaseException], ...]:
    from rimrl.agents import AgentLoadError
    from rimrl.evaluation import EvaluationInputError

    return (CLIError, AgentLoadError, EvaluationInputError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the evaluation CLI; returns the exit status (bad input exits 2 with one ``error:`` line)."""
    torch.set_num_threads(1)  # evaluation is many tiny forward passes: threads only add contention
    return main_guard(_main, expected=_expected_errors())(argv)


def _main(argv: Sequence[str] | None) -> int:
    from rimrl.evaluation import EvaluationOptions, evaluate
    from rimrl.evaluation.report import aggregates_table, comparison_table, results_table

    args = build_parser().parse_args(argv)
    if args.gym_packages:
        from rimrl.envs.custom import import_gym_packages

        try:
            import_gym_packages(args.gym_packages)
        except ValueError as error:
            raise CLIError(str(error)) from None
    if args.curves:
        return _curves(args)
    options = EvaluationOptions(
        paths=args.paths,
        env=args.env,
        variants=_variants(args.variants),
        episodes=args.episodes,
        seed=args.seed,
        deterministic=args.deterministic,
        n_envs=args.n_envs,
        out=args.out,
        plot=args.plot,
        gif=args.gif,
        activations=args.activations,
        compare=args.compare,
        challenger=args.challenger,
        baseline=args.baseline,
        checkpoint="best" if args.best else "final",
        env_kwargs=parse_key_values(args.env_kwargs, what="--env-kwargs"),
        device=args.device,
        safe=args.safe,
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped/logged output: never wrap table cells at 80 columns
    log = None if args.quiet else (lambda message: console.print(f"evaluating {message}", style="dim", markup=False))
    # A live bar only on a terminal: in a log file its redraws would be noise.
    bar = _EpisodeBar(console) if console.is_terminal and not args.quiet else None
    with warnings.catch_warnings(), (bar or contextlib.nullcontext()):
        warnings.showwarning = _warning_printer(warnings.showwarning)  # restored on exit
        report = evaluate(options, log=log, progress=bar)
    console.print(results_table(report.rows))
    if report.aggregates:
        console.print(aggregates_table(report.aggregates))
    if report.comparison:
        console.print(comparison_table(report.comparison))
    for note in report.notes:
        console.print(f"note: {note}")
    if report.write_error is not None:
        print(f"error: {report.write_error}", file=sys.stderr, flush=True)
        return 1
    if report.files and not args.quiet:
        console.print(f"wrote {len(report.files)} files to {args.out}")
    return 0


#: Flags of the model evaluation, which --curves (reading evaluations*.npz only) does not run.
_NOT_WITH_CURVES = ("env", "variants", "plot", "gif", "activations", "compare", "best", "env_kwargs")


def _curves(args: argparse.Namespace) -> int:
    """``--curves``: learning curves from the runs' evaluation files; nothing is evaluated."""
    from rimrl.evaluation.curves import learning_curves

    given = [name for name in _NOT_WITH_CURVES if getattr(args, name)]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CLIError(f"--curves only reads the runs' evaluation files; run {flags} without --curves")
    report = learning_curves(args.paths, out=args.out)
    console = Console(width=None if Console().is_terminal else 200)
    console.print(_curves_table(report.curves))
    for note in report.notes:
        console.print(f"note: {note}")
    if report.files and not args.quiet:
        console.print(f"wrote {', '.join(path.name for path in report.files)} to {args.out}")
    return 0


def _curves_table(curves: Sequence[Any]) -> Any:
    """The last point of each curve: core, variant, step, seeds, mean [95% CI]."""
    from rich.table import Table

    table = Table(title="learning curves: last common evaluation (mean over seeds, 95% CI across seeds)")
    for column in ("core", "variant", "step", "seeds", "metric", "mean [95% CI]"):
        table.add_column(column)
    for c in curves:
        if not len(c.steps):
            continue
        low, high = c.ci_low[-1], c.ci_high[-1]
        interval = f" [{low:.3g}, {high:.3g}]" if low == low and high == high else ""  # NaN: one seed
        table.add_row(c.core, c.variant, f"{int(c.steps[-1]):,}", str(c.n_seeds), c.metric, f"{c.mean[-1]:.3g}{interval}")
    return table


if __name__ == "__main__":
    raise SystemExit(main())
