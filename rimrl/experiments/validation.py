"""Validation of a training run before anything is written: settings, hyperparameters (keys,
types, ranges), the device, the run directory's state and, on ``--resume``, the saved config.

Every problem raises :class:`~rimrl.experiments.errors.ExperimentInputError` with one line for
the user (a command line prints it as ``error: ...`` and exits with status 2).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rimrl.agents.storage import has_content, writable_dir_problem
from rimrl.agents.training import list_checkpoints
from rimrl.experiments.errors import ExperimentInputError
from rimrl.experiments.io import one_line, read_yaml, to_yaml_safe
from rimrl.experiments.options import CONFIG_FILE, DEFAULTS, VEC_ENVS, ResolvedTrial, TrainOptions

__all__ = [
    "check_device",
    "check_hyperparam_ranges",
    "check_hyperparam_types",
    "check_imports",
    "import_packages",
    "refuse_file_imports",
    "resolve_eval_variants",
    "resolve_trial",
    "validate_settings",
]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ExperimentInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_core(core: Any) -> None:
    """``core`` is rimrl's own (:data:`~rimrl.experiments.options.CORES`) or registered with
    :func:`rimrl.cores.register_core`."""
    from rimrl.cores import core_names, is_registered

    if not is_registered(core):
        raise ExperimentInputError(f"unknown core {core!r}; choose from {', '.join(core_names())} (a core of your own: "
                                   "rimrl.cores.register_core in a module given to --gym-packages)")


def check_imports(settings: Mapping[str, Any]) -> None:
    """``gym_packages`` must be module names and ``env_wrapper`` wrapper specs."""
    from rimrl.envs.custom import normalize_wrappers

    packages = settings["gym_packages"]
    if not isinstance(packages, list) or not all(isinstance(p, str) and p for p in packages):
        raise ExperimentInputError(f"gym_packages must be a list of module names, got {packages!r}")
    try:
        normalize_wrappers(settings["env_wrapper"])
    except ValueError as error:
        raise ExperimentInputError(one_line(error)) from None


def refuse_file_imports(file_values: Mapping[str, Any], path: str) -> None:
    """What a ``--config`` file asks to import must lie under the wrapper allow-list unless
    ``--allow-imports``: files travel between people, a flag was typed by the user."""
    from rimrl.agents.presets import import_allowed
    from rimrl.envs.custom import WRAPPER_IMPORTS, wrapper_modules

    modules = [*(file_values.get("gym_packages") or []), *wrapper_modules(file_values.get("env_wrapper"))]
    for module in modules:
        if not import_allowed(str(module), WRAPPER_IMPORTS):
            raise ExperimentInputError(
                f"refusing to import {module!r} named in --config file {path!r}: a file may only name modules "
                f"under {', '.join(WRAPPER_IMPORTS)}; pass --allow-imports if you trust it (or give it as "
                "--gym-packages / --env-wrapper on the command line)"
            )


def import_packages(packages: Sequence[str]) -> None:
    """Import ``--gym-packages`` (:class:`~rimrl.experiments.errors.ExperimentInputError` if one
    does not import)."""
    from rimrl.envs.custom import import_gym_packages

    try:
        import_gym_packages(packages)
    except ValueError as error:
        raise ExperimentInputError(one_line(error)) from None


def validate_settings(settings: dict[str, Any], resume: bool = False) -> None:
    """Check the settings of a grid (keyed like :data:`~rimrl.experiments.options.DEFAULTS`):
    cores, integers and their minimums, the evaluation mode, strings, the device, env ids.

    Import ``gym_packages`` first (:func:`import_packages`): they may register cores. On
    ``resume`` the cores are not checked here: one may be registered by the run's recorded
    ``gym_packages``, which :func:`resolve_trial` imports before it checks the core.
    """
    for core in [] if resume else settings["cores"]:
        _check_core(core)
    for seed in settings["seeds"]:
        check_int("seed", seed, 0)
    check_int("n_timesteps", settings["n_timesteps"], 1)
    if settings["n_envs"] is not None:
        check_int("n_envs", settings["n_envs"], 1)
    if settings["vec_env"] is not None and settings["vec_env"] not in VEC_ENVS:
        raise ExperimentInputError(f"vec_env must be one of {', '.join(VEC_ENVS)}, got {settings['vec_env']!r}")
    for name, minimum in (("eval_freq", 0), ("eval_episodes", 1), ("save_freq", 0), ("keep_checkpoints", 0),
                          ("threads", 1)):
        check_int(name, settings[name], minimum)
    mode = settings["eval_deterministic"]
    if mode is not None and not isinstance(mode, bool):  # "false" in YAML is a string: truthy
        raise ExperimentInputError(f"eval_deterministic must be true or false (a YAML boolean), or null for the env's "
                       f"default, got "
                       f"{settings['eval_deterministic']!r}")
    for name in ("log_folder", "preset", "tensorboard"):
        if settings[name] is not None and not isinstance(settings[name], str):
            raise ExperimentInputError(f"{name} must be a string, got {settings[name]!r}")
    if not isinstance(settings["device"], str):
        raise ExperimentInputError(f"device must be a string, got {settings['device']!r}")
    check_device(settings["device"])
    for env in settings["envs"]:
        if not isinstance(env, str) or not env:
            raise ExperimentInputError(f"env must be a non-empty string, got {env!r}")
    variants = settings["eval_variants"]
    if not isinstance(variants, list) or not all(isinstance(v, str) and v for v in variants):
        raise ExperimentInputError(f"eval_variants must be a list of variant names, got {variants!r}")


def resolve_eval_variants(env_id: str, variants: Sequence[str]) -> dict[str, str]:
    """``--eval-variants`` -> ``{variant: env id}`` in the suite of ``env_id`` (``all``: every variant
    but the training one); :class:`~rimrl.experiments.errors.ExperimentInputError` for an env outside the suites or an unknown variant."""
    from rimrl.envs import DISTRACTOR_SUITES, suite_of

    if not variants:
        return {}
    found = suite_of(env_id)
    if found is None:
        raise ExperimentInputError(f"--eval-variants needs a distractor-suite env (e.g. rimrl/Pickup-Train-v0), not {env_id!r}")
    suite, trained = found
    members = DISTRACTOR_SUITES[suite]
    names = [v for v in members if v != trained] if list(variants) == ["all"] else list(variants)
    for name in names:
        if name not in members:
            raise ExperimentInputError(f"unknown variant {name!r} for --eval-variants; the {suite} suite has {', '.join(members)}")
    return {name: members[name] for name in dict.fromkeys(names)}


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
    """Raise :class:`~rimrl.experiments.errors.ExperimentInputError` if a resolved hyperparameter has the wrong type for RecurrentPPO,
    the policy or the core (e.g. ``n_steps=abc``, ``policy_kwargs.core_kwargs.k=2.5``)."""
    from sb3_contrib import RecurrentPPO

    from rimrl.cores import CORES as CORE_CLASSES
    from rimrl.policies.modular import ModularRecurrentPolicy

    def check(hints: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> None:
        for key, value in values.items():
            hint = hints.get(key)
            if hint is not None and not _matches(hint, value):
                raise ExperimentInputError(
                    f"hyperparameter {prefix}{key}={to_yaml_safe(value)!r} has the wrong type: expected "
                    f"{_describe_type(hint)}"
                )

    algo_hints = typing.get_type_hints(RecurrentPPO.__init__)
    check(algo_hints, {k: v for k, v in params.items() if k not in ("policy_kwargs", "n_envs")}, "")
    policy_kwargs = params.get("policy_kwargs") or {}
    policy_hints = typing.get_type_hints(ModularRecurrentPolicy.__init__)
    check(policy_hints, {k: v for k, v in policy_kwargs.items() if k != "core_kwargs"}, "policy_kwargs.")
    core_kwargs = policy_kwargs.get("core_kwargs") or {}
    factory = CORE_CLASSES.get(core)
    if factory is not None:
        try:  # a registered factory's annotations may not resolve (forward refs): then unchecked
            hints = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory)
        except Exception:
            hints = {}
        check(hints, core_kwargs, "policy_kwargs.core_kwargs.")


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
    """Raise :class:`~rimrl.experiments.errors.ExperimentInputError` if a resolved RecurrentPPO hyperparameter is out of its range
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
            raise ExperimentInputError(f"hyperparameter {name}={to_yaml_safe(value)!r} is out of range: expected a finite "
                           f"value in {bounds}")
    n_steps, n_envs = params.get("n_steps"), params.get("n_envs")
    if isinstance(n_steps, int) and isinstance(n_envs, int) and n_steps * n_envs < 2:
        raise ExperimentInputError(f"n_steps * n_envs must be > 1 (RecurrentPPO's advantage normalisation), got "
                       f"{n_steps} * {n_envs}")


def check_device(device: str) -> None:
    """Raise :class:`~rimrl.experiments.errors.ExperimentInputError` for a device torch does not know, or CUDA on a machine without it
    (SB3 would silently fall back to the CPU)."""
    import torch

    if device == "auto":
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ExperimentInputError(f"unknown --device {device!r}; use auto, cpu or cuda[:i]") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ExperimentInputError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu or auto")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ExperimentInputError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type not in ("cpu", "mps"):
        raise ExperimentInputError(f"--device {device!r} is not supported; use auto, cpu or cuda[:i]")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ExperimentInputError(f"--device {device!r}: MPS is not available on this machine; use --device cpu or auto")


def _check_run_dir(options: TrainOptions) -> None:
    run_dir = options.run_dir
    if run_dir.exists() and not run_dir.is_dir():
        raise ExperimentInputError(f"run directory {str(run_dir)!r} exists and is not a directory")
    if options.resume or options.overwrite:
        return
    if has_content(run_dir):
        raise ExperimentInputError(
            f"run directory {str(run_dir)!r} already exists; pass --resume to continue it or --overwrite "
            f"to replace it"
        )


#: On ``--resume`` these stay as the run saved them (they define the experiment) ...
_RESUME_KEPT = ("n_envs", "vec_env", "preset", "eval_deterministic", "env_kwargs", "env_wrapper", "gym_packages")
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

    :raises ExperimentInputError: any bad input (the message is one line).
    """
    from rimrl.agents import resolve_hyperparams
    from rimrl.envs import env_family, is_atari
    from rimrl.envs.factory import is_gym_id, unknown_id_message

    say = say or (lambda message: None)
    import_packages(options.gym_packages)  # again: a sweep worker is a fresh process

    saved: dict[str, Any] | None = None
    resume_from: Path | None = None
    config_path = options.run_dir / CONFIG_FILE
    if options.resume and config_path.is_file():
        saved = read_yaml(config_path, what="saved run config")
        for key in ("env", "core", "seed"):
            if key in saved and saved[key] != getattr(options, key):
                raise ExperimentInputError(f"{config_path} is for {key}={saved[key]!r}, not {getattr(options, key)!r}")
        options = _resume_settings(options, saved, say)
        checkpoints = list_checkpoints(options.run_dir)
        resume_from = checkpoints[0][1] if checkpoints else None
    elif options.resume and list_checkpoints(options.run_dir):
        raise ExperimentInputError(f"cannot resume {str(options.run_dir)!r}: it has checkpoints but no {CONFIG_FILE}")
    if saved is not None:
        import_packages(options.gym_packages)  # the run's own, kept on --resume
    _check_core(options.core)
    if not is_gym_id(options.env) and not is_atari(options.env):
        raise ExperimentInputError(unknown_id_message(options.env))  # nothing created for an unknown id
    try:
        # Ids beyond the suites, MiniGrid and Atari are built once here (with the wrappers) to see
        # whether their observation is a vector or an image.
        family = env_family(options.env, env_kwargs=options.env_kwargs, wrappers=options.env_wrapper)
    except Exception as error:  # a bad wrapper or --env-kwargs fails inside gymnasium or the wrapper
        given = f" with --env-kwargs {to_yaml_safe(options.env_kwargs)}" if options.env_kwargs else ""
        raise ExperimentInputError(f"{one_line(error)}{given}") from None

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
        params = resolve_hyperparams(family, options.core,
                                     preset=preset_for_agent, overrides=overrides, allow_imports=options.allow_imports,
                                     env_id=options.env)
    except ValueError as error:
        raise ExperimentInputError(one_line(error)) from None
    check_hyperparam_types(params, options.core)
    check_hyperparam_ranges(params)
    n_envs = int(params.pop("n_envs", 8))

    if options.eval_deterministic is None:  # no flag, no --config value, not kept from a resumed run
        from rimrl.envs import default_deterministic

        options = dataclasses.replace(options, eval_deterministic=default_deterministic(options.env))
    vec_env = options.vec_env or ("ale" if family == "atari" else "dummy")
    if vec_env == "ale" and family != "atari":
        raise ExperimentInputError(f"--vec-env ale is only for Atari games, not {options.env!r}; use dummy or subproc")
    variant_envs = resolve_eval_variants(options.env, options.eval_variants)
    _check_run_dir(options)
    for folder, what in ((options.run_dir, "run directory"), (options.tensorboard, "--tensorboard folder")):
        problem = writable_dir_problem(folder) if folder else None
        if problem is not None:
            raise ExperimentInputError(f"cannot write the {what}: {problem}")
    return ResolvedTrial(
        options=options, family=family, params=params, n_envs=n_envs, vec_env=vec_env, variant_envs=variant_envs,
        preset_for_agent=preset_for_agent, overrides=overrides, saved_config=saved, resume_from=resume_from,
    )


#: ``--config`` keys: the settable ones (:data:`DEFAULTS`; singular spellings too) plus the informational
#: keys a run's own ``config.yml`` carries, so that file can be passed back with ``--config``.
_CONFIG_ALIASES = {"env": "envs", "core": "cores", "seed": "seeds"}
_CONFIG_INFO_KEYS = {
    "overrides", "family", "command", "argv", "cwd", "created", "versions", "git", "sessions",
    "run_dir", "resolved_device", "tensorboard_dir",
}


def config_file_values(path: str) -> dict[str, Any]:
    """The settings in a ``--config`` file (an experiment file, or a run's own ``config.yml``),
    keyed like :data:`DEFAULTS`."""
    data = read_yaml(path, what="--config file")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in _CONFIG_INFO_KEYS:
            continue
        target = _CONFIG_ALIASES.get(key, key)
        if target not in DEFAULTS:
            allowed = sorted(set(DEFAULTS) | set(_CONFIG_ALIASES))
            raise ExperimentInputError(f"unknown key {key!r} in --config file {path!r}; allowed keys: {', '.join(allowed)}")
        if target in ("envs", "cores", "seeds", "gym_packages") and not isinstance(value, list):
            value = [value]
        if target == "env_wrapper" and value is not None and not isinstance(value, list):
            value = [value]
        if target in ("hyperparams", "env_kwargs") and not isinstance(value, Mapping):
            raise ExperimentInputError(f"{key!r} in --config file {path!r} must be a mapping")
        values[target] = value
    return values
