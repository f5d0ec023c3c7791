"""Weights-only copies of saved agents: share and load them without pickle.

SB3's ``model.zip`` stores the policy class, the spaces, the schedules and every other attribute
with cloudpickle, so loading a zip runs whatever code its author put there. Beside each ``X.zip``
rimrl also writes two files that need no pickle:

- ``X.weights.pt``: ``torch.save`` of ``{"format": WEIGHTS_FORMAT, "params": {"policy":
  <state_dict>, "policy.optimizer": <state_dict>}}``: tensors, numbers, strings and plain
  containers only, read back with ``torch.load(weights_only=True)``, which refuses anything else;
- ``X.spec.json``: what rebuilds the agent: the policy by registry name (never an import path),
  the observation/action spaces, ``policy_kwargs`` in their YAML spelling (activations by name,
  classes as ``'pkg.mod:Name'`` that load through the import allow-list), the RecurrentPPO
  hyperparameters (schedules as numbers or ``"lin_<x>"``), ``n_envs``, ``num_timesteps`` and the
  weights file's SHA-256 (so a pair torn by a crash, or mixed up by hand, is refused).

:func:`save_weights` writes both (atomically); :func:`load_safe` rebuilds the agent from them.
``rimrl.agents.load_agent(path, safe=True)`` and ``evaluate.py --safe`` go through it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule
from stable_baselines3.common.vec_env import VecEnv

from rimrl.agents.factory import RUN_MODEL_FILE, AgentLoadError, check_core_registered, space_mismatch
from rimrl.agents.presets import (
    _ACTIVATIONS,
    ALLOWED_IMPORTS,
    LinearDecay,
    _convert_policy_kwargs,
    import_allowed,
    parse_schedule,
)
from rimrl.agents.training import atomic_replace

__all__ = [
    "SPEC_FORMAT",
    "SPEC_SUFFIX",
    "WEIGHTS_FORMAT",
    "WEIGHTS_SUFFIX",
    "SpecError",
    "UnsafeLoadWarning",
    "agent_spec",
    "has_weights",
    "in_run_directory",
    "load_safe",
    "remove_weights",
    "save_weights",
    "space_from_json",
    "space_to_json",
    "warn_unsafe",
    "weights_paths",
]

WEIGHTS_SUFFIX = ".weights.pt"
SPEC_SUFFIX = ".spec.json"
WEIGHTS_FORMAT = "rimrl-weights/1"
SPEC_FORMAT = "rimrl-agent-spec/1"
#: The file train.py writes into each run directory; a zip beside one is "in a run directory".
RUN_CONFIG_FILE = "config.yml"

#: RecurrentPPO arguments the spec records (those that matter for prediction and for training on).
HYPERPARAMS = (
    "learning_rate", "n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "clip_range", "clip_range_vf",
    "normalize_advantage", "ent_coef", "vf_coef", "max_grad_norm", "use_sde", "sde_sample_freq", "target_kl",
    "stats_window_size",
)
_SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf")
_CLASS_KEYS = ("features_extractor_class", "optimizer_class")


class SpecError(ValueError):
    """The agent holds something (a custom schedule, an unnamed class, ...) that the JSON spec
    cannot describe: no weights-only copy can be written for it."""


class UnsafeLoadWarning(UserWarning):
    """A saved agent is being unpickled (it has no weights-only copy)."""


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


def _base(path: str | Path) -> Path:
    """``X.zip``, ``X``, ``X.weights.pt``, ``X.spec.json`` -> ``X``; a directory -> ``<dir>/model``."""
    path = Path(path)
    if path.is_dir():
        return path / Path(RUN_MODEL_FILE).stem
    for suffix in (WEIGHTS_SUFFIX, SPEC_SUFFIX, ".zip"):
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[: -len(suffix)])
    return path


def weights_paths(path: str | Path) -> tuple[Path, Path]:
    """``(X.weights.pt, X.spec.json)`` for ``X.zip`` (or ``X``, a run directory, either file)."""
    base = _base(path)
    return base.with_name(base.name + WEIGHTS_SUFFIX), base.with_name(base.name + SPEC_SUFFIX)


def has_weights(path: str | Path) -> bool:
    """Whether ``path``'s weights file exists (the spec is checked when loading)."""
    return weights_paths(path)[0].is_file()


def remove_weights(path: str | Path) -> None:
    """Delete ``path``'s weights-only pair if present (e.g. with a pruned checkpoint)."""
    for file in weights_paths(path):
        file.unlink(missing_ok=True)


def in_run_directory(path: str | Path) -> bool:
    """Whether ``path`` (a zip, or a run directory) sits in a run directory: ``config.yml`` beside it.

    This is how evaluate.py tells the user's own runs from shared files. It cannot tell a copied
    run directory from one trained here; weights-only loading is preferred whenever possible.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    return (folder / RUN_CONFIG_FILE).is_file()


_WARNED: set[Path] = set()


def warn_unsafe(path: str | Path) -> None:
    """Emit one :class:`UnsafeLoadWarning` per file and process: ``path`` is about to be unpickled."""
    resolved = Path(path).resolve()
    if resolved in _WARNED:
        return
    _WARNED.add(resolved)
    warnings.warn(
        f"unpickling {str(path)!r} (it has no weights-only file {weights_paths(path)[0].name!r}): a pickled "
        "model can run arbitrary code; load only files you trust, or pass --safe to refuse",
        UnsafeLoadWarning,
        stacklevel=3,
    )


# ----------------------------------------------------------------------------------------------
# Spaces
# ----------------------------------------------------------------------------------------------


def _bound(array: np.ndarray) -> Any:
    """A Box bound as JSON: one number when uniform, else nested lists (``inf`` is JSON ``Infinity``)."""
    flat = array.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return array.tolist()


def space_to_json(space: spaces.Space) -> dict[str, Any]:
    """A JSON description of a Box, Discrete, MultiDiscrete, MultiBinary, Dict or Tuple space.

    ``Box(0, 255, (4, 84, 84), uint8)`` -> ``{"type": "Box", "shape": [4, 84, 84], "dtype":
    "uint8", "low": 0, "high": 255}``.

    :raises SpecError: another kind of space.
    """
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": _bound(space.low), "high": _bound(space.high)}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist(),
                "dtype": str(space.dtype)}
    if isinstance(space, spaces.MultiBinary):
        return {"type": "MultiBinary", "n": np.asarray(space.n).tolist()}
    if isinstance(space, spaces.Dict):  # a list of pairs keeps the key order
        return {"type": "Dict", "spaces": [[key, space_to_json(sub)] for key, sub in space.spaces.items()]}
    if isinstance(space, spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_json(sub) for sub in space.spaces]}
    raise SpecError(f"cannot describe a {type(space).__name__} space in JSON")


def space_from_json(data: Mapping[str, Any]) -> spaces.Space:
    """The inverse of :func:`space_to_json`.

    :raises ValueError: not a description it writes (``AgentLoadError`` wraps it when loading).
    """
    kind = data.get("type")
    if kind == "Box":
        dtype = np.dtype(data["dtype"])
        shape = tuple(int(n) for n in data["shape"])
        low = np.array(data["low"], dtype=dtype) if isinstance(data["low"], list) else data["low"]
        high = np.array(data["high"], dtype=dtype) if isinstance(data["high"], list) else data["high"]
        return spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data.get("start", 0)))
    if kind == "MultiDiscrete":
        return spaces.MultiDiscrete(data["nvec"], dtype=data.get("dtype", "int64"), start=data.get("start"))
    if kind == "MultiBinary":
        return spaces.MultiBinary(data["n"])
    if kind == "Dict":
        return spaces.Dict({str(key): space_from_json(sub) for key, sub in data["spaces"]})
    if kind == "Tuple":
        return spaces.Tuple([space_from_json(sub) for sub in data["spaces"]])
    raise ValueError(f"unknown space type {kind!r}")


# ----------------------------------------------------------------------------------------------
# Policy classes, policy_kwargs and hyperparameters
# ----------------------------------------------------------------------------------------------


def _policy_registry() -> dict[str, type[RecurrentActorCriticPolicy]]:
    """Policy classes a spec may name: rimrl's by core name (``"modular"``: the class registered
    cores run in, their name in the spec's ``core``), sb3-contrib's by their aliases."""
    from sb3_contrib.ppo_recurrent import CnnLstmPolicy, MlpLstmPolicy, MultiInputLstmPolicy

    from rimrl.policies import POLICIES, ModularRecurrentPolicy

    return {**POLICIES, "modular": ModularRecurrentPolicy, "MlpLstmPolicy": MlpLstmPolicy,
            "CnnLstmPolicy": CnnLstmPolicy, "MultiInputLstmPolicy": MultiInputLstmPolicy}


def _modular() -> type:
    from rimrl.policies import ModularRecurrentPolicy

    return ModularRecurrentPolicy


def _policy_name(policy: Any) -> str:
    for name, cls in _policy_registry().items():
        if type(policy) is cls:
            return name
    raise SpecError(f"policy class {type(policy).__qualname__} is not one of rimrl's or sb3-contrib's")


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples become lists, numpy scalars numbers), or :class:`SpecError`."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise SpecError(f"{where} has non-string keys")
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise SpecError(f"{where} = {value!r} cannot be written without pickle")


def _policy_kwargs_to_json(policy_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``policy_kwargs`` in the preset spelling: activations by name, classes as ``'pkg.mod:Name'``."""
    data = dict(policy_kwargs)
    activation = data.get("activation_fn")
    if activation is not None:
        names = {cls: name for name, cls in _ACTIVATIONS.items()}
        if activation not in names:
            raise SpecError(f"policy_kwargs.activation_fn {activation!r} has no name (allowed: {', '.join(_ACTIVATIONS)})")
        data["activation_fn"] = names[activation]
    for key in _CLASS_KEYS:
        if isinstance(data.get(key), type):
            data[key] = f"{data[key].__module__}:{data[key].__qualname__}"
    data.pop("device", None)
    return _plain(data, "policy_kwargs")


def _schedule_to_json(value: Any, name: str) -> float | str | None:
    """A number, SB3's constant/float wrappers or :class:`LinearDecay` -> ``float`` / ``"lin_<x>"``."""
    while isinstance(value, FloatSchedule):
        value = value.value_schedule
    if value is None:
        return None
    if isinstance(value, ConstantSchedule):
        value = value.val
    if isinstance(value, LinearDecay):
        return f"lin_{value.initial!r}"
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    raise SpecError(f"{name} is a {type(value).__name__} schedule: only numbers and 'lin_<x>' can be written without pickle")


def _hyperparams_to_json(model: RecurrentPPO) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in HYPERPARAMS:
        value = getattr(model, name) if hasattr(model, name) else getattr(model, f"_{name}")
        data[name] = _schedule_to_json(value, name) if name in _SCHEDULES else _plain(value, name)
    return data


def _versions() -> dict[str, str]:
    import sb3_contrib
    import stable_baselines3

    import rimrl

    return {"rimrl": rimrl.__version__, "torch": th.__version__, "stable_baselines3": stable_baselines3.__version__,
            "sb3_contrib": sb3_contrib.__version__}


def agent_spec(model: RecurrentPPO) -> dict[str, Any]:
    """The JSON spec of ``model`` (without the weights' hash, which :func:`save_weights` adds).

    :raises SpecError: the model holds something the spec cannot describe.
    """
    return {
        "format": SPEC_FORMAT,
        "algorithm": "RecurrentPPO",
        "policy": _policy_name(model.policy),
        "core": getattr(model.policy, "core_name", "lstm"),
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "policy_kwargs": _policy_kwargs_to_json(model.policy_kwargs or {}),
        "hyperparams": _hyperparams_to_json(model),
        "n_envs": int(model.n_envs),
        "num_timesteps": int(model.num_timesteps),
        "seed": model.seed if isinstance(model.seed, int) else None,
        "versions": _versions(),
    }


# ----------------------------------------------------------------------------------------------
# Save and load
# ----------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: RecurrentPPO, path: str | Path) -> tuple[Path, Path]:
    """Write ``X.weights.pt`` then ``X.spec.json`` beside ``path`` (``X.zip`` or ``X``), each atomically.

    :return: the two paths.
    :raises SpecError: the model cannot be described without pickle (nothing is written).
    """
    weights_path, spec_path = weights_paths(path)
    spec = agent_spec(model)  # first: a SpecError leaves the files untouched
    payload = {"format": WEIGHTS_FORMAT, "params": model.get_parameters()}
    digest: dict[str, str] = {}

    def write_weights(tmp: Path) -> None:
        th.save(payload, tmp)
        digest["sha256"] = _sha256(tmp)

    atomic_replace(write_weights, weights_path)
    spec.update(weights_file=weights_path.name, weights_sha256=digest["sha256"])
    text = json.dumps(spec, indent=1) + "\n"
    atomic_replace(lambda tmp: tmp.write_text(text), spec_path)
    return weights_path, spec_path


def _read_spec(spec_path: Path, weights_path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AgentLoadError(f"cannot read {str(spec_path)!r}: {' '.join(str(error).split())}") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise AgentLoadError(f"{str(spec_path)!r} is not a rimrl agent spec (format {SPEC_FORMAT!r})")
    if spec.get("weights_sha256") != _sha256(weights_path):
        raise AgentLoadError(f"{str(weights_path)!r} does not match {str(spec_path)!r} (SHA-256 differs): save them together")
    return spec


def _read_weights(weights_path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: tensors and plain containers, anything pickled is refused."""
    try:
        payload = th.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for refused objects; RuntimeError/EOFError for torn files
        lines = [line.strip() for line in str(error).splitlines() if "WeightsUnpickler error" in line]
        reason = lines[0].split(". ")[0] if lines else " ".join(str(error).split())[:200]
        raise AgentLoadError(
            f"refusing {str(weights_path)!r}: torch.load(weights_only=True) failed ({type(error).__name__}: {reason})"
        ) from None
    params = payload.get("params") if isinstance(payload, dict) else None
    if not isinstance(params, dict) or payload.get("format") != WEIGHTS_FORMAT or "policy" not in params:
        raise AgentLoadError(f"{str(weights_path)!r} is not a rimrl weights file (format {WEIGHTS_FORMAT!r})")
    return params


def load_safe(path: str | Path, env: str | gym.Env | VecEnv | None = None, device: str = "auto") -> RecurrentPPO:
    """Rebuild an agent from ``X.weights.pt`` + ``X.spec.json`` without unpickling anything.

    :param path: ``X.zip`` (never opened), ``X``, either weights-only file, or a run directory
        (its ``model.*``).
    :param env: as for :func:`rimrl.agents.load_agent`; its spaces must equal the saved ones.
    :raises AgentLoadError: a missing file, a spec or weights file that does not parse, anything
        pickled in the weights file, a class outside the import allow-list, a space mismatch.
    """
    weights_path, spec_path = weights_paths(path)
    for file in (weights_path, spec_path):
        if not file.is_file():
            raise AgentLoadError(
                f"no weights-only copy of {str(path)!r}: {str(file)!r} is missing (rimrl writes {weights_path.name} and "
                f"{spec_path.name} beside each model it saves; rimrl.agents.save_weights writes them for a trusted model)"
            )
    spec = _read_spec(spec_path, weights_path)
    if spec.get("policy") in _policy_registry() and issubclass(_policy_registry()[spec["policy"]], _modular()):
        check_core_registered(spec.get("core"), spec_path)
    params = _read_weights(weights_path)
    saved_kwargs = spec.get("policy_kwargs")
    for key in _CLASS_KEYS:  # the allow-list is never widened here (no allow_imports)
        value = saved_kwargs.get(key) if isinstance(saved_kwargs, dict) else None
        if isinstance(value, str) and not import_allowed(module := value.partition(":")[0]):
            raise AgentLoadError(
                f"refusing to import {module!r} for policy_kwargs.{key} of {str(spec_path)!r}: weights-only loading "
                f"imports only from {', '.join(ALLOWED_IMPORTS)} (load the zip with --trust / safe=False if you trust it)"
            )
    try:
        policy_class = _policy_registry()[spec["policy"]]
        observation_space = space_from_json(spec["observation_space"])
        action_space = space_from_json(spec["action_space"])
        policy_kwargs = dict(spec.get("policy_kwargs") or {})
        _convert_policy_kwargs(policy_kwargs, allow_imports=False)
        hyperparams = {key: spec["hyperparams"][key] for key in HYPERPARAMS if key in spec["hyperparams"]}
        for key in _SCHEDULES:
            if hyperparams.get(key) is not None:
                hyperparams[key] = parse_schedule(hyperparams[key])
        n_envs = int(spec["n_envs"])
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise AgentLoadError(f"bad spec {str(spec_path)!r}: {type(error).__name__}: {' '.join(str(error).split())}") from None

    if env is not None:
        if isinstance(env, str):
            from rimrl.envs import make_env

            env = make_env(env, n_envs=n_envs)
        env = RecurrentPPO._wrap_env(env, verbose=0)
        for kind, saved in (("observation", observation_space), ("action", action_space)):
            given = getattr(env, f"{kind}_space")
            if saved != given:
                raise space_mismatch(kind, given, saved, repr(str(spec_path)))
    try:
        model = RecurrentPPO(
            policy_class, env, policy_kwargs=policy_kwargs, seed=spec.get("seed"), device=device,
            _init_setup_model=False, **hyperparams,
        )
        if env is None:
            model.observation_space, model.action_space, model.n_envs = observation_space, action_space, n_envs
        model.num_timesteps = int(spec.get("num_timesteps", 0))
        model._setup_model()
        model.set_parameters(params, exact_match=True, device=device)
    except Exception as error:  # shapes that do not fit, bad hyperparameters, ...
        raise AgentLoadError(
            f"could not rebuild the agent of {str(spec_path)!r}: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        ) from None
    return model
