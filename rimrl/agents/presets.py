"""RecurrentPPO hyperparameter presets per env family and core, kept as YAML under ``configs/``.

A preset file (``configs/<family>.yml``) has a ``default`` section and one section per core
(``lstm``, ``gru``, ``rim``, ``srm``); the core's section is deep-merged over ``default``
(rl-zoo3 style). Keys are ``RecurrentPPO.__init__`` arguments plus ``n_envs`` (consumed by the
caller, see :func:`preset_n_envs`); ``policy_kwargs`` holds the policy's arguments
(``lstm_hidden_size``, ``core_kwargs``, ...). Schedules are written ``"lin_<value>"``.

An optional ``envs`` section holds settings for single env ids, merged over the family's (as
rl-zoo3 keys its presets by env id)::

    envs:
      Pendulum-v1:            # a flat mapping (every core) or default/<core> sections
        default: {gamma: 0.9}
        rim: {policy_kwargs: {lstm_hidden_size: 64}}

A core registered with :func:`rimrl.cores.register_core` uses its own section when the file has
one, else the section of the built-in core it names as ``preset`` (the LSTM's by default).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.utils import LinearSchedule
from torch import nn

from rimrl.cores import core_names, core_spec
from rimrl.cores.registry import core_factory_parameters
from rimrl.policies.modular import ModularRecurrentPolicy

__all__ = [
    "ALLOWED_IMPORTS",
    "CONFIG_DIR_ENV",
    "FAMILIES",
    "LinearDecay",
    "allowed_core_kwargs",
    "allowed_hyperparams",
    "allowed_policy_kwargs",
    "config_dir",
    "import_object",
    "load_preset",
    "parse_schedule",
    "preset_n_envs",
    "resolve_family",
    "resolve_hyperparams",
]

#: Env families with a preset file ``configs/<family>.yml``.
FAMILIES = ("minigrid", "atari", "vector")
#: Families that read another family's preset file: gymnasium envs with image observations (not
#: Atari) take the Atari preset, whose CNN token encoder is picked from the space anyway.
PRESET_FILE_OF_FAMILY = {"image": "atari"}
#: The preset section that holds per-env-id settings.
ENVS_SECTION = "envs"
# Sections every preset may hold, registered or not (rimrl's own cores).
BUILTIN_SECTIONS = ("lstm", "gru", "rim", "srm")
#: Environment variable that points at another presets folder.
CONFIG_DIR_ENV = "RIMRL_CONFIG_DIR"

# Keys make_agent passes itself, or that RecurrentPPO must not get from a preset.
_RESERVED_ALGO_KEYS = {"self", "policy", "env", "_init_setup_model", "seed", "tensorboard_log", "verbose", "device"}
# Keys consumed by the caller, not RecurrentPPO.
_CALLER_KEYS = {"n_envs"}
# Policy arguments that RecurrentPPO or the encoder supply.
_RESERVED_POLICY_KEYS = {"self", "observation_space", "action_space", "lr_schedule", "use_sde", "core"}
# Core arguments that the policy supplies from the encoder.
_RESERVED_CORE_KEYS = {"self", "input_size", "hidden_size", "num_tokens", "token_positions"}
_SCHEDULE_KEYS = {"learning_rate", "clip_range", "clip_range_vf"}
#: Packages whose classes a ``*_class: 'pkg.mod:Name'`` setting may name without ``allow_imports``.
ALLOWED_IMPORTS = ("torch.nn", "torch.optim", "stable_baselines3", "sb3_contrib", "rimrl")
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


class LinearDecay(LinearSchedule):
    """SB3's :class:`~stable_baselines3.common.utils.LinearSchedule` from ``initial`` to 0 over the
    whole run: ``progress_remaining -> progress_remaining * initial``, clamped at 0 once training
    runs past its end (SB3 finishes the last rollout after ``total_timesteps``; an unclamped
    schedule would give a negative learning rate and clip range there).

    A named class (not a closure) so saved models unpickle it by reference.
    """

    def __init__(self, initial: float) -> None:
        super().__init__(start=float(initial), end=0.0, end_fraction=1.0)
        self.initial = float(initial)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Models saved before LinearDecay was a LinearSchedule carry only ``initial``.
        self.__dict__.update(state)
        if "start" not in state:
            LinearSchedule.__init__(self, start=self.initial, end=0.0, end_fraction=1.0)

    def __repr__(self) -> str:
        return f"LinearDecay({self.initial})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinearDecay) and other.initial == self.initial

    def __hash__(self) -> int:
        return hash(("LinearDecay", self.initial))


def parse_schedule(value: Any) -> Any:
    """``"lin_2.5e-4"`` -> ``LinearDecay(2.5e-4)``; numeric strings -> float; anything else unchanged."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("lin_"):
            try:
                return LinearDecay(float(text[4:]))
            except ValueError:
                raise ValueError(f"bad linear schedule {value!r}: expected 'lin_<number>'") from None
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"bad schedule {value!r}: expected a number or 'lin_<number>'") from None
    return value


# ----------------------------------------------------------------------------------------------
# Files and families
# ----------------------------------------------------------------------------------------------


def config_dir() -> Path:
    """The presets folder: ``$RIMRL_CONFIG_DIR`` if set, else the repository's ``configs/``."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "configs"


def resolve_family(env_family_or_id: str) -> str:
    """A family name (``"minigrid"``, ``"atari"``, ``"vector"``, ``"image"``) or an env id -> its family."""
    if env_family_or_id in FAMILIES or env_family_or_id in PRESET_FILE_OF_FAMILY:
        return env_family_or_id
    try:
        from rimrl.envs import env_family
    except ImportError as error:  # pragma: no cover - rimrl.envs ships with the package
        raise ValueError(f"unknown env family {env_family_or_id!r}; expected one of {list(FAMILIES)}") from error
    try:
        return env_family(env_family_or_id)
    except (ValueError, KeyError) as error:
        raise ValueError(
            f"{env_family_or_id!r} is neither an env family {list(FAMILIES)} nor a known env id: {error}"
        ) from None


def load_preset(preset: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read a preset: a mapping (returned as a copy), a YAML path, or a name under :func:`config_dir`."""
    if isinstance(preset, Mapping):
        return copy.deepcopy(dict(preset))
    path = Path(preset)
    if not path.suffix and not path.exists():
        path = config_dir() / f"{preset}.yml"
    if not path.is_file():
        raise ValueError(f"preset file {str(path)!r} not found (presets folder: {config_dir()})")
    return read_yaml_mapping(path, what="preset file")


def read_yaml_mapping(path: str | Path, what: str = "YAML file", error: type[Exception] = ValueError) -> dict[str, Any]:
    """Read a YAML file that holds a mapping (an empty file is ``{}``).

    A missing or unreadable file, a parse error or a non-mapping raises ``error`` with one line
    that names ``what`` and the path (callers pick their own error type: the CLIs' usage error,
    evaluation's input error).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as problem:
        raise error(f"cannot read {what} {str(path)!r}: not UTF-8 text (byte {problem.start})") from None
    except (OSError, yaml.YAMLError) as problem:
        raise error(f"cannot read {what} {str(path)!r}: {' '.join(str(problem).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _signature_keys(func: Any) -> set[str]:
    return {
        name
        for name, p in inspect.signature(func).parameters.items()
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    }


def allowed_hyperparams() -> list[str]:
    """Top-level preset keys: ``RecurrentPPO.__init__`` arguments (minus those make_agent sets) + ``n_envs``."""
    return sorted((_signature_keys(RecurrentPPO.__init__) - _RESERVED_ALGO_KEYS) | _CALLER_KEYS)


def allowed_policy_kwargs() -> list[str]:
    """Keys of ``policy_kwargs``: :class:`ModularRecurrentPolicy` arguments RecurrentPPO does not set."""
    return sorted(_signature_keys(ModularRecurrentPolicy.__init__) - _RESERVED_POLICY_KEYS)


def allowed_core_kwargs(core: str) -> list[str] | None:
    """Constructor (factory) arguments of ``core`` that ``core_kwargs`` may set; ``None`` when
    they cannot be known (a registered factory that takes ``**kwargs``).

    :raises ValueError: ``core`` is not registered (:class:`rimrl.cores.UnknownCoreError`).
    """
    factory = core_spec(core).factory
    target = factory.__init__ if inspect.isclass(factory) else factory
    named = set(core_factory_parameters(factory))
    try:
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(target).parameters.values()):
            extra = getattr(factory, "torch_kwargs", None)  # LSTM/GRU: **kwargs go to torch, and are listed
            if extra is None:
                return None
            named |= set(extra)
    except (TypeError, ValueError):
        return None
    return sorted(named - _RESERVED_CORE_KEYS)


def _check_keys(found: Mapping[str, Any], allowed: list[str], where: str) -> None:
    for key in found:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} in {where}; allowed keys: {', '.join(allowed) or '(none)'}")


def import_allowed(module: str, allowed: tuple[str, ...] = ALLOWED_IMPORTS) -> bool:
    """Whether ``module`` lies in one of ``allowed`` (:data:`ALLOWED_IMPORTS`; the package itself or below it)."""
    return any(module == root or module.startswith(root + ".") for root in allowed)


def import_object(
    path: str, allow_imports: bool = False, what: str = "class", allowed: tuple[str, ...] = ALLOWED_IMPORTS
) -> Any:
    """Import ``'package.module:Name'`` (or ``'package.module.Name'``).

    Importing a module runs its code, and presets, ``config.yml`` files and saved specs travel
    between people: unless ``allow_imports``, only modules under :data:`ALLOWED_IMPORTS` are
    imported, checked *before* anything is imported.

    :param what: names the setting in error messages, e.g. ``"policy_kwargs.optimizer_class"``.
    :param allowed: the allow-list (default :data:`ALLOWED_IMPORTS`).
    :raises ValueError: a module outside the allow-list (one line naming it and ``--allow-imports``),
        or a path that does not import.
    """
    module, _, name = path.partition(":")
    if not name:
        module, _, name = path.rpartition(".")
    if not allow_imports and not import_allowed(module, allowed):
        raise ValueError(
            f"refusing to import {module!r} for {what} {path!r}: only {', '.join(allowed)} may be "
            "imported (pass --allow-imports to train.py, or allow_imports=True, to import other modules)"
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot import {path!r} for {what} (write 'package.module:Name')") from None


def _convert_policy_kwargs(policy_kwargs: dict[str, Any], allow_imports: bool = False) -> None:
    """YAML-friendly spellings -> objects: ``activation_fn: relu``, ``*_class: 'pkg.mod:Name'``
    (imported through :func:`import_object`'s allow-list unless ``allow_imports``)."""
    activation = policy_kwargs.get("activation_fn")
    if isinstance(activation, str):
        key = activation.lower().removeprefix("nn.")
        key = {"leakyrelu": "leaky_relu"}.get(key, key)
        if key not in _ACTIVATIONS:
            raise ValueError(f"unknown activation_fn {activation!r}; allowed: {', '.join(sorted(_ACTIVATIONS))}")
        policy_kwargs["activation_fn"] = _ACTIVATIONS[key]
    for key in ("features_extractor_class", "optimizer_class"):
        if isinstance(policy_kwargs.get(key), str):
            policy_kwargs[key] = import_object(policy_kwargs[key], allow_imports, what=f"policy_kwargs.{key}")


# ----------------------------------------------------------------------------------------------
# Merging
# ----------------------------------------------------------------------------------------------


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; mappings merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _expand_dotted(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"policy_kwargs.core_kwargs.k": 3}`` -> ``{"policy_kwargs": {"core_kwargs": {"k": 3}}}``."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        if any(not part for part in parts):
            raise ValueError(f"bad override key {key!r}")
        node = nested
        for part in parts[:-1]:
            existing = node.get(part)
            if not isinstance(existing, dict):
                existing = node[part] = {}
            node = existing
        leaf = parts[-1]
        if isinstance(value, Mapping) and isinstance(node.get(leaf), dict):
            node[leaf] = _deep_merge(node[leaf], value)
        else:
            node[leaf] = value
    return nested


def _core_section(data: Mapping[str, Any], core: str, fallback: str | None, where: str) -> dict[str, Any]:
    """``default`` deep-merged with ``core``'s section (or, for a registered core without one,
    ``fallback``'s); a mapping without sections is already flat hyperparameters."""
    known = {"default", *core_names(), *BUILTIN_SECTIONS}
    sections = set(data) & known
    if not sections:
        return {k: v for k, v in data.items() if k != ENVS_SECTION}
    stray = sorted(set(data) - sections - {ENVS_SECTION})
    if stray:
        raise ValueError(
            f"unknown section {stray[0]!r} in {where}; allowed sections: default, {', '.join(core_names())}, "
            f"{ENVS_SECTION} (a section for a core of your own needs rimrl.cores.register_core first)"
        )
    if core in data or fallback is None:
        return _deep_merge(data.get("default") or {}, data.get(core) or {})
    # A registered core borrowing another core's section takes its PPO settings and width, not
    # its core_kwargs (those are the other core's constructor arguments).
    borrowed = copy.deepcopy(data.get(fallback) or {})
    if isinstance(borrowed.get("policy_kwargs"), dict):
        borrowed["policy_kwargs"].pop("core_kwargs", None)
    return _deep_merge(data.get("default") or {}, borrowed)


def resolve_hyperparams(
    env_family_or_id: str,
    core: str,
    preset: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_imports: bool = False,
    env_id: str | None = None,
) -> dict[str, Any]:
    """Merged, validated RecurrentPPO keyword arguments for ``core`` on an env family.

    :param env_family_or_id: ``"minigrid"``, ``"atari"``, ``"vector"``, ``"image"`` or an env id (its
        family's preset, then the preset's ``envs.<id>`` settings if any).
    :param core: ``"lstm"``, ``"gru"``, ``"rim"``, ``"srm"`` or a registered core (which uses its
        own section, else its ``preset`` core's; see :func:`rimrl.cores.register_core`).
    :param preset: ``None`` (the family's ``configs/<family>.yml``), a preset name or YAML path, or
        a mapping with the same layout (``default`` + per-core sections, or a flat mapping).
    :param overrides: merged last. Keys are top-level RecurrentPPO arguments (``"learning_rate"``)
        or dotted paths into ``policy_kwargs`` (``"policy_kwargs.core_kwargs.k"``); nested
        mappings deep-merge.
    :param allow_imports: let ``policy_kwargs.*_class`` name modules outside
        :data:`ALLOWED_IMPORTS` (importing runs the module's code: only for presets you trust).
    :param env_id: the env id whose ``envs.<id>`` preset settings apply when
        ``env_family_or_id`` is a family (an id given there is used itself).
    :return: keyword arguments for ``RecurrentPPO`` plus ``n_envs`` (pop it before passing them on;
        :func:`rimrl.agents.make_agent` does). Schedules are callables.
    :raises ValueError: an unknown key (naming it and listing the allowed ones) or a bad value.
    """
    spec = core_spec(core)  # UnknownCoreError (a ValueError) for an unregistered name
    family = resolve_family(env_family_or_id)
    data = load_preset(PRESET_FILE_OF_FAMILY.get(family, family) if preset is None else preset)
    params = _core_section(data, spec.name, spec.preset, "preset")
    if env_family_or_id not in FAMILIES and env_family_or_id not in PRESET_FILE_OF_FAMILY:
        env_id = env_family_or_id
    per_env = data.get(ENVS_SECTION) or {}
    if not isinstance(per_env, Mapping):
        raise ValueError(f"section {ENVS_SECTION!r} of the preset must map env ids to settings, got {per_env!r}")
    if env_id is not None and env_id in per_env:
        env_data = per_env[env_id] or {}
        if not isinstance(env_data, Mapping):
            raise ValueError(f"preset settings for env {env_id!r} must be a mapping, got {env_data!r}")
        params = _deep_merge(params, _core_section(dict(env_data), spec.name, spec.preset, f"preset {ENVS_SECTION}.{env_id}"))
    params = _deep_merge(params, _expand_dotted(overrides or {}))

    _check_keys(params, allowed_hyperparams(), "hyperparameters")
    if not isinstance(params.get("policy_kwargs") or {}, Mapping):
        raise ValueError(f"policy_kwargs must be a mapping, got {params['policy_kwargs']!r}")
    policy_kwargs = dict(params.get("policy_kwargs") or {})
    _check_keys(policy_kwargs, allowed_policy_kwargs(), "policy_kwargs")
    if "core_kwargs" in policy_kwargs:
        core_kwargs = policy_kwargs["core_kwargs"] or {}
        if not isinstance(core_kwargs, Mapping):
            raise ValueError(f"policy_kwargs.core_kwargs must be a mapping, got {core_kwargs!r}")
        allowed = allowed_core_kwargs(spec.name)
        if allowed is not None:
            _check_keys(core_kwargs, allowed, f"policy_kwargs.core_kwargs for core {core!r}")
        policy_kwargs["core_kwargs"] = dict(core_kwargs)
    _convert_policy_kwargs(policy_kwargs, allow_imports)
    if policy_kwargs or "policy_kwargs" in params:
        params["policy_kwargs"] = policy_kwargs
    for key in _SCHEDULE_KEYS & set(params):
        if params[key] is not None:
            params[key] = parse_schedule(params[key])
    if "n_envs" in params and (not isinstance(params["n_envs"], int) or params["n_envs"] < 1):
        raise ValueError(f"n_envs must be an integer >= 1, got {params['n_envs']!r}")
    return params


def preset_n_envs(
    env_family_or_id: str,
    core: str = "lstm",
    preset: str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    allow_imports: bool = False,
) -> int:
    """The number of parallel envs the preset asks for (default 8 when it names none)."""
    return int(resolve_hyperparams(env_family_or_id, core, preset, overrides, allow_imports).get("n_envs", 8))
