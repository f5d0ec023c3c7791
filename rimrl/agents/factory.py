"""Build a RecurrentPPO agent from a preset, and load a saved one with clear errors."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import gymnasium as gym
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import VecEnv

from rimrl.agents.presets import resolve_hyperparams
from rimrl.cores import UnknownCoreError, is_registered
from rimrl.policies import is_minigrid_space, policy_for_core

__all__ = ["AgentLoadError", "check_core_registered", "infer_family", "load_agent", "make_agent"]


class AgentLoadError(ValueError):
    """A saved agent could not be loaded: missing/corrupt file, not a RecurrentPPO model, or spaces
    that do not match the env it is loaded with. The message is one line."""


def infer_family(observation_space: spaces.Space) -> str:
    """``"minigrid"`` for MiniGrid views, ``"atari"`` for other images, ``"vector"`` otherwise."""
    if is_minigrid_space(observation_space):
        return "minigrid"
    if is_image_space(observation_space):
        return "atari"
    return "vector"


def make_agent(
    env: str | gym.Env | VecEnv,
    core: str = "rim",
    preset: str | Path | dict[str, Any] | None = None,
    seed: int | None = None,
    tensorboard_log: str | None = None,
    verbose: int = 0,
    device: str = "auto",
    allow_imports: bool = False,
    env_id: str | None = None,
    **overrides: Any,
) -> RecurrentPPO:
    """A ``RecurrentPPO`` with the ``core``'s policy and the family preset's hyperparameters.

    :param env: an env id (built with ``rimrl.envs.make_env`` using the preset's ``n_envs``), a
        gymnasium env or an SB3 ``VecEnv`` (its family is inferred from the observation space;
        the preset's ``n_envs`` is then ignored: the env decides).
    :param core: ``"lstm"``, ``"gru"``, ``"rim"``, ``"srm"`` or a core registered with
        :func:`rimrl.cores.register_core` (it runs in :class:`~rimrl.policies.ModularRecurrentPolicy`).
    :param preset: see :func:`rimrl.agents.resolve_hyperparams` (``None``: the family's YAML).
    :param env_id: with an env object, the id it was made from: the preset's ``envs.<id>``
        settings then apply as they do for an id string.
    :param overrides: RecurrentPPO arguments or dotted ``policy_kwargs`` paths, e.g.
        ``make_agent(env, "rim", **{"policy_kwargs.core_kwargs.k": 3, "learning_rate": 1e-4})``.
    :param allow_imports: let ``policy_kwargs.*_class`` import modules outside
        :data:`rimrl.agents.presets.ALLOWED_IMPORTS` (see :func:`rimrl.agents.presets.import_object`).
    :raises ValueError: unknown keys, a disallowed import, or invalid core hyperparameters (e.g.
        ``k > num_units``), raised while the policy is built.
    """
    policy_class, core_policy_kwargs = policy_for_core(core)  # UnknownCoreError (a ValueError)
    family_or_id = env if isinstance(env, str) else infer_family(env.observation_space)
    params = resolve_hyperparams(family_or_id, core, preset=preset, overrides=overrides, allow_imports=allow_imports,
                                 env_id=env_id)
    n_envs = params.pop("n_envs", 8)
    if core_policy_kwargs:
        params["policy_kwargs"] = {**(params.get("policy_kwargs") or {}), **core_policy_kwargs}
    if isinstance(env, str):
        from rimrl.envs import make_env

        env = make_env(env, n_envs=n_envs, seed=0 if seed is None else seed)
    return RecurrentPPO(
        policy_class,
        env,
        seed=seed,
        tensorboard_log=tensorboard_log,
        verbose=verbose,
        device=device,
        **params,
    )


#: The final model's file name inside a run directory written by train.py.
RUN_MODEL_FILE = "model.zip"


def _find_zip(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        candidates = [path / RUN_MODEL_FILE]
    elif path.suffix == ".zip":
        candidates = [path]
    else:
        candidates = [path, path.with_name(path.name + ".zip")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise AgentLoadError(f"no saved agent at {str(path)!r} (looked for {', '.join(str(c) for c in candidates)})")


def describe_space(space: spaces.Space | None) -> str:
    """A short one-line description of a space (``Dict(direction: Discrete(4), image: Box(7, 7, 3)
    uint8)``): gymnasium's own repr of a MiniGrid dict space runs to ~1,700 characters of bounds."""
    if isinstance(space, spaces.Dict):
        return "Dict(" + ", ".join(f"{key}: {describe_space(sub)}" for key, sub in space.spaces.items()) + ")"
    if isinstance(space, spaces.Box):
        return f"Box{tuple(space.shape)} {space.dtype}"
    if isinstance(space, spaces.Discrete):
        return f"Discrete({space.n})"
    if isinstance(space, spaces.MultiDiscrete):
        return f"MultiDiscrete({space.nvec.tolist()})"
    return type(space).__name__


def space_mismatch(kind: str, given: spaces.Space, saved: spaces.Space | None, saved_by: str,
                   env: str = "the env") -> AgentLoadError:
    """The one-line error for an env whose ``kind`` ("observation" / "action") space differs from
    the one the agent at ``saved_by`` was trained with."""
    mine, theirs = describe_space(given), describe_space(saved)
    if mine == theirs:  # same shapes and dtypes: the bounds (or the number of values) differ
        mine, theirs = f"{mine} (bounds differ)", theirs
    return AgentLoadError(f"{kind} space mismatch: {env} has {mine} but {saved_by} was saved with {theirs}")


def check_core_registered(core: Any, path: str | Path) -> None:
    """Raise a one-line :class:`AgentLoadError` if the core a saved agent uses (``None``: not a
    rimrl policy) is not registered in this process."""
    if core is not None and not is_registered(core):
        raise AgentLoadError(
            f"{str(path)!r} uses core {core!r}, which is not registered in this process: call "
            f"rimrl.cores.register_core({core!r}, factory) first (import the module that does; train.py: "
            f"--gym-packages <module>)"
        )


def load_agent(
    path: str | Path,
    env: str | gym.Env | VecEnv | None = None,
    device: str = "auto",
    safe: bool | None = False,
) -> RecurrentPPO:
    """Load a ``RecurrentPPO`` saved with ``model.save(path)``, optionally attached to ``env``.

    A ``.zip`` holds cloudpickled objects: unpickling one runs whatever code it carries. With
    ``safe=True`` the agent is rebuilt from the weights-only files written beside it instead
    (``X.weights.pt`` + ``X.spec.json``, see :mod:`rimrl.agents.safe`) and the zip is never read.

    :param path: the ``.zip`` (the suffix may be omitted, as with SB3), or a run directory
        holding ``model.zip``; with ``safe=True`` also ``X.weights.pt`` / ``X.spec.json``.
    :param env: an env (or env id for ``rimrl.envs.make_env``) whose observation and action
        spaces must equal the saved ones (after SB3's usual image transpose).
    :param safe: ``False``: unpickle the zip (only for files you trust, e.g. your own runs);
        ``True``: weights-only, refusing anything pickled; ``None``: weights-only whenever the
        weights file exists, else unpickle only inside a run directory (``config.yml`` beside the
        zip, with an :class:`~rimrl.agents.safe.UnsafeLoadWarning`) and refuse a bare zip.
    :raises AgentLoadError: missing path, not a zip / corrupt zip, not a RecurrentPPO model, a
        space mismatch; with ``safe``: missing or refused weights-only files.
    """
    if safe is not False:
        from rimrl.agents import safe as weights_only

        if safe or weights_only.has_weights(path):
            return weights_only.load_safe(path, env=env, device=device)
        file = _find_zip(path)
        if not weights_only.in_run_directory(file):
            raise AgentLoadError(
                f"refusing to unpickle {str(file)!r}: it is not in a run directory and has no weights-only "
                f"file {weights_only.weights_paths(file)[0].name!r}; load it with pickle only if you trust it "
                "(evaluate.py --trust, safe=False)"
            )
        weights_only.warn_unsafe(file)
    file = _find_zip(path)
    if not zipfile.is_zipfile(file):
        raise AgentLoadError(f"{str(file)!r} is not a saved agent: not a zip file")
    try:
        data, _, _ = load_from_zip_file(file, device=device)
    except Exception as error:  # SB3 raises ValueError/KeyError/RuntimeError/pickle errors here
        raise AgentLoadError(f"{str(file)!r} is not a readable saved agent ({type(error).__name__}: {error})") from error
    policy_class = (data or {}).get("policy_class")
    if not (isinstance(policy_class, type) and issubclass(policy_class, RecurrentActorCriticPolicy)):
        raise AgentLoadError(f"{str(file)!r} does not hold a RecurrentPPO agent (policy class: {policy_class!r})")
    saved_core = ((data or {}).get("policy_kwargs") or {}).get("core", getattr(policy_class, "default_core", None))
    check_core_registered(saved_core, file)

    if env is not None:
        if isinstance(env, str):
            from rimrl.envs import make_env

            env = make_env(env, n_envs=int(data.get("n_envs", 1)))
        env = RecurrentPPO._wrap_env(env, verbose=0)
        for kind in ("observation", "action"):
            saved, given = data.get(f"{kind}_space"), getattr(env, f"{kind}_space")
            if saved != given:
                raise space_mismatch(kind, given, saved, repr(str(file)))
    try:
        return RecurrentPPO.load(file, env=env, device=device)
    except AgentLoadError:
        raise
    except UnknownCoreError as error:  # a policy class that names its core another way
        check_core_registered(error.name, file)
        raise
    except Exception as error:
        raise AgentLoadError(f"could not load {str(file)!r}: {type(error).__name__}: {error}") from error
