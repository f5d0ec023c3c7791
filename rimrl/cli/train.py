"""``rimrl-train`` / ``python train.py``: train a RecurrentPPO agent with a modular core.

One run::

    python train.py --env rimrl/Pickup-Train-v0 --core rim -n 200000 --seed 0

writes ``runs/rimrl-Pickup-Train-v0/rim/seed0/`` (see ``docs/train.md`` for the layout and the
``config.yml`` schema). Several ``--env`` / ``--cores`` / ``--seeds`` values make a sweep, run by
:mod:`rimrl.cli.sweep` as separate trials (a local process pool or Ray tasks).

The pieces, top to bottom:

- :func:`build_parser` / :func:`main`: flags -> one :class:`TrainOptions` per trial;
- :func:`resolve_trial`: options (+ the saved ``config.yml`` on ``--resume``) -> a validated
  :class:`ResolvedTrial` (hyperparameters resolved by :func:`rimrl.agents.resolve_hyperparams`
  and type-checked against RecurrentPPO's, the policy's and the core's signatures);
- :class:`Trainer`: builds envs and the agent, runs ``learn`` with :class:`RunCallback`
  (atomic checkpoints, recurrent-aware periodic evaluation with success rate, best model,
  NaN guard, SIGINT/SIGTERM stop), then saves ``model.zip`` and ``final_metrics.json``.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import errno
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import VecEnv

from rimrl.agents.activity import CoreActivityCallback
from rimrl.agents.storage import (
    LOCK_FILES,
    DirectoryBusyError,
    directory_lock,
    has_content,
    writable_dir_problem,
)
from rimrl.agents.training import (
    CHECKPOINT_RE,
    STOP,
    CheckpointManager,
    EpisodeCSV,
    EvalHistory,
    EvalResult,
    NonFiniteError,
    divergence_reason,
    evaluate_recurrent,
    list_checkpoints,
    params_finite,
    save_model_atomic,
    stop_on_signals,
)
from rimrl.cli.common import (
    ArgumentParser,
    CLIError,
    env_dirname,
    git_info,
    main_guard,
    one_line,
    package_versions,
    parse_key_values,
    read_yaml,
    run_dir_for,
    to_yaml_safe,
    write_json,
    write_yaml,
)

__all__ = [
    "CORES",
    "DEFAULTS",
    "CheckpointManager",
    "EvalResult",
    "NonFiniteError",
    "ResolvedTrial",
    "RunCallback",
    "TrainOptions",
    "Trainer",
    "TrialResult",
    "build_parser",
    "build_trials",
    "evaluate_recurrent",
    "execute_trial",
    "main",
    "resolve_trial",
]

CORES = ("rim", "srm", "lstm", "gru")
VEC_ENVS = ("dummy", "subproc", "ale")

#: Defaults for the flags that a ``--config`` file may also set.
DEFAULTS: dict[str, Any] = {
    "envs": ["rimrl/Pickup-Train-v0"],
    "cores": ["rim"],
    "seeds": [0],
    "n_timesteps": 500_000,
    "n_envs": None,  # the preset's
    "vec_env": None,  # make_env's default: "ale" for Atari, "dummy" for MiniGrid
    "preset": None,  # configs/<family>.yml
    "hyperparams": {},
    "env_kwargs": {},
    "log_folder": "runs",
    "tensorboard": None,  # <run dir>/tb
    "eval_freq": 25_000,
    "eval_episodes": 20,
    "eval_deterministic": None,  # the env family's (rimrl.envs.default_deterministic)
    "eval_variants": [],
    "save_freq": 25_000,
    "keep_checkpoints": 5,
    "device": "auto",
    "threads": 1,
}

#: ``--config`` keys: the settable ones above (singular spellings too) plus the informational
#: keys a run's own ``config.yml`` carries, so that file can be passed back with ``--config``.
_CONFIG_ALIASES = {"env": "envs", "core": "cores", "seed": "seeds"}
_CONFIG_INFO_KEYS = {
    "overrides", "family", "command", "argv", "cwd", "created", "versions", "git", "sessions",
    "run_dir", "tensorboard_dir",
}

CONFIG_FILE = "config.yml"
MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
METRICS_FILE = "final_metrics.json"
EVALUATIONS_FILE = "evaluations.npz"


def variant_evaluations_file(variant: str) -> str:
    """``evaluations_<variant>.npz``: the periodic evaluations on another variant (``--eval-variants``)."""
    return f"evaluations_{variant}.npz"

MONITOR_DIR = "monitor"
TB_DIR = "tb"
TB_LOG_NAME = "RecurrentPPO"

#: Offsets so the evaluation env and resumed sessions never replay the training episodes.
EVAL_SEED_OFFSET = 1_000_003
SESSION_SEED_STRIDE = 10_007
#: Seconds between plain progress lines (when no progress bar is shown).
LOG_EVERY_S = 30.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class TrainOptions:
    """Everything one trial needs; picklable (sent to sweep workers and Ray tasks)."""

    env: str = DEFAULTS["envs"][0]
    core: str = DEFAULTS["cores"][0]
    seed: int = 0
    n_timesteps: int = DEFAULTS["n_timesteps"]
    n_envs: int | None = None
    vec_env: str | None = None
    preset: str | None = None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    log_folder: str = DEFAULTS["log_folder"]
    tensorboard: str | None = None
    eval_freq: int = DEFAULTS["eval_freq"]
    eval_episodes: int = DEFAULTS["eval_episodes"]
    #: None until :func:`resolve_trial` sets the env family's default (a bool from then on).
    eval_deterministic: bool | None = DEFAULTS["eval_deterministic"]
    eval_variants: list[str] = field(default_factory=list)
    save_freq: int = DEFAULTS["save_freq"]
    keep_checkpoints: int = DEFAULTS["keep_checkpoints"]
    device: str = DEFAULTS["device"]
    threads: int = DEFAULTS["threads"]
    resume: bool = False
    overwrite: bool = False
    allow_imports: bool = False  # policy_kwargs.*_class may import modules outside the allow-list
    quiet: bool = False
    progress_bar: bool | None = None  # None: when stdout is a terminal
    label: str = ""  # prefix of log lines (sweeps)
    argv: list[str] = field(default_factory=list)
    explicit: frozenset[str] = frozenset()  # fields given on the command line or in --config
    #: The run directory's last component instead of ``seed<k>``: ``seed<k>_<n>`` (``--exp-id``) or
    #: ``trial<k>`` (``--optimize``). Empty: ``seed<k>``.
    run_name: str = ""
    #: ``--track``: log the run to Weights & Biases (:mod:`rimrl.experiments.tracking`).
    track: bool = False
    wandb_project: str = "rimrl"
    wandb_entity: str | None = None
    wandb_group: str | None = None
    #: Called after each evaluation on the train variant with ``(steps, result)``; a non-empty
    #: string returned stops training there as ``pruned`` (that string is the message). Used by
    #: ``--optimize``'s pruner (:mod:`rimrl.experiments.search`); must be picklable for sweeps.
    on_evaluation: Any = None

    def dir_under(self, root: str | Path) -> Path:
        """``<root>/<env>/<core>/<seed<k> or run_name>``."""
        if self.run_name:
            return Path(root) / env_dirname(self.env) / self.core / self.run_name
        return run_dir_for(root, self.env, self.core, self.seed)

    @property
    def run_dir(self) -> Path:
        """``<log_folder>/<env>/<core>/seed<k>`` (or ``.../<run_name>``)."""
        return self.dir_under(self.log_folder)

    @property
    def name(self) -> str:
        """``<env>/<core>/seed<k>`` (the run directory below the log folder)."""
        return f"{env_dirname(self.env)}/{self.core}/{self.run_name or f'seed{self.seed}'}"


@dataclass
class TrialResult:
    """What a trial reports back (the sweep summary's rows)."""

    env: str
    core: str
    seed: int
    run_dir: str
    status: str  # completed | skipped | interrupted | pruned | nan | invalid | failed | cancelled
    exit_code: int
    num_timesteps: int | None = None
    success_rate: float | None = None
    mean_return: float | None = None
    wall_time_s: float | None = None
    message: str = ""


# ==============================================================================================
# Command line
# ==============================================================================================


def _int_arg(text: str) -> int:
    """``"100000"``, ``"100_000"``, ``"1e5"`` -> 100000."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise ValueError(f"not an integer: {text!r}") from None
    if not value.is_integer():
        raise ValueError(f"not an integer: {text!r}")
    return int(value)


_int_arg.__name__ = "int"


def build_parser() -> ArgumentParser:
    """The ``rimrl-train`` argument parser (errors are one ``error:`` line, exit 2)."""
    parser = ArgumentParser(
        prog="rimrl-train",
        description="Train RecurrentPPO with a RIM / SRM / LSTM / GRU core. Several --env, --cores or "
        "--seeds values run a sweep (one trial each). See docs/train.md.",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--env", dest="envs", nargs="+", action="extend", metavar="ENV",
                      help="suite id (rimrl/Pickup-Train-v0), MiniGrid/BabyAI id, or Atari game (Breakout, "
                      "ALE/Breakout-v5); several make a sweep [default: rimrl/Pickup-Train-v0]")
    what.add_argument("--core", "--cores", dest="cores", nargs="+", action="extend", choices=CORES,
                      metavar="CORE", help=f"recurrent core(s): {', '.join(CORES)} [default: rim]")
    what.add_argument("--seed", "--seeds", dest="seeds", nargs="+", action="extend", type=_int_arg,
                      metavar="SEED", help="seed(s) [default: 0]")
    what.add_argument("-n", "--n-timesteps", type=_int_arg, metavar="N",
                      help=f"total env steps (training stops at the first rollout boundary >= N) "
                      f"[default: {DEFAULTS['n_timesteps']:_}]")
    what.add_argument("--n-envs", type=_int_arg, metavar="N", help="parallel envs [default: the preset's]")
    what.add_argument("--vec-env", choices=VEC_ENVS,
                      help="dummy | subproc (SB3) | ale (Atari, C++ vector env) [default: ale for Atari, dummy else]")
    hyper = parser.add_argument_group("hyperparameters")
    hyper.add_argument("--preset", metavar="NAME|FILE",
                       help="preset name under configs/ or a preset YAML [default: configs/<family>.yml]")
    hyper.add_argument("--config", metavar="FILE.yml",
                       help="experiment file with any of this CLI's settings (a run's config.yml works); "
                       "flags override it")
    hyper.add_argument("--hyperparams", nargs="+", action="extend", metavar="KEY=VALUE", default=None,
                       help="overrides, values typed by YAML: n_steps=64 learning_rate=lin_3e-4 "
                       "policy_kwargs.core_kwargs.k=3")
    what.add_argument("--env-kwargs", nargs="+", action="extend", metavar="KEY=VALUE", default=None,
                      help="extra make_env arguments, YAML-typed (Atari: frame_stack=4 ...)")
    out = parser.add_argument_group("output")
    out.add_argument("-f", "--log-folder", metavar="DIR", help="root of the run directories [default: runs]")
    out.add_argument("-tb", "--tensorboard", nargs="?", const="", metavar="DIR",
                     help="TensorBoard events are always written to <run>/tb; with DIR, to "
                     "DIR/<env>/<core>/seed<k> instead")
    out.add_argument("--eval-freq", type=_int_arg, metavar="STEPS",
                     help=f"evaluate every STEPS env steps, 0 = only at the end [default: {DEFAULTS['eval_freq']:_}]")
    out.add_argument("--eval-episodes", type=_int_arg, metavar="N",
                     help=f"episodes per evaluation [default: {DEFAULTS['eval_episodes']}]")
    mode = out.add_mutually_exclusive_group()
    mode.add_argument("--deterministic", "--deterministic-eval", dest="eval_deterministic", action="store_const",
                      const=True, default=None, help="evaluate (and pick best_model.zip) with greedy actions "
                      "[default: sampled for MiniGrid/BabyAI/rimrl suites and Atari, greedy otherwise]")
    mode.add_argument("--stochastic", dest="eval_deterministic", action="store_const", const=False,
                      help="evaluate with actions sampled from the policy")
    out.add_argument("--eval-variants", nargs="+", metavar="VARIANT",
                     help="also evaluate, at every evaluation, on these variants of the training env's "
                     "distractor suite (more novel more+novel, or all): evaluations_<variant>.npz and "
                     "TensorBoard eval_<variant>/* [default: none]")
    out.add_argument("--save-freq", type=_int_arg, metavar="STEPS",
                     help=f"checkpoint every STEPS env steps, 0 = only at the end/on a signal "
                     f"[default: {DEFAULTS['save_freq']:_}]")
    out.add_argument("--keep-checkpoints", type=_int_arg, metavar="N",
                     help=f"checkpoints kept, 0 = all [default: {DEFAULTS['keep_checkpoints']}]")
    run = parser.add_argument_group("run control")
    run.add_argument("--resume", action="store_true", help="continue the run(s) from the latest checkpoint")
    run.add_argument("--overwrite", action="store_true", help="delete existing run directories first")
    run.add_argument("--exp-id", metavar="N|auto",
                     help="experiment number: the run directory is seed<k>_<N> (1 is plain seed<k>); auto = "
                     "the next unused one (with --resume: the latest one) [default: 1, and an existing run "
                     "directory is refused unless --resume or --overwrite]")
    run.add_argument("--allow-imports", action="store_true",
                     help="let policy_kwargs.*_class import modules outside torch.nn, torch.optim, "
                     "stable_baselines3, sb3_contrib and rimrl (importing runs their code)")
    run.add_argument("--device", help="torch device: auto | cpu | cuda[:i] [default: auto]")
    run.add_argument("--threads", type=_int_arg, metavar="N", help="torch threads per trial [default: 1]")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    track = parser.add_argument_group("tracking (docs/train.md#tracking)")
    track.add_argument("--track", action="store_true",
                       help="log the run(s) to Weights & Biases (pip install rimrl[track]; WANDB_MODE=offline "
                       "works without network): TensorBoard synced, config.yml as the config, run name = "
                       "run directory")
    track.add_argument("--wandb-project", metavar="NAME", help="W&B project [default: rimrl]")
    track.add_argument("--wandb-entity", metavar="NAME", help="W&B entity (team or user) [default: W&B's]")
    search = parser.add_argument_group("hyperparameter search (docs/train.md#hyperparameter-search)")
    search.add_argument("--optimize", action="store_true",
                        help="search RecurrentPPO's and the core's hyperparameters with Optuna (pip install "
                        "rimrl[optuna]) for one --env and --core; trials run in <log-folder>/optimize/<env>/"
                        "<core>/trial<k>; the best is written as a preset YAML")
    search.add_argument("--n-trials", type=_int_arg, metavar="N", help="trials to run [default: 20]")
    search.add_argument("--sampler", choices=("tpe", "random"), help="Optuna sampler [default: tpe]")
    search.add_argument("--pruner", choices=("median", "none"),
                        help="stop trials whose intermediate evaluations fall below the median [default: median]")
    search.add_argument("--storage", metavar="URL|FILE",
                        help="Optuna storage: sqlite:///study.db (any RDB URL) or a journal FILE; a study "
                        "there is continued [default: in memory; a journal file under the study folder "
                        "when trials run in several processes]")
    search.add_argument("--study-name", metavar="NAME", help="Optuna study name [default: <env>-<core>]")
    sweep = parser.add_argument_group("sweeps")
    sweep.add_argument("--backend", choices=("local", "ray"),
                       help="run trials in a local process pool or as Ray tasks [default: local]")
    sweep.add_argument("--workers", type=_int_arg, metavar="N",
                       help="trials run at once (local: processes; ray: CPUs of a new local instance) "
                       "[default: min(trials, CPUs)]")
    sweep.add_argument("--ray-address", metavar="ADDR", help="connect to a running Ray cluster (e.g. auto)")
    return parser


def _config_file_values(path: str) -> dict[str, Any]:
    """The settings in a ``--config`` file, keyed like :data:`DEFAULTS`."""
    data = read_yaml(path, what="--config file")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _CONFIG_INFO_KEYS:
            continue
        target = _CONFIG_ALIASES.get(key, key)
        if target not in DEFAULTS:
            allowed = sorted(set(DEFAULTS) | set(_CONFIG_ALIASES))
            raise CLIError(f"unknown key {key!r} in --config file {path!r}; allowed keys: {', '.join(allowed)}")
        if target in ("envs", "cores", "seeds") and not isinstance(value, list):
            value = [value]
        if target in ("hyperparams", "env_kwargs") and not isinstance(value, Mapping):
            raise CLIError(f"{key!r} in --config file {path!r} must be a mapping")
        values[target] = value
    return values


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CLIError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _validate_settings(settings: dict[str, Any]) -> None:
    for core in settings["cores"]:
        if core not in CORES:
            raise CLIError(f"unknown core {core!r}; choose from {', '.join(CORES)}")
    for seed in settings["seeds"]:
        _check_int("seed", seed, 0)
    _check_int("n_timesteps", settings["n_timesteps"], 1)
    if settings["n_envs"] is not None:
        _check_int("n_envs", settings["n_envs"], 1)
    if settings["vec_env"] is not None and settings["vec_env"] not in VEC_ENVS:
        raise CLIError(f"vec_env must be one of {', '.join(VEC_ENVS)}, got {settings['vec_env']!r}")
    for name, minimum in (("eval_freq", 0), ("eval_episodes", 1), ("save_freq", 0), ("keep_checkpoints", 0),
                          ("threads", 1)):
        _check_int(name, settings[name], minimum)
    mode = settings["eval_deterministic"]
    if mode is not None and not isinstance(mode, bool):  # "false" in YAML is a string: truthy
        raise CLIError(f"eval_deterministic must be true or false (a YAML boolean), or null for the env's "
                       f"default, got "
                       f"{settings['eval_deterministic']!r}")
    for name in ("log_folder", "preset", "tensorboard"):
        if settings[name] is not None and not isinstance(settings[name], str):
            raise CLIError(f"{name} must be a string, got {settings[name]!r}")
    if not isinstance(settings["device"], str):
        raise CLIError(f"device must be a string, got {settings['device']!r}")
    check_device(settings["device"])
    for env in settings["envs"]:
        if not isinstance(env, str) or not env:
            raise CLIError(f"env must be a non-empty string, got {env!r}")
    variants = settings["eval_variants"]
    if not isinstance(variants, list) or not all(isinstance(v, str) and v for v in variants):
        raise CLIError(f"eval_variants must be a list of variant names, got {variants!r}")


def build_trials(args: Any, argv: Sequence[str]) -> list[TrainOptions]:
    """Parsed flags (+ ``--config``) -> one :class:`TrainOptions` per (env, core, seed), grid order."""
    file_values = _config_file_values(args.config) if args.config else {}
    cli_values = {key: getattr(args, key, None) for key in DEFAULTS}
    cli_hyperparams = parse_key_values(args.hyperparams or [])
    cli_env_kwargs = parse_key_values(args.env_kwargs or [], what="--env-kwargs")
    settings: dict[str, Any] = {}
    explicit: set[str] = set()
    for key, default in DEFAULTS.items():
        if key not in ("hyperparams", "env_kwargs") and cli_values.get(key) is not None:
            settings[key] = cli_values[key]
            explicit.add(key)
        elif key in file_values:
            settings[key] = file_values[key]
            explicit.add(key)
        else:
            settings[key] = default
    for key, cli in (("hyperparams", cli_hyperparams), ("env_kwargs", cli_env_kwargs)):
        settings[key] = {**dict(file_values.get(key) or {}), **cli}
        if settings[key]:
            explicit.add(key)
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")
    _validate_settings(settings)
    if settings["tensorboard"] == "":
        settings["tensorboard"] = None

    def unique(values: list[Any]) -> list[Any]:
        return list(dict.fromkeys(values))

    envs, cores, seeds = unique(settings["envs"]), unique(settings["cores"]), unique(settings["seeds"])
    grid = len(envs) * len(cores) * len(seeds) > 1
    names = {"envs", "cores", "seeds"}
    common = {k: v for k, v in settings.items() if k not in names}
    explicit_fields = frozenset(explicit - names)  # TrainOptions field names
    trials = []
    for env in envs:
        for core in cores:
            for seed in seeds:
                options = TrainOptions(
                    env=env, core=core, seed=seed, resume=args.resume, overwrite=args.overwrite,
                    allow_imports=args.allow_imports, quiet=args.quiet, argv=list(argv), explicit=explicit_fields, **common,
                    track=bool(getattr(args, "track", False)),
                    wandb_project=getattr(args, "wandb_project", None) or "rimrl",
                    wandb_entity=getattr(args, "wandb_entity", None),
                )
                if getattr(args, "exp_id", None) is not None:
                    from rimrl.experiments.naming import resolve_exp_id

                    options.run_name = resolve_exp_id(options.run_dir.parent, seed, args.exp_id,
                                                      latest=args.resume or args.overwrite)
                if grid:
                    options.label = options.name
                trials.append(options)
    return trials


# ==============================================================================================
# Resolution and validation
# ==============================================================================================


@dataclass
class ResolvedTrial:
    """A validated trial: resolved hyperparameters, its family, the resume source if any."""

    options: TrainOptions
    family: str
    params: dict[str, Any]  # resolve_hyperparams' result without n_envs (objects, not YAML)
    n_envs: int
    vec_env: str
    preset_for_agent: str | dict[str, Any] | None  # what make_agent gets as preset
    overrides: dict[str, Any]  # what make_agent gets as overrides
    saved_config: dict[str, Any] | None = None  # the run's config.yml on --resume
    resume_from: Path | None = None  # the checkpoint to continue from
    variant_envs: dict[str, str] = field(default_factory=dict)  # --eval-variants: variant -> env id

    @property
    def run_dir(self) -> Path:
        return self.options.run_dir


def _describe_type(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe_type(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) is collections.abc.Callable:
        return "a schedule ('lin_<x>')"
    if typing.get_origin(hint) is not None:
        return getattr(typing.get_origin(hint), "__name__", str(hint))
    return getattr(hint, "__name__", str(hint))


def _matches(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (plain types, unions, containers; lenient elsewhere)."""
    if hint is Any or hint is None:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, Mapping)
    if origin in (list, collections.abc.Sequence):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not args or all(_matches(args[0], v) for v in value))
    if origin is collections.abc.Callable:
        return callable(value)
    if origin is type:
        return isinstance(value, type)
    return True


def check_hyperparam_types(params: Mapping[str, Any], core: str) -> None:
    """Raise :class:`CLIError` if a resolved hyperparameter has the wrong type for RecurrentPPO,
    the policy or the core (e.g. ``n_steps=abc``, ``policy_kwargs.core_kwargs.k=2.5``)."""
    from sb3_contrib import RecurrentPPO

    from rimrl.cores import CORES as CORE_CLASSES
    from rimrl.policies.modular import ModularRecurrentPolicy

    def check(hints: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> None:
        for key, value in values.items():
            hint = hints.get(key)
            if hint is not None and not _matches(hint, value):
                raise CLIError(
                    f"hyperparameter {prefix}{key}={to_yaml_safe(value)!r} has the wrong type: expected "
                    f"{_describe_type(hint)}"
                )

    algo_hints = typing.get_type_hints(RecurrentPPO.__init__)
    check(algo_hints, {k: v for k, v in params.items() if k not in ("policy_kwargs", "n_envs")}, "")
    policy_kwargs = params.get("policy_kwargs") or {}
    policy_hints = typing.get_type_hints(ModularRecurrentPolicy.__init__)
    check(policy_hints, {k: v for k, v in policy_kwargs.items() if k != "core_kwargs"}, "policy_kwargs.")
    core_kwargs = policy_kwargs.get("core_kwargs") or {}
    if core in CORE_CLASSES:
        check(typing.get_type_hints(CORE_CLASSES[core].__init__), core_kwargs, "policy_kwargs.core_kwargs.")


#: Ranges of RecurrentPPO's numeric hyperparameters: name -> (low, high, low inclusive, high inclusive).
_HYPERPARAM_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "n_steps": (1, math.inf, True, False),
    "batch_size": (1, math.inf, True, False),
    "n_epochs": (1, math.inf, True, False),
    "learning_rate": (0, math.inf, False, False),
    "gamma": (0, 1, True, True),
    "gae_lambda": (0, 1, True, True),
    "clip_range": (0, math.inf, False, False),
    "clip_range_vf": (0, math.inf, False, False),
    "vf_coef": (0, math.inf, True, False),
    "ent_coef": (0, math.inf, True, False),
    "max_grad_norm": (0, math.inf, False, False),
    "target_kl": (0, math.inf, False, False),
}


def check_hyperparam_ranges(params: Mapping[str, Any]) -> None:
    """Raise :class:`CLIError` if a resolved RecurrentPPO hyperparameter is out of its range
    (``n_steps=0``, ``gamma=1.5``, ``clip_range=-0.2``, a NaN ...), before anything is created:
    SB3 accepts most of these and fails much later, or trains on nonsense."""
    for name, (low, high, low_in, high_in) in _HYPERPARAM_RANGES.items():
        value = params.get(name)
        if value is None:
            continue
        number = getattr(value, "initial", value)  # a lin_<x> schedule: its starting value
        if callable(number) or isinstance(number, bool) or not isinstance(number, (int, float)):
            continue  # a custom schedule: only its type was checked
        inside = (number >= low if low_in else number > low) and (number <= high if high_in else number < high)
        if not (inside and math.isfinite(number)):
            bounds = f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"
            raise CLIError(f"hyperparameter {name}={to_yaml_safe(value)!r} is out of range: expected a finite "
                           f"value in {bounds}")
    n_steps, n_envs = params.get("n_steps"), params.get("n_envs")
    if isinstance(n_steps, int) and isinstance(n_envs, int) and n_steps * n_envs < 2:
        raise CLIError(f"n_steps * n_envs must be > 1 (RecurrentPPO's advantage normalisation), got "
                       f"{n_steps} * {n_envs}")


def check_device(device: str) -> None:
    """Raise :class:`CLIError` for a device torch does not know, or CUDA on a machine without it
    (SB3 would silently fall back to the CPU)."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CLIError(f"unknown --device {device!r}; use auto, cpu or cuda[:i]") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu or auto")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise CLIError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type not in ("cpu", "mps"):
        raise CLIError(f"--device {device!r} is not supported; use auto, cpu or cuda[:i]")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device {device!r}: MPS is not available on this machine; use --device cpu or auto")


def _check_run_dir(options: TrainOptions) -> None:
    run_dir = options.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise CLIError(f"run directory {str(run_dir)!r} exists and is not a directory")
    if options.resume or options.overwrite:
        return
    if has_content(run_dir):
        raise CLIError(
            f"run directory {str(run_dir)!r} already exists; pass --resume to continue it or --overwrite "
            f"to replace it"
        )


#: On ``--resume`` these stay as the run saved them (they define the experiment) ...
_RESUME_KEPT = ("n_envs", "vec_env", "preset", "eval_deterministic", "env_kwargs")
#: ... and these follow the command line when given there, else the saved value.
_RESUME_UPDATABLE = ("n_timesteps", "eval_freq", "eval_episodes", "eval_variants", "save_freq", "keep_checkpoints",
                     "tensorboard", "device")


def _resume_settings(options: TrainOptions, saved: Mapping[str, Any], say: Any) -> TrainOptions:
    """Options for continuing a run: its saved settings; ``n_timesteps``, the eval/checkpoint cadence
    and the device may change on the command line (e.g. ``--resume -n 2000000`` extends a run)."""
    updated = dataclasses.replace(options)
    for key in _RESUME_KEPT:
        if key not in saved:
            continue
        given = getattr(options, key)
        if key in options.explicit and given is not None and given != saved[key]:  # None: "the default"
            say(f"note: --resume keeps the run's {key}={saved[key]!r} (ignoring {given!r})")
        setattr(updated, key, saved[key])
    if "hyperparams" in options.explicit:
        say("note: --resume keeps the run's saved hyperparameters (ignoring --hyperparams / --config ones)")
    for key in _RESUME_UPDATABLE:
        if key in saved and key not in options.explicit:
            setattr(updated, key, saved[key])
    return updated


def resolve_trial(options: TrainOptions, say: Any = None) -> ResolvedTrial:
    """Validate one trial without touching the disk: env id, hyperparameters (keys and types),
    the run directory's state and, on ``--resume``, the saved config and the checkpoint to load.

    :raises CLIError: any bad input (the message is one line).
    """
    from rimrl.agents import resolve_hyperparams
    from rimrl.envs import env_family

    say = say or (lambda message: None)
    if options.core not in CORES:
        raise CLIError(f"unknown core {options.core!r}; choose from {', '.join(CORES)}")
    try:
        family = env_family(options.env)
    except ValueError as error:
        raise CLIError(one_line(error)) from None

    saved: dict[str, Any] | None = None
    resume_from: Path | None = None
    config_path = options.run_dir / CONFIG_FILE
    if options.resume and config_path.is_file():
        saved = read_yaml(config_path, what="saved run config")
        for key in ("env", "core", "seed"):
            if key in saved and saved[key] != getattr(options, key):
                raise CLIError(f"{config_path} is for {key}={saved[key]!r}, not {getattr(options, key)!r}")
        options = _resume_settings(options, saved, say)
        checkpoints = list_checkpoints(options.run_dir)
        resume_from = checkpoints[0][1] if checkpoints else None
    elif options.resume and list_checkpoints(options.run_dir):
        raise CLIError(f"cannot resume {str(options.run_dir)!r}: it has checkpoints but no {CONFIG_FILE}")

    if saved is not None:
        # The saved hyperparameters are complete: use them as a flat preset (no preset file re-read).
        preset_for_agent: str | dict[str, Any] | None = dict(saved.get("hyperparams") or {})
        overrides: dict[str, Any] = {}
    else:
        preset_for_agent = options.preset
        overrides = dict(options.hyperparams)
    if options.n_envs is not None:
        overrides["n_envs"] = options.n_envs
    try:
        params = resolve_hyperparams(options.env, options.core, preset=preset_for_agent, overrides=overrides,
                                     allow_imports=options.allow_imports)
    except ValueError as error:
        raise CLIError(one_line(error)) from None
    check_hyperparam_types(params, options.core)
    check_hyperparam_ranges(params)
    n_envs = int(params.pop("n_envs", 8))

    if options.eval_deterministic is None:  # no flag, no --config value, not kept from a resumed run
        from rimrl.envs import default_deterministic

        options = dataclasses.replace(options, eval_deterministic=default_deterministic(options.env))
    vec_env = options.vec_env or ("ale" if family == "atari" else "dummy")
    if vec_env == "ale" and family != "atari":
        raise CLIError(f"--vec-env ale is only for Atari games, not {options.env!r}; use dummy or subproc")
    variant_envs = resolve_eval_variants(options.env, options.eval_variants)
    _check_run_dir(options)
    for folder, what in ((options.run_dir, "run directory"), (options.tensorboard, "--tensorboard folder")):
        problem = writable_dir_problem(folder) if folder else None
        if problem is not None:
            raise CLIError(f"cannot write the {what}: {problem}")
    return ResolvedTrial(
        options=options, family=family, params=params, n_envs=n_envs, vec_env=vec_env, variant_envs=variant_envs,
        preset_for_agent=preset_for_agent, overrides=overrides, saved_config=saved, resume_from=resume_from,
    )


# ==============================================================================================
# Envs
# ==============================================================================================


@contextlib.contextmanager
def _sigint_ignored(active: bool) -> Iterator[None]:
    """Ignore SIGINT while starting subprocess envs, so a Ctrl-C reaches only the trainer (which
    checkpoints and then closes the workers) instead of killing the workers mid-step."""
    if not active or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def make_train_env(trial: ResolvedTrial, session: int) -> Any:
    """The training ``VecEnv``: ``make_env`` + one monitor CSV per session under ``<run>/monitor/``."""
    from rimrl.envs import make_env

    options = trial.options
    seed = options.seed + SESSION_SEED_STRIDE * session
    try:
        with _sigint_ignored(trial.vec_env == "subproc"):
            venv = make_env(options.env, n_envs=trial.n_envs, seed=seed, vec_env=trial.vec_env, **options.env_kwargs)
    except Exception as error:  # bad --env-kwargs end in asserts deep in gymnasium/minigrid too
        given = f" (with --env-kwargs {to_yaml_safe(options.env_kwargs)})" if options.env_kwargs else ""
        raise CLIError(f"cannot make {options.env!r}{given}: {type(error).__name__} {one_line(error)}".rstrip()) from None
    monitor_dir = options.run_dir / MONITOR_DIR
    monitor_dir.mkdir(parents=True, exist_ok=True)
    return EpisodeCSV(venv, str(monitor_dir / f"session{session}"), options.env, trial.family == "minigrid")


def resolve_eval_variants(env_id: str, variants: Sequence[str]) -> dict[str, str]:
    """``--eval-variants`` -> ``{variant: env id}`` in the suite of ``env_id`` (``all``: every variant
    but the training one); :class:`CLIError` for an env outside the suites or an unknown variant."""
    from rimrl.envs import DISTRACTOR_SUITES, suite_of

    if not variants:
        return {}
    found = suite_of(env_id)
    if found is None:
        raise CLIError(f"--eval-variants needs a distractor-suite env (e.g. rimrl/Pickup-Train-v0), not {env_id!r}")
    suite, trained = found
    members = DISTRACTOR_SUITES[suite]
    names = [v for v in members if v != trained] if list(variants) == ["all"] else list(variants)
    for name in names:
        if name not in members:
            raise CLIError(f"unknown variant {name!r} for --eval-variants; the {suite} suite has {', '.join(members)}")
    return {name: members[name] for name in dict.fromkeys(names)}


def make_eval_env(trial: ResolvedTrial, env_id: str | None = None) -> Any:
    """An evaluation ``VecEnv`` (the train variant, or ``env_id``): at most ``eval_episodes`` envs, in-process.

    Built with evaluate.py's env arguments (:func:`rimrl.evaluation.environments.eval_env_kwargs`),
    so the episodes that pick ``best_model.zip`` are played as evaluate.py plays them (Atari:
    whole games, FIRE after a life loss, the same frame cap).
    """
    from rimrl.envs import make_env
    from rimrl.evaluation.environments import eval_env_kwargs

    env_id = trial.options.env if env_id is None else env_id
    n_envs = max(1, min(trial.options.eval_episodes, trial.n_envs))
    vec_env = "ale" if trial.vec_env == "ale" else "dummy"
    kwargs = eval_env_kwargs(env_id, None, trial.options.env_kwargs)
    try:
        return make_env(env_id, n_envs=n_envs, seed=trial.options.seed + EVAL_SEED_OFFSET, vec_env=vec_env, **kwargs)
    except Exception as error:
        raise CLIError(f"cannot make the evaluation env {env_id!r}: {type(error).__name__} {one_line(error)}".rstrip()) from None


# ==============================================================================================
# The training callback
# ==============================================================================================


class _Printer:
    """Log lines (to stdout, flushed), prefixed with the trial label; silent when quiet."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.prefix = f"[{label}] " if label else ""
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"{self.prefix}{message}", flush=True)

    def warn(self, message: str) -> None:
        """``warning: ...`` on stderr, even when quiet (something the user must know)."""
        print(f"{self.prefix}warning: {message}", file=sys.stderr, flush=True)


def _fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _write_scalars_at(logger: Any, scalars: Mapping[str, float], step: int) -> None:
    """Write ``scalars`` through the SB3 ``logger``'s writers (TensorBoard, ...) at ``step`` now.

    An evaluation runs between rollouts; recorded the usual way, its values would wait for SB3's
    next dump, one rollout later (``evaluations.npz`` at 1024, TensorBoard at 2048). SB3's
    ``EvalCallback`` calls ``logger.dump(step)`` instead, but that would also flush the last
    update's pending ``train/*`` values at this step rather than at the next rollout's, so the
    ``train/*`` curves would change their step convention at every evaluation. Writing only these
    keys leaves the pending values to SB3's own dump.
    """
    from stable_baselines3.common.logger import KVWriter

    if not scalars:
        return
    values = dict(scalars)
    excluded: dict[str, tuple[str, ...] | None] = {key: None for key in values}
    for writer in logger.output_formats:
        if isinstance(writer, KVWriter):
            writer.write(values, excluded, step)


def _logger_of(model: Any) -> Any:
    """The model's SB3 logger, or ``None`` when ``learn`` never ran in this process (a resume at -n)."""
    return getattr(model, "_logger", None)


class RunCallback(BaseCallback):
    """Checkpoints, periodic evaluation, NaN guard, graceful stop and log lines for one run.

    Everything happens between rollouts, in ``_on_rollout_start``: at that point the parameters
    have been updated on every collected step, so a checkpoint or an evaluation at
    ``num_timesteps`` is exact. ``_on_step`` only stops collection once a signal arrived.

    :param trainer: the owning :class:`Trainer` (eval env, history, checkpoints, printer).
    """

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(verbose=0)
        self.trainer = trainer
        self.aborted = False  # collection stopped early (the partial rollout is not trained on)
        self.safe_timesteps = 0  # num_timesteps up to which the parameters are trained
        self._next_save = self._next_eval = 0
        self._last_line = 0.0
        self._t0 = 0.0
        self._steps0 = 0

    # --- thresholds on a fixed grid (multiples of the frequency), stable across resumes --------
    @staticmethod
    def _next_multiple(value: int, every: int) -> int:
        return (value // every + 1) * every if every > 0 else sys.maxsize

    def _on_training_start(self) -> None:
        options = self.trainer.trial.options
        steps = int(self.model.num_timesteps)
        self.safe_timesteps = steps
        self._next_save = self._next_multiple(steps, options.save_freq)
        self._next_eval = self._next_multiple(steps, options.eval_freq)
        self._t0, self._steps0 = time.time(), steps
        self._last_line = self._t0
        from rimrl.experiments.tracking import log_hparams

        log_hparams(self.logger, self.trainer.trial, steps)

    def _on_step(self) -> bool:
        if STOP.signum is not None:
            self.aborted = True
            return False
        return not self.aborted

    def _on_rollout_start(self) -> None:
        model = self.model
        self.trainer.check_finite(model, where=f"after the update at step {model.num_timesteps}")
        steps = int(model.num_timesteps)
        self.safe_timesteps = steps
        options = self.trainer.trial.options
        if steps >= self._next_save:
            self.trainer.checkpoint(model)
            self._next_save = self._next_multiple(steps, options.save_freq)
        if steps >= self._next_eval:
            self.trainer.evaluate(model, steps)
            self._next_eval = self._next_multiple(steps, options.eval_freq)
            if self.trainer.stop_reason:  # options.on_evaluation asked to stop (a pruned search trial)
                self.aborted = True
        if not self.trainer.show_progress_bar and time.time() - self._last_line >= LOG_EVERY_S:
            self._print_progress(steps)

    def _on_rollout_end(self) -> None:
        buffer = self.model.ep_info_buffer or []
        successes = [float(ep["success"]) for ep in buffer if "success" in ep]
        if successes:
            self.logger.record("rollout/success_rate", float(np.mean(successes)))

    def _print_progress(self, steps: int) -> None:
        now = time.time()
        self._last_line = now
        total = self.trainer.trial.options.n_timesteps
        rate = (steps - self._steps0) / max(now - self._t0, 1e-9)
        buffer = list(self.model.ep_info_buffer or [])
        parts = [f"step {steps:,}/{total:,} ({100 * steps / total:.0f}%)", f"{rate:.0f} steps/s"]
        if rate > 0 and steps < total:
            parts.append(f"eta {_fmt_duration((total - steps) / rate)}")
        if buffer:
            parts.append(f"ep_return {np.mean([ep['r'] for ep in buffer]):.3g}")
            successes = [float(ep["success"]) for ep in buffer if "success" in ep]
            if successes:
                parts.append(f"success {np.mean(successes):.2f}")
        self.trainer.say(" | ".join(parts))



# ==============================================================================================
# The trainer
# ==============================================================================================


#: ``OSError`` numbers that mean "the storage refused a write", not a bug.
_STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                             errno.ENOENT})


def _remove_run_dir(run_dir: Path, log_folder: str) -> None:
    """Delete ``run_dir`` and the ``<env>/<core>`` folders above it that are left empty."""
    shutil.rmtree(run_dir, ignore_errors=True)
    root = Path(log_folder).resolve()
    for parent in (run_dir.parent, run_dir.parent.parent):
        if parent.resolve() == root:
            break
        with contextlib.suppress(OSError):
            parent.rmdir()  # only if empty


def _program_name() -> str:
    """How this CLI was invoked, for the recorded command: ``train.py`` or ``rimrl-train``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name in ("train.py", "rimrl-train") else "rimrl-train"


class Trainer:
    """Run one resolved trial: build, train, checkpoint, evaluate, save. See :meth:`run`."""

    def __init__(self, trial: ResolvedTrial) -> None:
        self.trial = trial
        options = trial.options
        self.say = _Printer(options.label, options.quiet)
        tty = sys.stdout.isatty()
        wanted = options.progress_bar if options.progress_bar is not None else tty
        self.show_progress_bar = bool(wanted and not options.quiet and not options.label)
        self.run_dir = options.run_dir
        self.model: Any = None
        self.eval_env: Any = None
        self.checkpoints: CheckpointManager | None = None
        self.history: EvalHistory | None = None
        # --eval-variants: variant -> (its evaluation env, its history file)
        self.variant_evals: dict[str, tuple[Any, EvalHistory]] = {}
        self.last_checkpoint: Path | None = None
        self.fresh = False  # run() created this run directory (nothing of the user's is in it)
        self.started = time.time()
        #: Set when ``options.on_evaluation`` asks to stop (its message); the run ends as ``pruned``.
        self.stop_reason: str | None = None
        self.last_eval: EvalResult | None = None

    # --- small pieces ----------------------------------------------------------------------------
    @property
    def tensorboard_dir(self) -> Path:
        options = self.trial.options
        if options.tensorboard:
            return options.dir_under(options.tensorboard)
        return self.run_dir / TB_DIR

    def check_finite(self, model: Any, where: str) -> None:
        """Raise :class:`NonFiniteError` if the last loss or any parameter is NaN/inf."""
        logger = _logger_of(model)
        loss = logger.name_to_value.get("train/loss") if logger is not None else None
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteError(f"the loss is non-finite ({loss}) {where}")
        if not params_finite(model):
            raise NonFiniteError(f"the parameters became non-finite {where}")

    def checkpoint(self, model: Any) -> Path:
        assert self.checkpoints is not None
        self.last_checkpoint = self.checkpoints.save(model)
        return self.last_checkpoint

    def evaluate(self, model: Any, steps: int) -> EvalResult:
        """Evaluate on the train variant; save ``best_model.zip`` when it is the best so far."""
        options = self.trial.options
        assert self.history is not None
        result = evaluate_recurrent(model, self.eval_env, options.eval_episodes,
                                    deterministic=options.eval_deterministic,
                                    seed=options.seed + EVAL_SEED_OFFSET)
        is_best = self.history.add(steps, result)
        self.last_eval = result
        if options.on_evaluation is not None:
            self.stop_reason = options.on_evaluation(steps, result) or None
        if is_best and params_finite(model):
            save_model_atomic(model, self.run_dir / BEST_MODEL_FILE)
        scalars = {"eval/mean_reward": result.mean_return, "eval/mean_ep_length": float(np.mean(result.lengths))}
        if result.success_rate is not None:
            scalars["eval/success_rate"] = result.success_rate
        self.say(f"eval @ {steps:,}: {result.summary()}{' [new best]' if is_best else ''}")
        for variant, (env, history) in self.variant_evals.items():
            # Recorded only: the best model is chosen on the train variant alone.
            other = evaluate_recurrent(model, env, options.eval_episodes, deterministic=options.eval_deterministic,
                                       seed=options.seed + EVAL_SEED_OFFSET)
            history.add(steps, other)
            scalars[f"eval_{variant}/mean_reward"] = other.mean_return
            if other.success_rate is not None:
                scalars[f"eval_{variant}/success_rate"] = other.success_rate
            self.say(f"eval @ {steps:,} [{variant}]: {other.summary()}")
        logger = _logger_of(model)
        if logger is not None:
            _write_scalars_at(logger, scalars, steps)
        return result

    # --- setup -----------------------------------------------------------------------------------
    def _prepare_dir(self) -> tuple[int, dict[str, Any]]:
        """Create (or clear, with --overwrite) the run dir; return (session index, config)."""
        options = self.trial.options
        if options.overwrite:  # everything but the lock this process holds
            for child in self.run_dir.iterdir():
                if child.name not in LOCK_FILES:
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        for stray in self.run_dir.glob(".tmp-*"):
            stray.unlink(missing_ok=True)
        config = self._config()
        session = len(config["sessions"]) - 1
        write_yaml(self.run_dir / CONFIG_FILE, config)
        return session, config

    def _config(self) -> dict[str, Any]:
        """``config.yml``: the top-level settings, every resolved hyperparameter and provenance."""
        trial, options = self.trial, self.trial.options
        saved = trial.saved_config or {}
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        command = shlex.join([_program_name(), *options.argv])
        sessions = list(saved.get("sessions") or [])
        sessions.append({"started": now, "command": command, "from_timesteps": self._start_timesteps})
        return {
            "env": options.env,
            "core": options.core,
            "seed": options.seed,
            "n_timesteps": options.n_timesteps,
            "n_envs": trial.n_envs,
            "vec_env": trial.vec_env,
            "preset": options.preset,
            "hyperparams": to_yaml_safe(trial.params),
            "env_kwargs": to_yaml_safe(options.env_kwargs),
            "overrides": to_yaml_safe(saved.get("overrides", options.hyperparams)),
            "family": trial.family,
            "eval_freq": options.eval_freq,
            "eval_episodes": options.eval_episodes,
            "eval_deterministic": options.eval_deterministic,
            "eval_variants": list(options.eval_variants),
            "save_freq": options.save_freq,
            "keep_checkpoints": options.keep_checkpoints,
            "device": options.device,
            "tensorboard": options.tensorboard,
            "tensorboard_dir": str(self.tensorboard_dir),
            "command": saved.get("command", command),
            "argv": saved.get("argv", list(options.argv)),
            "cwd": saved.get("cwd", os.getcwd()),
            "created": saved.get("created", now),
            "versions": package_versions(),
            "git": git_info(),
            "sessions": sessions,
        }

    @property
    def _start_timesteps(self) -> int:  # where this session starts
        resume_from = self.trial.resume_from
        match = CHECKPOINT_RE.match(resume_from.name) if resume_from is not None else None
        return int(match.group(1)) if match else 0

    def _build_model(self, env: Any) -> Any:
        """A new agent (``make_agent``) or the latest checkpoint (``load_agent``)."""
        from rimrl.agents import AgentLoadError, load_agent, make_agent

        trial, options = self.trial, self.trial.options
        if trial.resume_from is not None:
            errors = []
            for _, path in list_checkpoints(self.run_dir):  # newest first; skip unreadable ones
                try:
                    model = load_agent(path, env=env, device=options.device)
                except AgentLoadError as error:
                    errors.append(one_line(error))
                    # Set aside, not deleted (nothing lost): no longer a checkpoint to resume from or
                    # to count against --keep-checkpoints.
                    aside = path.with_name(path.name + ".unreadable")
                    path.replace(aside)
                    self.say.warn(f"skipping unreadable checkpoint {path.name} (kept as {aside.name}): {errors[-1]}")
                    continue
                trial.resume_from = path
                model.tensorboard_log = str(self.tensorboard_dir)
                return model
            raise CLIError(f"cannot resume {str(self.run_dir)!r}: no loadable checkpoint ({'; '.join(errors)})")
        try:
            return make_agent(
                env, core=options.core, preset=trial.preset_for_agent, seed=options.seed,
                tensorboard_log=str(self.tensorboard_dir), verbose=0, device=options.device,
                allow_imports=options.allow_imports, **trial.overrides,
            )
        except (ValueError, TypeError, AssertionError) as error:
            raise CLIError(f"invalid hyperparameters for core {options.core!r}: {one_line(error)}") from None

    def _already_complete(self) -> dict[str, Any] | None:
        metrics_path = self.run_dir / METRICS_FILE
        if not (self.trial.options.resume and metrics_path.is_file() and (self.run_dir / MODEL_FILE).is_file()):
            return None
        import json

        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError):
            return None
        if int(metrics.get("num_timesteps") or 0) >= self.trial.options.n_timesteps:
            return metrics
        return None

    # --- the run ---------------------------------------------------------------------------------
    def run(self) -> TrialResult:
        """Train to ``n_timesteps`` (or stop on a signal / NaN) and report the outcome."""
        options = self.trial.options
        started = self.started = time.time()
        done = self._already_complete()
        if done is not None:
            self.say(f"{self.run_dir} is already complete ({done.get('num_timesteps'):,} steps): nothing to do")
            return self._result("skipped", EXIT_OK, started, done)

        self.fresh = not has_content(self.run_dir) or options.overwrite
        try:
            with directory_lock(self.run_dir, what="run directory"):  # one writer per run directory
                return self._run_locked(started)
        except DirectoryBusyError as error:
            raise CLIError(str(error)) from None

    def _run_locked(self, started: float) -> TrialResult:
        if self.trial.options.resume and self.trial.resume_from is None:
            self.say(f"nothing to resume in {self.run_dir}: starting a new run")
        env = tracker = result = None
        try:
            session, config = self._prepare_dir()
            env = make_train_env(self.trial, session)
            self._setup(env, session)
            if self.trial.options.track:  # before learn() creates the TensorBoard writer W&B syncs
                from rimrl.experiments.tracking import start_tracking

                tracker = start_tracking(self.trial.options, config, self.run_dir)
            result = self._train(started)
        except OSError as error:
            if error.errno not in _STORAGE_ERRNOS:
                self._discard_if_nothing_kept()
                raise
            result = self._storage_failed(error, started)
        except BaseException:
            self._discard_if_nothing_kept()
            raise
        finally:
            for each in (env, self.eval_env, *(e for e, _ in self.variant_evals.values())):
                if each is not None:
                    each.close()
            if tracker is not None:
                tracker.finish(result.status if result is not None else "failed")
        if result.status in ("nan", "failed"):
            self._discard_if_nothing_kept()
        return result

    def _storage_failed(self, error: OSError, started: float) -> TrialResult:
        """A write failed mid-run (disk full, quota, the folder made read-only): stop cleanly, keeping
        the checkpoints already written (atomic writes never leave a torn one)."""
        kept = self.last_checkpoint
        where = (f"the last good checkpoint is {kept}; free space and continue with --resume" if kept
                 else "nothing was trained to keep")
        target = f" {error.filename}" if error.filename else ""
        message = f"training stopped: cannot write{target}: {error.strerror or error}; {where}"
        print(f"{self.say.prefix}error: {message}", file=sys.stderr, flush=True)
        return self._result("failed", EXIT_FAILED, started, {}, message=message)

    def _discard_if_nothing_kept(self) -> None:
        """A new run that failed before its first checkpoint leaves no directory behind (it would
        block the corrected rerun and holds nothing to resume)."""
        if self.fresh and self.last_checkpoint is None and self.run_dir.is_dir():
            _remove_run_dir(self.run_dir, self.trial.options.log_folder)

    def _setup(self, env: VecEnv, session: int) -> None:
        options = self.trial.options
        resume_from = self.trial.resume_from
        self.model = self._build_model(env)
        if self.trial.resume_from != resume_from:  # the newest checkpoint was unreadable: record the real one
            write_yaml(self.run_dir / CONFIG_FILE, self._config())
        if session > 0:
            self.model.set_random_seed(options.seed + SESSION_SEED_STRIDE * session)
        self.eval_env = make_eval_env(self.trial)
        for variant, env_id in self.trial.variant_envs.items():
            self.variant_evals[variant] = (make_eval_env(self.trial, env_id),
                                           EvalHistory(self.run_dir / variant_evaluations_file(variant)))
        self.checkpoints = CheckpointManager(self.run_dir, keep=options.keep_checkpoints)
        self.history = EvalHistory(self.run_dir / EVALUATIONS_FILE)
        self.last_checkpoint = self.trial.resume_from

    def _train(self, started: float) -> TrialResult:
        options = self.trial.options
        model = self.model
        start_steps = int(model.num_timesteps)
        verb = f"resuming at step {start_steps:,}" if self.trial.resume_from else "training"
        self.say(
            f"{verb}: {options.core.upper()} on {options.env} (seed {options.seed}, {self.trial.n_envs} envs, "
            f"{options.n_timesteps:,} steps) -> {self.run_dir}"
        )

        callback = RunCallback(self)
        remaining = options.n_timesteps - start_steps
        if remaining > 0:
            stopped = self._learn(model, callback, remaining, reset=self.trial.resume_from is None)
            if stopped is not None:
                return stopped
        # Completed: final checkpoint, model.zip, final evaluation, metrics.
        try:
            self.check_finite(model, where="after the last update")
        except NonFiniteError as error:
            return self._non_finite(str(error), started)
        if self.last_checkpoint is None or self._steps_of(self.last_checkpoint) != model.num_timesteps:
            self.checkpoint(model)
        save_model_atomic(model, self.run_dir / MODEL_FILE)
        # Written at its step by evaluate(). The last update's train/* values stay unwritten, as in
        # SB3: dumping them here would put a second point at the step where the previous update's
        # values already are.
        final = self.evaluate(model, int(model.num_timesteps))
        wall = time.time() - started
        metrics = self._write_metrics(model, final, wall, start_steps)
        rate = (model.num_timesteps - start_steps) / max(wall, 1e-9)
        self.say(f"done: {model.num_timesteps:,} steps in {_fmt_duration(wall)} ({rate:.0f} steps/s); "
                 f"final eval {final.summary()}")
        return self._result("completed", EXIT_OK, started, metrics)

    @staticmethod
    def _steps_of(path: Path) -> int | None:
        match = CHECKPOINT_RE.match(path.name)
        return int(match.group(1)) if match else None

    def _learn(self, model: Any, callback: RunCallback, remaining: int, reset: bool) -> TrialResult | None:
        """``model.learn``; a :class:`TrialResult` if it did not complete (signal, NaN)."""
        started = self.started
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*rich is experimental.*")
                warnings.filterwarnings("ignore", category=UserWarning, module="tqdm")
                # RunCallback first: its evaluations run before the activity logger records attention.
                callbacks = CallbackList([callback, CoreActivityCallback()])
                model.learn(remaining, callback=callbacks, reset_num_timesteps=reset, tb_log_name=TB_LOG_NAME,
                            progress_bar=self.show_progress_bar)
        except Exception as error:
            reason = divergence_reason(error, model)
            if reason is None:
                raise
            return self._non_finite(reason, started)
        if callback.aborted and self.stop_reason and STOP.signum is None:
            return self._pruned(model, callback, started)
        if callback.aborted:
            return self._interrupted(model, callback, started)
        return None  # completed (a signal during the last update still lets it finish and save)

    def _interrupted(self, model: Any, callback: RunCallback, started: float) -> TrialResult:
        """Checkpoint what is trained (the partial rollout is dropped) and exit 128 + signal."""
        signum = int(STOP.signum or signal.SIGINT)
        model.num_timesteps = callback.safe_timesteps
        path = self.checkpoint(model)
        name = signal.Signals(signum).name
        self.say(f"{name}: checkpoint at step {model.num_timesteps:,} saved to {path}; continue with --resume")
        return self._result("interrupted", 128 + signum, started, {"num_timesteps": int(model.num_timesteps)},
                            message=f"{name} at step {model.num_timesteps:,}; --resume continues it")

    def _pruned(self, model: Any, callback: RunCallback, started: float) -> TrialResult:
        """Stopped by ``options.on_evaluation`` (a pruned search trial): checkpoint what is trained,
        so ``--resume`` could still continue it, and report the last evaluation."""
        model.num_timesteps = callback.safe_timesteps
        self.checkpoint(model)
        message = f"{self.stop_reason} at step {model.num_timesteps:,}"
        self.say(f"stopped: {message}")
        last = self.last_eval
        metrics = {"num_timesteps": int(model.num_timesteps),
                   "success_rate": last.success_rate if last else None,
                   "mean_return": last.mean_return if last else None}
        return self._result("pruned", EXIT_OK, started, metrics, message=message)

    def _non_finite(self, reason: str, started: float) -> TrialResult:
        kept = self.last_checkpoint
        if kept is not None:
            where, again = f"the last good checkpoint is {kept}", "start again with --overwrite"
        elif self.fresh:
            where, again = "nothing was trained to keep, so the run directory was removed", "start again"
        else:
            where, again = "no checkpoint was written yet", "start again with --overwrite"
        message = f"training stopped: {reason}; {where} (lower the learning rate or max_grad_norm and {again})"
        print(f"{self.say.prefix}error: {message}", file=sys.stderr, flush=True)
        return self._result("nan", EXIT_FAILED, started, {}, message=message)

    def _write_metrics(self, model: Any, final: EvalResult, wall: float, start_steps: int) -> dict[str, Any]:
        assert self.history is not None
        metrics = {
            "env": self.trial.options.env,
            "core": self.trial.options.core,
            "seed": self.trial.options.seed,
            "num_timesteps": int(model.num_timesteps),
            "success_rate": final.success_rate,
            "mean_return": final.mean_return,
            "std_return": final.std_return,
            "mean_length": float(np.mean(final.lengths)) if final.lengths else None,
            "n_episodes": len(final.returns),
            "deterministic": self.trial.options.eval_deterministic,
            "best_timesteps": self.history.best_timesteps,
            "best_score": list(self.history.best_score) if self.history.best_score else None,
            "wall_time_s": round(wall, 2),
            "steps_per_s": round((model.num_timesteps - start_steps) / max(wall, 1e-9), 1),
        }
        write_json(self.run_dir / METRICS_FILE, metrics)
        return metrics

    def _result(self, status: str, code: int, started: float, metrics: Mapping[str, Any],
                message: str = "") -> TrialResult:
        options = self.trial.options
        return TrialResult(
            env=options.env, core=options.core, seed=options.seed, run_dir=str(self.run_dir), status=status,
            exit_code=code, num_timesteps=metrics.get("num_timesteps"), success_rate=metrics.get("success_rate"),
            mean_return=metrics.get("mean_return"), wall_time_s=round(time.time() - started, 2), message=message,
        )


# ==============================================================================================
# Entry points
# ==============================================================================================


def execute_trial(options: TrainOptions, keep_pending_signal: bool = False) -> TrialResult:
    """Resolve and run one trial in this process, SIGINT/SIGTERM meaning "checkpoint and stop"
    (see :class:`StopRequest`). Bad input raises :class:`CLIError`."""
    import torch

    torch.set_num_threads(options.threads)
    printer = _Printer(options.label, options.quiet)
    with stop_on_signals(keep_pending=keep_pending_signal):
        trial = resolve_trial(options, say=printer)
        return Trainer(trial).run()


def _sweep_requested(args: Any, trials: list[TrainOptions]) -> bool:
    return len(trials) > 1 or args.backend is not None or args.workers is not None or args.ray_address is not None


@main_guard
def main(argv: Sequence[str] | None = None) -> int:
    """``rimrl-train``: parse ``argv`` (default ``sys.argv[1:]``), run one trial or a sweep.

    :return: 0 on success, 1 if training failed (NaN, a failed sweep trial), 2 on bad input,
        130 / 143 after SIGINT / SIGTERM (a checkpoint was saved).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    trials = build_trials(args, argv)
    if args.optimize:
        from rimrl.experiments.search import run_optimize

        return run_optimize(args, trials)
    for flag in ("n_trials", "sampler", "pruner", "storage", "study_name"):
        if getattr(args, flag) is not None:
            raise CLIError(f"--{flag.replace('_', '-')} needs --optimize")
    if _sweep_requested(args, trials):
        from rimrl.cli.sweep import run_sweep

        return run_sweep(trials, backend=args.backend or "local", workers=args.workers,
                         ray_address=args.ray_address)
    return execute_trial(trials[0]).exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
