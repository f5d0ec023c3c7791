"""``train.py --optimize``: hyperparameter search with Optuna over the ordinary training runs.

One study searches RecurrentPPO's hyperparameters and the core's (RIM: units, top-k and unit size;
SRM: modules, tau and unit size; LSTM/GRU: hidden size) for one env and core:

- the sampler (:func:`sample_hyperparams`) proposes values keyed the way presets and
  ``--hyperparams`` spell them (``policy_kwargs.core_kwargs.k``); a key given with
  ``--hyperparams`` is pinned and not searched (that is also how the tests keep trials tiny);
- each trial is an ordinary training run (:class:`rimrl.experiments.options.TrainOptions`) in
  ``<log-folder>/optimize/<env>/<core>/trial<k>/``, with everything a run writes;
- the objective is the final evaluation on the train variant: its success rate, or its mean
  return for envs without a success signal; the study maximises it;
- every periodic evaluation is reported to the trial (:class:`PruningHook`, called by the trainer
  through ``TrainOptions.on_evaluation``); when the pruner says so the run stops there, keeps a
  checkpoint, and the trial is told ``PRUNED``;
- at the end the best trial's resolved hyperparameters are written as a preset YAML
  (``best_preset.yml``, usable as ``train.py --preset FILE``), every trial goes to
  ``trials.csv`` and a table is printed.

Execution uses Optuna's ask-and-tell interface: the driver asks the sampler for a batch of trials,
runs them, and tells the study their outcome. One trial at a time runs in this process (the
default, ``--workers 1``); with ``--workers N`` a batch of N trials runs in the sweep machinery's
process pool, or with ``--backend ray`` as Ray tasks (:mod:`rimrl.experiments.sweep`). Those workers report
their intermediate evaluations to the study through a shared storage (``--storage``; a journal
file in the study folder when none is given), since an in-memory study lives in one process only.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rimrl.experiments.errors import ExperimentInputError
from rimrl.experiments.io import env_dirname, one_line, read_yaml, write_yaml

__all__ = [
    "BEST_PRESET_FILE",
    "OPTUNA_MISSING",
    "SEARCH_FLAGS",
    "PruningHook",
    "check_search_flags",
    "import_optuna",
    "make_pruner",
    "make_sampler",
    "objective_value",
    "run_optimize",
    "sample_hyperparams",
    "study_dir",
    "write_best_preset",
]

OPTUNA_MISSING = "--optimize needs Optuna: pip install rimrl[optuna]  (or: pip install optuna)"
DEFAULT_N_TRIALS = 20
OPTIMIZE_DIR = "optimize"
BEST_PRESET_FILE = "best_preset.yml"
TRIALS_FILE = "trials.csv"
JOURNAL_FILE = "study.journal"


def import_optuna() -> Any:
    """``import optuna`` (quietened to warnings), or a :class:`~rimrl.experiments.errors.ExperimentInputError` telling how to install it."""
    try:
        import optuna
    except ImportError:
        raise ExperimentInputError(OPTUNA_MISSING) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ----------------------------------------------------------------------------------------------
# The search space
# ----------------------------------------------------------------------------------------------


def _pinned(key: str, fixed: Mapping[str, Any]) -> bool:
    """Whether ``--hyperparams`` already sets ``key`` (itself, or a mapping above it)."""
    return any(key == given or key.startswith(given + ".") for given in fixed)


def sample_hyperparams(trial: Any, core: str, n_envs: int, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Sample one trial's hyperparameters: ``{dotted key: value}``, ready for ``--hyperparams``.

    :param trial: an ``optuna.Trial``; parameter names are the hyperparameter keys (``unit_size``
        for the modular cores' per-unit hidden size, whose key is ``policy_kwargs.lstm_hidden_size``).
    :param n_envs: parallel envs, to keep ``batch_size <= n_steps * n_envs`` (one rollout).
    :param fixed: pinned values (``--hyperparams``): not sampled, and used where a sampled value
        depends on them (``n_steps`` for the batch size, ``num_units`` for ``k``).
    """
    fixed = dict(fixed or {})
    params: dict[str, Any] = {}

    def pick(key: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        if _pinned(key, fixed):
            return fixed.get(key)
        value = getattr(trial, f"suggest_{kind}")(key, *args, **kwargs)
        params[key] = value
        return value

    pick("learning_rate", "float", 1e-5, 2e-3, log=True)
    n_steps = pick("n_steps", "categorical", [32, 64, 128, 256])
    batch_size = pick("batch_size", "categorical", [64, 128, 256, 512])
    if "batch_size" in params and isinstance(n_steps, int):
        # A minibatch larger than the rollout is one rollout; the trial records the value used.
        params["batch_size"] = min(batch_size, n_steps * n_envs)
    pick("n_epochs", "categorical", [2, 4, 8])
    pick("gamma", "categorical", [0.95, 0.98, 0.99, 0.995, 0.999])
    pick("gae_lambda", "categorical", [0.9, 0.95, 0.98, 1.0])
    pick("ent_coef", "float", 1e-4, 5e-2, log=True)
    pick("clip_range", "categorical", [0.1, 0.2, 0.3])
    pick("max_grad_norm", "categorical", [0.3, 0.5, 1.0, 2.0])

    hidden = "policy_kwargs.lstm_hidden_size"
    if core in ("lstm", "gru"):
        pick(hidden, "categorical", [64, 128, 256])
    elif core in ("rim", "srm"):
        units_key = "policy_kwargs.core_kwargs." + ("num_units" if core == "rim" else "num_modules")
        units = pick(units_key, "categorical", [4, 6, 8])
        if core == "rim":
            # k depends on the number of units: Optuna's define-by-run space allows that.
            units_for_k = units if isinstance(units, int) else 6
            pick("policy_kwargs.core_kwargs.k", "int", 1, units_for_k)
        else:
            pick("policy_kwargs.core_kwargs.tau", "float", 0.5, 0.95)
        if not _pinned(hidden, fixed) and isinstance(units, int):
            params[hidden] = units * trial.suggest_categorical("unit_size", [16, 32, 48])
    return params


def objective_value(success_rate: float | None, mean_return: float | None) -> float | None:
    """The value the study maximises: the success rate, or the mean return where there is none."""
    value = success_rate if success_rate is not None else mean_return
    return None if value is None or not math.isfinite(value) else float(value)


def make_sampler(name: str, seed: int | None = None) -> Any:
    """``tpe`` (Optuna's default, with random startup trials) or ``random``."""
    optuna = import_optuna()
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ExperimentInputError(f"unknown sampler {name!r}; choose tpe or random")


def make_pruner(name: str, eval_freq: int = 0) -> Any:
    """``median``: stop a trial whose evaluation is below the median of the earlier trials' at that
    step, once 2 trials finished and from the second evaluation on (steps are env steps: the
    first evaluation, at a step below ``2 * eval_freq``, is too early to judge); ``none``: never."""
    optuna = import_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2 * eval_freq)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ExperimentInputError(f"unknown pruner {name!r}; choose median or none")


# ----------------------------------------------------------------------------------------------
# Storage and the pruning hook
# ----------------------------------------------------------------------------------------------


def open_storage(spec: str | None) -> Any:
    """An Optuna storage: ``None`` (in memory), an RDB URL (``sqlite:///study.db``) or a journal file path."""
    if not spec:
        return None
    optuna = import_optuna()
    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    from optuna.storages.journal import JournalFileBackend

    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(spec)))


class PruningHook:
    """``TrainOptions.on_evaluation`` for a search trial: report each evaluation, ask the pruner.

    Picklable (it travels to pool workers and Ray tasks): it holds the storage spec and the trial's
    id and loads the study where it runs. In this process, with an in-memory study, it holds the
    live trial instead (``trial``), which is dropped when pickled.
    """

    def __init__(self, study_name: str, trial_id: int, pruner: str, eval_freq: int, storage: str | None = None,
                 trial: Any = None) -> None:
        self.study_name, self.trial_id, self.pruner, self.storage = study_name, trial_id, pruner, storage
        self.eval_freq = eval_freq
        self._trial = trial

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_trial": None}

    def _get_trial(self) -> Any:
        if self._trial is None and self.storage:
            optuna = import_optuna()
            study = optuna.load_study(study_name=self.study_name, storage=open_storage(self.storage),
                                      pruner=make_pruner(self.pruner, self.eval_freq))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        return self._trial

    def __call__(self, steps: int, result: Any) -> str | None:
        """Report the evaluation at ``steps``; a message when the trial should stop there."""
        value = objective_value(result.success_rate, result.mean_return)
        trial = self._get_trial()
        if trial is None or value is None:
            return None
        trial.report(value, steps)
        if trial.should_prune():
            return f"pruned by the {self.pruner} pruner (evaluation {value:.3g})"
        return None


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


def study_dir(log_folder: str | Path, env: str, core: str) -> Path:
    """``<log_folder>/optimize/<env>/<core>``: the trial run directories and the study's files."""
    return Path(log_folder) / OPTIMIZE_DIR / env_dirname(env) / core


def write_best_preset(path: Path, study: Any) -> dict[str, Any] | None:
    """Write the best trial's resolved hyperparameters (its ``config.yml``'s, plus ``n_envs``) as a
    flat preset for its core; return them (``None`` when no trial completed)."""
    from optuna.trial import TrialState

    completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    if not completed:
        return None
    best = max(completed, key=lambda t: t.value)
    config = read_yaml(Path(best.user_attrs["run_dir"]) / "config.yml", what="best trial's config")
    preset = {"n_envs": config["n_envs"], **dict(config.get("hyperparams") or {})}
    header = (
        f"# Best of Optuna study {study.study_name!r}: trial {best.number}, objective {best.value:.4g}\n"
        f"# ({config['env']}, core {config['core']}, {config['n_timesteps']:,} steps; run {best.user_attrs['run_dir']}).\n"
        f"# A flat preset for the {config['core']} core: train.py --core {config['core']} --preset {path}\n"
    )
    write_yaml(path, preset)
    path.write_text(header + path.read_text())
    return preset


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "status": attrs.get("status", ""),
            "steps": attrs.get("num_timesteps"), "run_dir": attrs.get("run_dir", ""),
            "params": " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in attrs.get("hyperparams", t.params).items()),
        })
    return rows


def write_trials_csv(path: Path, study: Any) -> None:
    """Every trial of the study: number, state, objective, run status, steps, run dir, parameters."""
    rows = _trial_rows(study)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]) if rows else ["number"])
        writer.writeheader()
        writer.writerows(rows)


def print_study_summary(study: Any, file: Any = None) -> None:
    """A table of the trials (best first among the completed), as the sweep prints its runs."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stream = file or sys.stdout
    console = Console(file=stream, width=None if stream.isatty() else 160)
    rows = _trial_rows(study)
    rows.sort(key=lambda r: (r["value"] is None, -(r["value"] or 0.0), r["number"]))
    table = Table(title=f"study {study.study_name}: {len(rows)} trials")
    for column, justify in (("trial", "right"), ("state", "left"), ("objective", "right"), ("steps", "right"),
                            ("parameters", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    style = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}
    for r in rows:
        table.add_row(str(r["number"]), Text(r["state"].lower(), style=style.get(r["state"], "")),
                      "-" if r["value"] is None else f"{r['value']:.3g}",
                      "-" if r["steps"] is None else f"{r['steps']:,}", Text(r["params"]))
    console.print(table)


# ----------------------------------------------------------------------------------------------
# The driver
# ----------------------------------------------------------------------------------------------


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _tell(study: Any, trial: Any, result: Any) -> None:
    """Record a finished run in the study: its value, or PRUNED / FAIL."""
    from optuna.trial import TrialState

    for key, value in (("run_dir", result.run_dir), ("status", result.status), ("message", result.message),
                       ("num_timesteps", result.num_timesteps)):
        trial.set_user_attr(key, value)
    value = objective_value(result.success_rate, result.mean_return)
    if result.status == "completed" and value is not None:
        study.tell(trial, value)
    elif result.status == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


#: The flags (``args`` attributes) that only ``--optimize`` uses.
SEARCH_FLAGS = ("n_trials", "sampler", "pruner", "storage", "study_name")


def check_search_flags(args: Any) -> None:
    """Refuse search flags given without ``--optimize`` (they would be silently ignored)."""
    for flag in SEARCH_FLAGS:
        if getattr(args, flag, None) is not None:
            raise ExperimentInputError(f"--{flag.replace('_', '-')} needs --optimize")


def _check_args(args: Any, trials: Sequence[Any]) -> None:
    if len(trials) != 1:
        raise ExperimentInputError("--optimize searches one --env, --core and --seed at a time")
    if args.resume or getattr(args, "exp_id", None) is not None:
        raise ExperimentInputError("--optimize names its own run directories (trial<k>): --resume and --exp-id do not apply; "
                       "pass --storage to continue a study")
    if args.n_trials is not None and args.n_trials < 1:
        raise ExperimentInputError(f"--n-trials must be >= 1, got {args.n_trials}")
    if args.workers is not None and args.workers < 1:
        raise ExperimentInputError(f"--workers must be >= 1, got {args.workers}")


def _run_batches(study: Any, base: Any, args: Any, n_trials: int, n_envs: int, name: str,
                 storage_spec: str | None, backend: str, workers: int, parallel: bool) -> int | None:
    """Ask, run and tell ``n_trials`` trials, ``workers`` at a time; the signal that stopped them, if any."""
    from rimrl.experiments.sweep import run_local, run_ray, run_trial_safely

    signum: int | None = None
    done = 0
    while done < n_trials and signum is None:
        batch = []
        for _ in range(min(workers if parallel else 1, n_trials - done)):
            trial = study.ask()
            sampled = sample_hyperparams(trial, base.core, n_envs, base.hyperparams)
            trial.set_user_attr("hyperparams", sampled)  # the values used (batch_size capped, hidden size)
            hyperparams = {**base.hyperparams, **sampled}
            # The storage's id of the trial (Optuna has no public accessor; Trial(study, id) needs it).
            hook = PruningHook(name, trial._trial_id, args.pruner or "median", base.eval_freq, storage=storage_spec,
                               trial=None if parallel else trial)
            label = f"trial{trial.number}"
            options = dataclasses.replace(base, run_name=label, label=label, hyperparams=hyperparams,
                                          explicit=base.explicit | {"hyperparams"}, on_evaluation=hook)
            batch.append((trial, options))
        runs = [options for _, options in batch]
        if backend == "ray":
            results, signum = run_ray(runs, workers, args.ray_address)
        elif parallel:
            results, signum = run_local(runs, workers)
        else:
            results = [run_trial_safely(runs[0])]
            if results[0].status == "interrupted":
                signum = int(results[0].exit_code - 128) if results[0].exit_code > 128 else 2
        for (trial, _), result in zip(batch, results, strict=True):
            _tell(study, trial, result)
            value = objective_value(result.success_rate, result.mean_return)
            shown = "-" if value is None else f"{value:.3g}"
            print(f"optimize: trial {trial.number}: {result.status} (objective {shown})"
                  f"{f'; {result.message}' if result.message and result.status != 'completed' else ''}", flush=True)
        done += len(batch)

    return signum


def run_optimize(args: Any, trials: Sequence[Any]) -> int:
    """Run the study ``train.py --optimize`` describes; the exit status (0, or 128 + signal).

    :param args: the parsed flags (``n_trials``, ``sampler``, ``pruner``, ``storage``,
        ``study_name``, ``workers``, ``backend``, ``ray_address``).
    :param trials: :func:`rimrl.cli.train.build_trials`' single trial: the base of every trial.
    """
    from rimrl.agents import preset_n_envs
    from rimrl.experiments.sweep import import_ray
    from rimrl.experiments.validation import resolve_trial

    _check_args(args, trials)
    optuna = import_optuna()
    backend = args.backend or "local"
    if backend == "ray":
        import_ray()
    workers = args.workers or 1
    parallel = backend == "ray" or workers > 1
    base = trials[0]
    folder = study_dir(base.log_folder, base.env, base.core).resolve()
    name = args.study_name or f"{env_dirname(base.env)}-{base.core}"
    storage_spec = args.storage or (str(folder / JOURNAL_FILE) if parallel else None)
    if storage_spec and "://" not in storage_spec:
        storage_spec = str(Path(storage_spec).resolve())

    base = dataclasses.replace(base, log_folder=str((Path(base.log_folder) / OPTIMIZE_DIR).resolve()),
                               progress_bar=False, wandb_group=name)
    try:  # a bad env, preset or --hyperparams fails here, once, rather than in every trial
        resolve_trial(dataclasses.replace(base, run_name="trial-check", quiet=True))
        n_envs = base.n_envs or preset_n_envs(base.env, base.core, base.preset, base.hyperparams, base.allow_imports)
    except ValueError as error:
        raise ExperimentInputError(one_line(error)) from None

    study = optuna.create_study(study_name=name, storage=open_storage(storage_spec), direction="maximize",
                                sampler=make_sampler(args.sampler or "tpe", seed=base.seed),
                                pruner=make_pruner(args.pruner or "median", base.eval_freq), load_if_exists=True)
    known = len(study.trials)
    existing = sorted(p.name for p in folder.glob("trial*") if p.is_dir()) if folder.is_dir() else []
    if known == 0 and existing and not base.overwrite:
        raise ExperimentInputError(f"{folder} already holds trial directories ({', '.join(existing[:3])}...) of another study; "
                       "pass --overwrite to replace them, or the --storage that study used to continue it")
    n_trials = args.n_trials or DEFAULT_N_TRIALS
    where = (f"Ray ({args.ray_address or 'local instance'})" if backend == "ray"
             else f"{workers} local worker{'s' * (workers > 1)}" if parallel else "this process, one at a time")
    print(f"optimize: study {name!r} ({args.sampler or 'tpe'} sampler, {args.pruner or 'median'} pruner, "
          f"storage {storage_spec or 'in memory'}{f', {known} trials before' if known else ''}): "
          f"{n_trials} trials on {where} -> {_display_path(folder)}", flush=True)

    ray_started = False
    if backend == "ray":
        # One Ray instance for the whole study (run_ray would start and stop one per batch).
        ray = import_ray()
        if not ray.is_initialized():
            init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if args.ray_address:
                ray.init(address=args.ray_address, **init_kwargs)
            else:
                ray.init(num_cpus=workers, **init_kwargs)
            ray_started = True
    try:
        signum = _run_batches(study, base, args, n_trials, n_envs, name, storage_spec, backend, workers, parallel)
    finally:
        if ray_started:
            ray.shutdown()

    folder.mkdir(parents=True, exist_ok=True)
    write_trials_csv(folder / TRIALS_FILE, study)
    print_study_summary(study)
    best = write_best_preset(folder / BEST_PRESET_FILE, study)
    if best is None:
        print("optimize: no trial completed: no preset written", file=sys.stderr, flush=True)
    else:
        best_trial = study.best_trial
        shown = _display_path(folder / BEST_PRESET_FILE)
        print(f"optimize: best trial {best_trial.number} (objective {best_trial.value:.3g}) -> {shown}; "
              f"train with it: train.py --core {base.core} --preset {shown}", flush=True)
    if signum is not None:
        return 128 + signum
    return 0 if best is not None else 1
