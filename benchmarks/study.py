"""The RIM-vs-LSTM out-of-distribution study in one command: train, evaluate, compare.

    .venv/bin/python benchmarks/study.py                  # lstm gru rim srm x seeds 0-4, 300k steps each
    .venv/bin/python benchmarks/study.py --suite pickup-instructed --cores lstm rim --seeds 0 1 2
    .venv/bin/python benchmarks/study.py --dry-run        # the plan: what is done, what is left

1. **Train** every core x seed on the suite's train variant with train.py's own sweep machinery
   (:func:`rimrl.cli.train.build_trials` + :func:`rimrl.experiments.sweep.run_sweep`, a local process pool
   of ``--workers``), the same ``-n`` for every core, run directories under ``--out``. Completed
   runs (``model.zip`` + ``final_metrics.json`` at ``-n`` steps) are skipped; the others run with
   train.py's ``--resume``, which continues an interrupted run from its latest checkpoint and
   starts a new one where there is nothing to resume.
2. **Evaluate** each final ``model.zip`` on every variant of the suite with
   :func:`rimrl.evaluation.evaluate` (``--episodes`` per variant, *sampled* actions: the action mode
   of train.py's own evaluation). Each run's evaluation is cached under ``<out>/eval/<core>/seed<k>/``
   and reused while the model and the evaluation settings are unchanged.
3. **Compare**: ``results.md`` / ``results.json`` (rliable IQM of the success rate over seeds with
   95 % stratified-bootstrap CIs, per-seed values, probability of improvement of RIM and SRM over
   LSTM), ``results.png`` and ``curves.png`` (success vs env steps: the training episodes from the
   monitor CSVs, then train.py's periodic evaluations on each variant; drawn by
   :mod:`rimrl.evaluation.curves`, the code of ``evaluate.py --curves``), all under ``--out``.

Exit status: 0 done; 1 a training did not complete (the other runs are still evaluated and
reported); 2 bad input (one ``error:`` line); 130 / 143 interrupted (rerun the same command).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import shlex
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from rimrl.agents import AgentLoadError
from rimrl.cli.common import (
    ArgumentParser,
    CLIError,
    atomic_write_text,
    git_info,
    main_guard,
    parse_key_values,
    read_yaml,
    run_dir_for,
    to_yaml_safe,
)
from rimrl.envs import DISTRACTOR_SUITES
from rimrl.evaluation.environments import EvaluationInputError
from rimrl.experiments import ExperimentInputError
from rimrl.experiments.options import (
    CONFIG_FILE,
    CORES,
    METRICS_FILE,
    MODEL_FILE,
)

__all__ = ["RunState", "StudySettings", "build_parser", "main", "run_study"]

DEFAULT_CORES = ("lstm", "gru", "rim", "srm")
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
DEFAULT_STEPS = 300_000
DEFAULT_EPISODES = 200
#: The probability of improvement is reported for each challenger present against the baseline.
BASELINE = "lstm"
CHALLENGERS = ("rim", "srm")
#: Pseudo-variant: every out-of-distribution variant as one task of a (seeds, variants) matrix.
OOD = "ood"
EVAL_DIR = "eval"
CACHE_FILE = "study_eval.json"
OUTPUT_FILES = ("results.md", "results.json", "results.png", "curves.png")

EXAMPLES = """examples:
  benchmarks/study.py                                    # lstm gru rim srm x seeds 0-4, 300k steps, 200 episodes
  benchmarks/study.py --suite pickup-instructed -n 1e6   # the instructed suite, 1M steps per run
  benchmarks/study.py --cores lstm rim --seeds 0 1 2 --workers 2 --out runs/study/small
  benchmarks/study.py --dry-run                          # print the plan (done / to resume / to start)

Rerunning the same command resumes: completed runs and cached evaluations are reused.
"""


# ==============================================================================================
# Settings
# ==============================================================================================


def _int(text: str) -> int:
    """``"300000"``, ``"300_000"``, ``"3e5"`` -> 300000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}")
    return int(value)


_int.__name__ = "int"


def build_parser() -> argparse.ArgumentParser:
    """The study's argument parser (errors are one ``error:`` line, exit 2)."""
    parser = ArgumentParser(
        prog="benchmarks/study.py",
        description="Train cores x seeds on a distractor suite's train variant (train.py's sweep, resumable), "
        "evaluate every final model on all variants with sampled actions, and compare the cores with rliable "
        "(IQM, stratified-bootstrap CIs, probability of improvement over LSTM). See benchmarks/README.md.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--suite", default="pickup", choices=sorted(DISTRACTOR_SUITES),
                      help="distractor suite; training uses its train variant [default: pickup]")
    what.add_argument("--cores", nargs="+", default=list(DEFAULT_CORES), choices=CORES, metavar="CORE",
                      help=f"cores to compare: {', '.join(CORES)} [default: {' '.join(DEFAULT_CORES)}]")
    what.add_argument("--seeds", nargs="+", type=_int, default=list(DEFAULT_SEEDS), metavar="SEED",
                      help=f"training seeds [default: {' '.join(map(str, DEFAULT_SEEDS))}]")
    what.add_argument("-n", "--n-timesteps", type=_int, default=DEFAULT_STEPS, metavar="N",
                      help=f"env steps per run, the same for every core [default: {DEFAULT_STEPS:_}]")
    what.add_argument("--n-envs", type=_int, metavar="N", help="parallel training envs [default: the preset's]")
    what.add_argument("--sequence-length", type=_int, metavar="STEPS",
                      help="--backend jax only: python -m rimrl.jax.train --sequence-length [default: its default]")
    what.add_argument("--hyperparams", nargs="+", metavar="KEY=VALUE",
                      help="train.py --hyperparams overrides, the same for every core [default: the presets]")
    what.add_argument("--train-eval-episodes", type=_int, metavar="N",
                      help="train.py --eval-episodes (its periodic train-variant evaluation) [default: train.py's]")
    what.add_argument("--eval-freq", type=_int, metavar="STEPS",
                      help="train.py --eval-freq [default: train.py's]")
    what.add_argument("--save-freq", type=_int, metavar="STEPS",
                      help="train.py --save-freq: checkpoint cadence, what an interrupted run resumes from "
                      "[default: train.py's]")
    ev = parser.add_argument_group("evaluation")
    ev.add_argument("--episodes", type=_int, default=DEFAULT_EPISODES, metavar="N",
                    help=f"episodes per variant and run, sampled actions [default: {DEFAULT_EPISODES}]")
    ev.add_argument("--eval-seed", type=_int, default=1000, metavar="S",
                    help="evaluation seed (evaluate.py --seed) [default: 1000]")
    ev.add_argument("--eval-n-envs", type=_int, default=8, metavar="K",
                    help="parallel envs per evaluated variant (evaluate.py --n-envs) [default: 8]")
    ev.add_argument("--reps", type=_int, default=2000, metavar="N",
                    help="bootstrap resamples for every CI [default: 2000]")
    ev.add_argument("--bin", dest="bin_steps", type=_int, default=10_000, metavar="STEPS",
                    help="learning-curve bin width in env steps [default: 10_000]")
    run = parser.add_argument_group("running")
    run.add_argument("--out", metavar="DIR", help="root of the run directories and the results "
                     "[default: runs/study/<suite>]")
    run.add_argument("--workers", type=_int, default=2, metavar="N",
                     help="trainings (and evaluations) run at once [default: 2]")
    run.add_argument("--threads", type=_int, default=1, metavar="N", help="torch threads per training [default: 1]")
    run.add_argument("--backend", choices=("torch", "jax"), default="torch",
                     help="train with train.py (torch) or python -m rimrl.jax.train (the same agents trained end to "
                     "end in JAX, with its periodic evaluations on every variant; no checkpoints, no resuming of a "
                     "partial run) [default: torch]")
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit without training anything")
    run.add_argument("-q", "--quiet", action="store_true", help="only the final tables (and errors)")
    return parser


@dataclass
class StudySettings:
    """The validated settings of one study (see :func:`build_parser`)."""

    suite: str
    cores: list[str]
    seeds: list[int]
    n_timesteps: int
    out: Path
    n_envs: int | None = None
    sequence_length: int | None = None  # --backend jax only (resolved to the JAX trainer's default)
    hyperparams: list[str] = field(default_factory=list)
    train_eval_episodes: int | None = None
    eval_freq: int | None = None
    save_freq: int | None = None
    episodes: int = DEFAULT_EPISODES
    eval_seed: int = 1000
    eval_n_envs: int = 8
    reps: int = 2000
    bin_steps: int = 10_000
    workers: int = 2
    threads: int = 1
    backend: str = "torch"
    dry_run: bool = False
    quiet: bool = False
    command: str = ""

    @property
    def env_id(self) -> str:
        """The train variant's env id, e.g. ``rimrl/Pickup-Train-v0``."""
        return DISTRACTOR_SUITES[self.suite]["train"]

    @property
    def variants(self) -> list[str]:
        """The suite's variants in order: ``train``, ``more``, ``novel``, ``more+novel``."""
        return list(DISTRACTOR_SUITES[self.suite])

    @property
    def ood_variants(self) -> list[str]:
        return [v for v in self.variants if v != "train"]

    def run_dir(self, core: str, seed: int) -> Path:
        return run_dir_for(self.out, self.env_id, core, seed)

    def cache_dir(self, core: str, seed: int) -> Path:
        return self.out / EVAL_DIR / core / f"seed{seed}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite, "env": self.env_id, "variants": self.variants, "cores": self.cores,
            "seeds": self.seeds, "n_timesteps": self.n_timesteps, "n_envs": self.n_envs,
            "sequence_length": self.sequence_length,
            "hyperparams": self.hyperparams, "train_eval_episodes": self.train_eval_episodes,
            "eval_freq": self.eval_freq, "save_freq": self.save_freq, "episodes": self.episodes, "deterministic": False,
            "eval_seed": self.eval_seed, "eval_n_envs": self.eval_n_envs, "reps": self.reps,
            "bin_steps": self.bin_steps, "workers": self.workers, "threads": self.threads, "out": str(self.out),
            "backend": self.backend,
        }


def _no_duplicates(name: str, values: Sequence[Any]) -> None:
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            raise CLIError(f"{name} lists {value!r} twice")
        seen.add(value)


def settings_from(args: argparse.Namespace, command: str) -> StudySettings:
    """Validate the parsed arguments; :class:`CLIError` (one line, exit 2) on the first problem."""
    _no_duplicates("--cores", args.cores)
    _no_duplicates("--seeds", args.seeds)
    for seed in args.seeds:
        if seed < 0:
            raise CLIError(f"--seeds must be >= 0, got {seed}")
    for flag, value, minimum in (
        ("-n/--n-timesteps", args.n_timesteps, 1), ("--n-envs", args.n_envs, 1), ("--sequence-length", args.sequence_length, 1),
        ("--train-eval-episodes", args.train_eval_episodes, 1), ("--eval-freq", args.eval_freq, 0),
        ("--save-freq", args.save_freq, 0), ("--episodes", args.episodes, 1), ("--eval-seed", args.eval_seed, 0),
        ("--eval-n-envs", args.eval_n_envs, 1),
        ("--reps", args.reps, 1), ("--bin", args.bin_steps, 1), ("--workers", args.workers, 1),
        ("--threads", args.threads, 1),
    ):
        if value is not None and value < minimum:
            raise CLIError(f"{flag} must be >= {minimum}, got {value}")
    hyperparams = list(args.hyperparams or [])
    parse_key_values(hyperparams)  # a malformed item fails here; keys and types are checked by train.py
    sequence_length = args.sequence_length
    if args.backend != "jax" and sequence_length is not None:
        raise CLIError("--sequence-length is an option of the JAX trainer: add --backend jax")
    if args.backend == "jax":
        from rimrl.jax.train import SEQUENCE_LENGTH  # no JAX import: the trainer imports it when it trains

        sequence_length = sequence_length or SEQUENCE_LENGTH
        for flag, value in (("--hyperparams", args.hyperparams), ("--save-freq", args.save_freq)):
            if value is not None:
                raise CLIError(f"{flag} is a train.py option; --backend jax trains with the presets and writes no "
                               "checkpoints")
    out = Path(args.out) if args.out else Path("runs") / ("study-jax" if args.backend == "jax" else "study") / args.suite
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {str(out)!r} exists and is not a directory")
    return StudySettings(
        suite=args.suite, cores=list(args.cores), seeds=list(args.seeds), n_timesteps=args.n_timesteps, out=out,
        n_envs=args.n_envs, sequence_length=sequence_length, hyperparams=hyperparams, train_eval_episodes=args.train_eval_episodes,
        eval_freq=args.eval_freq, save_freq=args.save_freq, episodes=args.episodes, eval_seed=args.eval_seed, eval_n_envs=args.eval_n_envs,
        reps=args.reps, bin_steps=args.bin_steps, workers=args.workers, threads=args.threads,
        backend=args.backend, dry_run=args.dry_run, quiet=args.quiet, command=command,
    )


# ==============================================================================================
# Runs: what is done, what to resume, how train.py is asked
# ==============================================================================================


@dataclass
class RunState:
    """One core x seed run directory: ``complete``, ``resume`` (has a checkpoint) or ``new``."""

    core: str
    seed: int
    run_dir: Path
    status: str
    num_timesteps: int = 0  # final steps (complete) or the latest checkpoint's (resume)
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def inspect_run(settings: StudySettings, core: str, seed: int) -> RunState:
    """The state of one run directory, checked against the study's settings.

    :raises CLIError: the run exists but was set up differently (another ``-n`` for a finished
        run, other ``--n-envs`` or ``--hyperparams``): rerun with the same settings or another ``--out``.
    """
    from rimrl.agents.training import list_checkpoints

    run_dir = settings.run_dir(core, seed)
    config_path = run_dir / CONFIG_FILE
    config = read_yaml(config_path, what="saved run config") if config_path.is_file() else {}
    where = f"{run_dir}: it was trained with"
    if config:
        requested = to_yaml_safe(parse_key_values(settings.hyperparams))
        if (config.get("overrides") or {}) != requested:
            raise CLIError(f"{where} --hyperparams {config.get('overrides') or {}!r}, not {requested!r}; use the "
                           f"same ones or another --out")
        if settings.n_envs is not None and config.get("n_envs") not in (None, settings.n_envs):
            raise CLIError(f"{where} --n-envs {config['n_envs']}, not {settings.n_envs}; use the same or another --out")
        if settings.backend == "jax":
            saved = config.get("hyperparams") or {}
            saved = saved.get("sequence_length") or saved.get("n_steps")  # None: whole columns of n_steps
            if saved is not None and saved != settings.sequence_length:
                raise CLIError(f"{where} --sequence-length {saved}, not {settings.sequence_length}; use the same or "
                               f"another --out")
    metrics = _read_json(run_dir / METRICS_FILE) if (run_dir / MODEL_FILE).is_file() else None
    if metrics is not None and int(metrics.get("num_timesteps") or 0) >= settings.n_timesteps:
        saved_n = config.get("n_timesteps")
        if isinstance(saved_n, int) and saved_n != settings.n_timesteps:
            raise CLIError(f"{where} -n {saved_n:_}, not {settings.n_timesteps:_}; every core needs the same budget: "
                           f"pass -n {saved_n:_} or use another --out")
        return RunState(core, seed, run_dir, "complete", int(metrics["num_timesteps"]), metrics, config)
    checkpoints = list_checkpoints(run_dir)
    if checkpoints:
        return RunState(core, seed, run_dir, "resume", checkpoints[0][0], config=config)
    return RunState(core, seed, run_dir, "new", config=config)


def train_argv(settings: StudySettings, core: str, seed: int) -> list[str]:
    """The ``train.py`` arguments of one run (recorded in its ``config.yml``). ``--resume`` always:
    train.py continues from the latest checkpoint, or starts a new run where there is none."""
    argv = ["--env", settings.env_id, "--core", core, "--seed", str(seed), "-n", str(settings.n_timesteps),
            "-f", str(settings.out), "--resume", "--threads", str(settings.threads), "--eval-variants", "all"]
    if settings.n_envs is not None:
        argv += ["--n-envs", str(settings.n_envs)]
    if settings.train_eval_episodes is not None:
        argv += ["--eval-episodes", str(settings.train_eval_episodes)]
    if settings.eval_freq is not None:
        argv += ["--eval-freq", str(settings.eval_freq)]
    if settings.save_freq is not None:
        argv += ["--save-freq", str(settings.save_freq)]
    if settings.quiet:
        argv += ["-q"]
    if settings.hyperparams:
        argv += ["--hyperparams", *settings.hyperparams]
    return argv


def train_options(settings: StudySettings, state: RunState) -> Any:
    """One :class:`rimrl.experiments.options.TrainOptions`, built by train.py's own parser and grid builder."""
    from rimrl.cli.train import build_parser as train_parser
    from rimrl.cli.train import build_trials

    argv = train_argv(settings, state.core, state.seed)
    (options,) = build_trials(train_parser().parse_args(argv), argv)
    return options


def check_trainings(settings: StudySettings, pending: Sequence[RunState]) -> None:
    """train.py's validation of each pending run (env, hyperparameter keys and types, resumable
    state), without building agents or touching the disk."""
    from rimrl.experiments.validation import resolve_trial

    if settings.backend == "jax":
        try:
            from rimrl.jax.envs import make_pickup
        except ImportError as error:
            raise CLIError(f"--backend jax needs rimrl's jax extra: pip install 'rimrl[jax]' ({error})") from None
        make_pickup(settings.env_id)
        return
    for state in pending:
        try:
            resolve_trial(train_options(settings, state))
        except ExperimentInputError as error:
            raise CLIError(f"{state.core}/seed{state.seed}: {error}", error.exit_code) from None


def train_jax(settings: StudySettings, core: str, seed: int) -> None:
    """One ``python -m rimrl.jax.train`` run (from scratch: a partial run is overwritten), with its
    periodic evaluations on every variant as the torch runs have them (train.py ``--eval-variants all``)."""
    from rimrl.jax.train import train

    evaluation = {"eval_freq": settings.eval_freq, "eval_episodes": settings.train_eval_episodes}
    train(settings.env_id, core, seed, settings.n_timesteps, str(settings.out), overwrite=True, n_envs=settings.n_envs,
          progress=False, eval_variants=["all"], sequence_length=settings.sequence_length,
          **{name: value for name, value in evaluation.items() if value is not None})  # else the trainer's defaults


def train_runs(settings: StudySettings, pending: Sequence[RunState]) -> int:
    """Run the pending trainings as one train.py sweep (local pool), or the JAX trainer in a process
    pool (``--backend jax``); the exit status."""
    from rimrl.experiments.sweep import run_sweep

    if settings.backend == "jax":
        failed = 0
        with ProcessPoolExecutor(min(settings.workers, len(pending)), mp_context=_pool_context()) as pool:
            jobs = {pool.submit(train_jax, settings, s.core, s.seed): s for s in pending}
            for job in as_completed(jobs):
                state = jobs[job]
                try:
                    job.result()
                except Exception as error:  # reported, the other runs go on (exit status 1)
                    print(f"study: {state.core}/seed{state.seed} failed: {type(error).__name__}: {error}", flush=True)
                    failed += 1
        return 1 if failed else 0

    trials = [train_options(settings, state) for state in pending]
    for options in trials:
        options.label = options.name
    return run_sweep(trials, backend="local", workers=min(settings.workers, len(trials)))


# ==============================================================================================
# Evaluation (cached per run)
# ==============================================================================================


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def eval_key(settings: StudySettings, state: RunState) -> dict[str, Any]:
    """What a cached evaluation must match to be reused: the model and every evaluation setting."""
    return {
        "model_sha256": _sha256(state.run_dir / MODEL_FILE), "num_timesteps": state.num_timesteps,
        "variants": settings.variants, "episodes": settings.episodes, "eval_seed": settings.eval_seed,
        "deterministic": False, "n_envs": settings.eval_n_envs,
    }


def cached_rows(cache_dir: Path, key: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The cached result rows of a run when ``key`` matches, else None."""
    data = _read_json(cache_dir / CACHE_FILE)
    if data is None or data.get("key") != key or not isinstance(data.get("rows"), list):
        return None
    return data["rows"]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def evaluate_run(run_dir: str, cache_dir: str, key: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate one run's final model on every variant with sampled actions (``evaluate.py
    --stochastic``), write evaluate.py's files and the cache into ``cache_dir``; return the rows."""
    from rimrl.evaluation import EvaluationOptions, evaluate
    from rimrl.evaluation.results import as_dict

    options = EvaluationOptions(paths=[run_dir], episodes=key["episodes"], seed=key["eval_seed"],
                                deterministic=False, n_envs=key["n_envs"], out=cache_dir)
    report = evaluate(options)
    rows = [_json_safe(as_dict(row)) for row in report.rows]
    atomic_write_text(Path(cache_dir) / CACHE_FILE, json.dumps({"key": key, "rows": rows}, indent=2) + "\n")
    return rows


def _pool_context() -> multiprocessing.context.BaseContext:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def evaluate_runs(settings: StudySettings, runs: Sequence[RunState], say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Result rows (one per run x variant) of every run: from the cache, or evaluated now
    (``--workers`` at a time, one process each)."""
    rows: dict[tuple[str, int], list[dict[str, Any]]] = {}
    todo = []
    for state in runs:
        key, cache_dir = eval_key(settings, state), settings.cache_dir(state.core, state.seed)
        cached = cached_rows(cache_dir, key)
        if cached is not None:
            rows[(state.core, state.seed)] = cached
        else:
            todo.append((state, cache_dir, key))
    say(f"study: evaluating {len(todo)} runs x {len(settings.variants)} variants x {settings.episodes} episodes "
        f"(sampled actions); {len(runs) - len(todo)} cached")
    if len(todo) > 1 and settings.workers > 1:
        with ProcessPoolExecutor(max_workers=min(settings.workers, len(todo)), mp_context=_pool_context()) as pool:
            futures = {(s.core, s.seed): pool.submit(evaluate_run, str(s.run_dir), str(c), k) for s, c, k in todo}
            for name, future in futures.items():
                rows[name] = future.result()
                say(f"study: evaluated {name[0]}/seed{name[1]}")
    else:
        for state, cache_dir, key in todo:
            rows[(state.core, state.seed)] = evaluate_run(str(state.run_dir), str(cache_dir), key)
            say(f"study: evaluated {state.core}/seed{state.seed}")
    return [row for state in runs for row in rows[(state.core, state.seed)]]


# ==============================================================================================
# Statistics
# ==============================================================================================


def per_seed_success(settings: StudySettings, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[int, float]]]:
    """``{core: {variant: {seed: success rate}}}`` (``ood``: the mean over the OOD variants)."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for row in rows:
        table.setdefault(row["core"], {}).setdefault(row["variant"], {})[int(row["seed"])] = float(row["success_rate"])
    for by_variant in table.values():
        seeds = sorted(set.intersection(*(set(by_variant.get(v, {})) for v in settings.ood_variants)))
        by_variant[OOD] = {s: float(np.mean([by_variant[v][s] for v in settings.ood_variants])) for s in seeds}
    return table


def _matrix(settings: StudySettings, by_variant: Mapping[str, Mapping[int, float]], variant: str) -> np.ndarray:
    """``(seeds, tasks)`` success rates: one task per variant, the OOD variants for ``ood``."""
    if variant == OOD:
        seeds = sorted(by_variant[OOD])
        return np.array([[by_variant[v][s] for v in settings.ood_variants] for s in seeds], dtype=np.float64)
    values = by_variant[variant]
    return np.array([values[s] for s in sorted(values)], dtype=np.float64)[:, None]


def compute_statistics(settings: StudySettings, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """rliable IQM (and mean) per core and variant, and P(challenger > LSTM) per variant."""
    from rimrl.evaluation.stats import aggregate_scores, probability_of_improvement

    per_seed = per_seed_success(settings, rows)
    cores = [c for c in settings.cores if c in per_seed]
    variants = [*settings.variants, OOD]
    requests = {f"{core}|{variant}": _matrix(settings, per_seed[core], variant) for core in cores for variant in variants}
    estimates = aggregate_scores(requests, reps=settings.reps, seed=0)
    success = []
    for variant in variants:
        for core in cores:
            estimate = estimates[f"{core}|{variant}"]
            values = per_seed[core][variant]
            success.append({"variant": variant, "core": core, "n_seeds": len(values),
                            "per_seed": {str(s): values[s] for s in sorted(values)}, **estimate.as_dict()})
    pairs = {
        f"{challenger}|{variant}": (requests[f"{challenger}|{variant}"], requests[f"{BASELINE}|{variant}"])
        for challenger in CHALLENGERS if challenger in cores and BASELINE in cores
        for variant in variants
    }
    improvements = probability_of_improvement(pairs, reps=settings.reps, seed=0)
    poi = []
    for name, estimate in improvements.items():
        challenger, variant = name.split("|")
        poi.append({"variant": variant, "challenger": challenger, "baseline": BASELINE, **estimate.as_dict()})
    return {"success": success, "probability_of_improvement": poi}


# ==============================================================================================
# Learning curves (rimrl.evaluation.curves, the same code as evaluate.py --curves)
# ==============================================================================================


def compute_curves(settings: StudySettings, runs: Sequence[RunState]) -> dict[str, Any]:
    """The training episodes' success per ``--bin`` of env steps (monitor CSVs) and train.py's
    periodic evaluations on each variant, per core: the mean over seeds and its 95 % bootstrap CI
    across seeds (:mod:`rimrl.evaluation.curves`). Returns the JSON form, with the
    :class:`~rimrl.evaluation.curves.Curve` objects under ``"objects"`` for :func:`plot_curves`."""
    from rimrl.evaluation.curves import curve_edges, evaluation_curves, read_run_evaluations, training_curves

    edges = curve_edges(settings.n_timesteps, settings.bin_steps)
    by_core = {core: {f"seed{s.seed}": s.run_dir for s in runs if s.core == core} for core in settings.cores}
    training = training_curves({core: members for core, members in by_core.items() if members}, edges, reps=settings.reps)
    readable = []
    for state in runs:
        try:
            readable.append(read_run_evaluations(state.run_dir))
        except EvaluationInputError:
            continue  # a run without evaluations.npz has no evaluation curve; its training curve stays
    evaluation = [c for c in evaluation_curves(readable, reps=settings.reps) if c.variant in settings.variants and len(c.steps)]
    cores = {c.core: {"seeds": [s.seed for s in runs if s.core == c.core],
                      **{k: v for k, v in c.as_dict().items() if k in ("mean", "ci_low", "ci_high", "per_seed")}}
             for c in training}
    per_variant: dict[str, Any] = {}
    for c in evaluation:
        per_variant.setdefault(c.variant, {})[c.core] = {k: v for k, v in c.as_dict().items() if k in
                                                        ("steps", "n_seeds", "mean", "ci_low", "ci_high", "per_seed")}
    return {"bin_start": [int(e) for e in edges[:-1]], "bin_end": [int(e) for e in edges[1:]],
            "bin_steps": settings.bin_steps, "cores": cores, "evaluation": per_variant,
            "objects": [*training, *evaluation]}


# ==============================================================================================
# Output
# ==============================================================================================


def _pct(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _prob(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _markdown_table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
    return "\n".join(out)


def _variant_label(settings: StudySettings, variant: str) -> str:
    return f"{OOD} ({', '.join(settings.ood_variants)})" if variant == OOD else variant


def describe(settings: StudySettings, runs: Sequence[RunState]) -> str:
    """One sentence with the seeds, steps and episodes (headers and figure titles)."""
    steps = sorted({state.num_timesteps for state in runs})
    trained = f"{steps[0]:,}" if len(steps) == 1 else f"{steps[0]:,}-{steps[-1]:,}"
    backend = " (trained in JAX)" if settings.backend == "jax" else ""
    return (f"{settings.suite}{backend}: cores {', '.join(settings.cores)}; seeds {', '.join(map(str, settings.seeds))}; "
            f"-n {settings.n_timesteps:,} env steps per run ({trained} trained); {settings.episodes} sampled-action "
            f"episodes per variant and run")


def success_table(settings: StudySettings, stats: Mapping[str, Any]) -> str:
    lines = []
    for entry in stats["success"]:
        per_seed = ", ".join(f"s{seed} {_pct(value)}" for seed, value in entry["per_seed"].items())
        lines.append([_variant_label(settings, entry["variant"]), entry["core"], str(entry["n_seeds"]),
                      f"{_pct(entry['iqm'])} [{_pct(entry['iqm_ci_low'])}, {_pct(entry['iqm_ci_high'])}]", per_seed])
    return _markdown_table(["variant", "core", "seeds", "IQM success [95% CI]", "per seed"], lines)


def improvement_table(settings: StudySettings, stats: Mapping[str, Any]) -> str | None:
    entries = stats["probability_of_improvement"]
    challengers = list(dict.fromkeys(e["challenger"] for e in entries))
    if not challengers:
        return None
    by_key = {(e["variant"], e["challenger"]): e for e in entries}
    lines = []
    for variant in [*settings.variants, OOD]:
        cells = [_variant_label(settings, variant)]
        for challenger in challengers:
            e = by_key[(variant, challenger)]
            cells.append(f"{_prob(e['probability'])} [{_prob(e['ci_low'])}, {_prob(e['ci_high'])}]")
        lines.append(cells)
    return _markdown_table(["variant", *(f"P({c} > {BASELINE}) [95% CI]" for c in challengers)], lines)


def write_markdown(settings: StudySettings, runs: Sequence[RunState], missing: Sequence[RunState],
                   stats: Mapping[str, Any], created: str, git: Mapping[str, Any], path: Path) -> str:
    """``results.md``; returns the tables (what is printed at the end)."""
    n_envs = sorted({state.config.get("n_envs") for state in runs if state.config.get("n_envs") is not None})
    hyper = " ".join(settings.hyperparams) if settings.hyperparams else "the presets' (configs/minigrid.yml)"
    tables = ["## Success rate per core and variant", "",
              f"rliable interquartile mean (IQM) of the per-seed success rates, 95% stratified-bootstrap CI "
              f"({settings.reps} resamples). `{OOD}`: the out-of-distribution variants as tasks of one "
              f"(seeds x variants) matrix; its per-seed values are the mean over those variants. The IQM "
              f"is the mean of the middle 50% of the scores (with few seeds, close to their median).", "", success_table(settings, stats)]
    poi = improvement_table(settings, stats)
    if poi is not None:
        tables += ["", f"## Probability of improvement over {BASELINE.upper()}", "",
                   f"rliable's P(X > {BASELINE}): the probability that a random seed of X has a higher success rate "
                   f"than a random seed of {BASELINE} (ties count half; averaged over the tasks for `{OOD}`), "
                   f"95% stratified-bootstrap CI. 0.5 means no difference.", "", poi]
    else:
        tables += ["", f"(No probability of improvement: it needs {BASELINE} and one of {', '.join(CHALLENGERS)}.)"]
    jax = settings.backend == "jax"
    trainer = "python -m rimrl.jax.train (recurrent PPO in JAX, docs/jax.md;" if jax else "train.py (RecurrentPPO;"
    header = [
        f"# Out-of-distribution study: {', '.join(settings.cores)} on the {settings.suite} suite", "",
        "Command:", "", "```", settings.command, "```", "",
        f"- {describe(settings, runs)}.",
        f"- Trained on `{settings.env_id}` with {trainer} n_envs {', '.join(map(str, n_envs)) or '?'}; "
        f"hyperparameters: {hyper}); run directories under `{settings.out}`.",
        f"- Evaluated: each run's final `model.zip` on {', '.join(settings.variants)}; {settings.episodes} episodes "
        f"per variant, sampled (stochastic) actions as in train.py's own evaluation, evaluation seed "
        f"{settings.eval_seed}, {settings.eval_n_envs} envs (per-run files under `{settings.out / EVAL_DIR}`).",
        f"- Written {created}; git commit {git.get('commit') or '?'}{' (dirty)' if git.get('dirty') else ''}.",
        "- Figures: `results.png` (IQM and CI per variant and core), `curves.png` (success vs env steps: training "
        f"episodes, and {'the JAX trainer' if jax else 'train.py'}'s periodic evaluations on every variant).",
    ]
    if missing:
        header.append(f"- **Not included** (training did not complete): "
                      f"{', '.join(f'{s.core}/seed{s.seed}' for s in missing)}. Rerun the command to resume them.")
    body = "\n".join(tables)
    path.write_text("\n".join(header) + "\n\n" + body + "\n")
    return body


def _title(settings: StudySettings, runs: Sequence[RunState], first: str) -> str:
    command = textwrap.fill(settings.command, 150, subsequent_indent="    ")
    return f"{first}\n{describe(settings, runs)}\n{command}"


def plot_success(settings: StudySettings, runs: Sequence[RunState], stats: Mapping[str, Any], path: Path) -> Path:
    """Per variant (one panel each): per core the IQM (line), its 95 % CI (bar) and the seeds (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rimrl.evaluation.plots import CORE_COLORS, save_figure

    variants = [*settings.variants, OOD]
    cores = list(dict.fromkeys(e["core"] for e in stats["success"]))
    by_key = {(e["variant"], e["core"]): e for e in stats["success"]}
    fig, axes = plt.subplots(1, len(variants), figsize=(2.7 * len(variants) + 0.6, 0.5 * len(cores) + 2.6),
                             sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        for i, core in enumerate(cores):
            e = by_key[(variant, core)]
            color = CORE_COLORS.get(core, "C0")
            low, high = e["iqm_ci_low"], e["iqm_ci_high"]
            ax.barh(i, max(high - low, 0.004), left=low - (0.002 if high - low < 0.004 else 0), height=0.6,
                    color=color, alpha=0.75)
            ax.vlines(e["iqm"], i - 0.32, i + 0.32, color="k", lw=1.5)
            seeds = list(e["per_seed"].values())
            ax.scatter(seeds, i + np.linspace(-0.15, 0.15, len(seeds)), s=9, color="k", alpha=0.6, zorder=3)
        ax.set_title(_variant_label(settings, variant), fontsize=9)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("success rate")
        ax.grid(True, axis="x", alpha=0.25)
    axes[0][0].set_yticks(range(len(cores)), cores)
    axes[0][0].set_ylabel("core")
    fig.suptitle(_title(settings, runs, "IQM success over seeds (black line), 95% stratified-bootstrap CI (bar), "
                                        "each seed (dots)"), fontsize=7.5)
    return save_figure(fig, path)


def plot_curves(settings: StudySettings, runs: Sequence[RunState], curves: Mapping[str, Any], path: Path) -> Path:
    """Success vs env steps per core (:func:`rimrl.evaluation.curves.plot_curves`): the training
    episodes (first panel), then train.py's periodic evaluations on each variant."""
    from rimrl.evaluation.curves import curve_panels
    from rimrl.evaluation.curves import plot_curves as draw

    first = f"success vs env steps. Training episodes in bins of {settings.bin_steps:,} steps"
    trainer = "the JAX trainer" if settings.backend == "jax" else "train.py"
    first += f"; evaluations: {trainer}'s periodic sampled-action episodes per variant"
    return draw(curve_panels(curves["objects"]), path, _title(settings, runs, first))


def write_outputs(settings: StudySettings, runs: Sequence[RunState], missing: Sequence[RunState],
                  rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any], curves: Mapping[str, Any]) -> str:
    """Write every output file under ``--out``; return the tables."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    git = git_info()
    out = settings.out
    tables = write_markdown(settings, runs, missing, stats, created, git, out / "results.md")
    payload = {
        "command": settings.command, "cwd": os.getcwd(), "created": created, "git": git,
        "description": describe(settings, runs), "settings": settings.as_dict(),
        "runs": [{"core": s.core, "seed": s.seed, "run_dir": str(s.run_dir), "num_timesteps": s.num_timesteps,
                  "n_envs": s.config.get("n_envs"), "train_eval_success_rate": s.metrics.get("success_rate"),
                  "wall_time_s": s.metrics.get("wall_time_s")} for s in runs],
        "missing": [{"core": s.core, "seed": s.seed, "run_dir": str(s.run_dir), "status": s.status} for s in missing],
        "success": stats["success"], "probability_of_improvement": stats["probability_of_improvement"],
        "evaluations": list(rows),
        "curves": {k: v for k, v in curves.items() if k != "objects"},
    }
    atomic_write_text(out / "results.json", json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n")
    plot_success(settings, runs, stats, out / "results.png")
    plot_curves(settings, runs, curves, out / "curves.png")
    return tables


# ==============================================================================================
# The study
# ==============================================================================================


def print_plan(settings: StudySettings, states: Sequence[RunState]) -> None:
    """``--dry-run``: what would be trained and evaluated."""
    counts = {status: [s for s in states if s.status == status] for status in ("complete", "resume", "new")}
    left = sum(max(settings.n_timesteps - s.num_timesteps, 0) for s in states if s.status != "complete")
    print(f"study plan: {settings.suite} suite, training on {settings.env_id}, everything under {settings.out}")
    print(f"  trainings: {len(states)} = cores {' '.join(settings.cores)} x seeds "
          f"{' '.join(map(str, settings.seeds))}, -n {settings.n_timesteps:,} steps each "
          f"({len(states) * settings.n_timesteps:,} in all), {settings.workers} at a time, {settings.threads} torch "
          f"thread(s) each")
    print(f"    complete (skipped): {len(counts['complete'])}; to resume: {len(counts['resume'])}; "
          f"to start: {len(counts['new'])}; steps left to train: {left:,}")
    for state in states:
        detail = {"complete": f"complete ({state.num_timesteps:,} steps)",
                  "resume": f"resume from step {state.num_timesteps:,}", "new": "start"}[state.status]
        print(f"    {state.core}/seed{state.seed}: {detail}  [{state.run_dir}]")
    cached = sum(1 for s in counts["complete"] if cached_rows(settings.cache_dir(s.core, s.seed), eval_key(settings, s)))
    print(f"  evaluations: {len(states)} runs x {len(settings.variants)} variants ({', '.join(settings.variants)}) x "
          f"{settings.episodes} episodes, sampled actions, seed {settings.eval_seed}; cached now: {cached}")
    print(f"  writes: {', '.join(str(settings.out / name) for name in OUTPUT_FILES)}")


def run_study(settings: StudySettings, say: Callable[[str], None] | None = None) -> int:
    """Train what is missing, evaluate what is not cached, write the results; the exit status."""
    say = say or (lambda message: None)
    states = [inspect_run(settings, core, seed) for core in settings.cores for seed in settings.seeds]
    pending = [s for s in states if s.status != "complete"]
    check_trainings(settings, pending)
    if settings.dry_run:
        print_plan(settings, states)
        return 0
    settings.out.mkdir(parents=True, exist_ok=True)
    if pending:
        say(f"study: {len(states) - len(pending)} of {len(states)} runs complete; training {len(pending)} "
            f"({sum(s.status == 'resume' for s in pending)} resumed), {settings.workers} at a time")
        code = train_runs(settings, pending)
        if code >= 128:
            say("study: interrupted; rerun the same command to resume")
            return code
        states = [inspect_run(settings, s.core, s.seed) for s in states]
    else:
        say(f"study: all {len(states)} runs complete")
    runs = [s for s in states if s.status == "complete"]
    missing = [s for s in states if s.status != "complete"]
    if missing:
        say(f"study: not complete, left out: {', '.join(f'{s.core}/seed{s.seed}' for s in missing)}")
    if not runs:
        raise CLIError("no run completed, nothing to evaluate (see the errors above)", exit_code=1)
    rows = evaluate_runs(settings, runs, say)
    say("study: statistics (rliable) and figures")
    stats = compute_statistics(settings, rows)
    curves = compute_curves(settings, runs)
    tables = write_outputs(settings, runs, missing, rows, stats, curves)
    print(f"\n{describe(settings, runs)}\n\n{tables}\n\nwritten: "
          f"{', '.join(str(settings.out / name) for name in OUTPUT_FILES)}", flush=True)
    return 1 if missing else 0


def _command(argv: Sequence[str]) -> str:
    """The command line as run (interpreter relative to the working directory when inside it)."""
    python = Path(sys.executable)
    try:
        python_text = str(python.relative_to(Path.cwd())) if python.is_relative_to(Path.cwd()) else "python"
    except ValueError:
        python_text = "python"
    return shlex.join([python_text, "benchmarks/study.py", *argv])


@main_guard(expected=(CLIError, AgentLoadError, EvaluationInputError))
def main(argv: Sequence[str] | None = None) -> int:
    """Run the study; see the module docstring for the exit status."""
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    settings = settings_from(build_parser().parse_args(argv), _command(argv))
    torch.set_num_threads(settings.threads)

    def say(message: str) -> None:
        if not settings.quiet:
            print(message, flush=True)

    return run_study(settings, say)


if __name__ == "__main__":
    # Run as a script: import this file as benchmarks.study, so the evaluation workers can import it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.study import main as _main

    sys.exit(_main())
