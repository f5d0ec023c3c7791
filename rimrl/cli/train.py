"""``rimrl-train`` / ``python train.py``: train a RecurrentPPO agent with a modular core.

One run::

    python train.py --env rimrl/Pickup-Train-v0 --core rim -n 200000 --seed 0

writes ``runs/rimrl-Pickup-Train-v0/rim/seed0/`` (see ``docs/train.md`` for the layout and the
``config.yml`` schema). Several ``--env`` / ``--cores`` / ``--seeds`` values make a sweep.

This module only parses: :func:`build_parser` / :func:`build_trials` turn flags (+ ``--config``)
into one :class:`~rimrl.experiments.options.TrainOptions` per trial, and :func:`main` hands them
to the library: :func:`rimrl.experiments.run.execute_trial` (validation, the
:class:`~rimrl.experiments.run.Trainer`), :func:`rimrl.experiments.sweep.run_sweep` or, with
``--optimize``, :func:`rimrl.experiments.search.run_optimize`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rimrl.agents.training import list_checkpoints
from rimrl.cli.common import ArgumentParser, CLIError, main_guard, parse_key_values

# Besides what this module uses, library names that tests, benchmarks and scripts import from here.
from rimrl.experiments.envs import make_eval_env
from rimrl.experiments.io import program_name
from rimrl.experiments.naming import resolve_exp_id
from rimrl.experiments.options import (
    CONFIG_FILE,
    CORES,
    DEFAULTS,
    EVALUATIONS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    MONITOR_DIR,
    VEC_ENVS,
    ResolvedTrial,
    TrainOptions,
    TrialResult,
    variant_evaluations_file,
)
from rimrl.experiments.run import Trainer, execute_trial
from rimrl.experiments.search import check_search_flags, run_optimize
from rimrl.experiments.validation import (
    check_imports,
    config_file_values,
    import_packages,
    refuse_file_imports,
    resolve_trial,
    validate_settings,
)

__all__ = [
    "CONFIG_FILE",
    "CORES",
    "DEFAULTS",
    "EVALUATIONS_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "MONITOR_DIR",
    "ResolvedTrial",
    "Trainer",
    "TrainOptions",
    "TrialResult",
    "build_parser",
    "build_trials",
    "execute_trial",
    "list_checkpoints",
    "main",
    "make_eval_env",
    "resolve_trial",
    "variant_evaluations_file",
]

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
        prog=program_name("train.py", "rimrl-train"),
        description="Train RecurrentPPO with a RIM / SRM / LSTM / GRU core. Several --env, --cores or "
        "--seeds values run a sweep (one trial each). See docs/train.md.",
    )
    what = parser.add_argument_group("what to train")
    what.add_argument("--env", dest="envs", nargs="+", action="extend", metavar="ENV",
                      help="any gymnasium env id (CartPole-v1, Pendulum-v1, MiniGrid/BabyAI ids, "
                      "rimrl/Pickup-Train-v0, ...) or Atari game (Breakout, ALE/Breakout-v5); several make a sweep "
                      "[default: rimrl/Pickup-Train-v0]")
    # No argparse `choices`: registered cores exist only once --gym-packages are imported, after parsing.
    what.add_argument("--core", "--cores", dest="cores", nargs="+", action="extend",
                      metavar="CORE", help=f"recurrent core(s): {', '.join(CORES)} or a name registered with "
                      "rimrl.cores.register_core [default: rim]")
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
    what.add_argument("--gym-packages", nargs="+", action="extend", metavar="MODULE", default=None,
                      help="modules to import first, for the env ids (and rimrl cores) they register "
                      "(importing runs their code)")
    what.add_argument("--env-wrapper", nargs="+", action="extend", metavar="MODULE:CLASS", default=None,
                      help="gymnasium wrapper(s) applied to every env, innermost first (importing runs the "
                      "module's code; a --config file's env_wrapper needs --allow-imports outside gymnasium/rimrl)")
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
                     help="let policy_kwargs.*_class, and a --config file's gym_packages / env_wrapper, import "
                     "modules outside torch.nn, torch.optim, stable_baselines3, sb3_contrib, rimrl (and gymnasium "
                     "for wrappers); importing runs their code")
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


def explicit_cli(cli_values: Mapping[str, Any]) -> set[str]:
    """The settings given as flags (they win over the ``--config`` file's)."""
    return {key for key, value in cli_values.items() if value is not None}


def build_trials(args: Any, argv: Sequence[str]) -> list[TrainOptions]:
    """Parsed flags (+ ``--config``) -> one :class:`TrainOptions` per (env, core, seed), grid order."""
    file_values = config_file_values(args.config) if args.config else {}
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
    for key in ("gym_packages", "env_wrapper"):
        if settings[key] is None:
            settings[key] = []
    check_imports(settings)
    if not args.allow_imports:
        refuse_file_imports({k: v for k, v in file_values.items() if k not in explicit_cli(cli_values)},
                            args.config or "")
    import_packages(settings["gym_packages"])  # before the cores are checked: they may register some
    validate_settings(settings, resume=args.resume)
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
                    options.run_name = resolve_exp_id(options.run_dir.parent, seed, args.exp_id,
                                                      latest=args.resume or args.overwrite)
                if grid:
                    options.label = options.name
                trials.append(options)
    return trials


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
        return run_optimize(args, trials)
    check_search_flags(args)
    if _sweep_requested(args, trials):
        from rimrl.experiments.sweep import run_sweep

        return run_sweep(trials, backend=args.backend or "local", workers=args.workers,
                         ray_address=args.ray_address)
    return execute_trial(trials[0]).exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
