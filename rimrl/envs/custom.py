"""Envs from outside rimrl: packages imported to register ids, and user env wrappers.

- :func:`import_gym_packages`: ``train.py --gym-packages my_envs`` imports ``my_envs`` so that
  the ids it registers with gymnasium (and any core it registers with
  :func:`rimrl.cores.register_core`) exist in this process, as rl-zoo3 does.
- :func:`resolve_wrappers`: ``--env-wrapper pkg.mod:Class`` / YAML ``env_wrapper`` ->
  callables ``env -> wrapped env``, applied to every env :func:`rimrl.envs.make_env` builds.

A wrapper setting (a *wrapper spec*) is one of, or a list of:

- ``"pkg.mod:Class"`` (or ``"pkg.mod.Class"``): ``Class(env)``;
- ``{"pkg.mod:Class": {"arg": 1}}``: ``Class(env, arg=1)`` (rl-zoo3's YAML spelling);
- a class or callable (Python API only): ``wrapper(env)``.

Importing runs a module's code. Who may name which module is the caller's decision (see
``docs/train.md``): train.py imports what is typed on its command line and checks what comes
from a file against :data:`WRAPPER_IMPORTS` unless ``--allow-imports`` is given.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym

__all__ = [
    "WRAPPER_IMPORTS",
    "import_gym_packages",
    "normalize_wrappers",
    "resolve_wrappers",
    "wrapper_modules",
]

#: Modules whose wrappers a *file* (``--config``) may name without ``--allow-imports``: rimrl's
#: class allow-list plus gymnasium (whose wrappers ship with it).
WRAPPER_IMPORTS = ("gymnasium", "torch.nn", "torch.optim", "stable_baselines3", "sb3_contrib", "rimrl")

WrapperSpec = Any  # str | Mapping[str, Mapping] | Callable | a list of these


def import_gym_packages(packages: Sequence[str]) -> None:
    """``importlib.import_module`` each name, so the env ids (and cores) it registers exist.

    :raises ValueError: a name that does not import (one line, naming it and the error).
    """
    for package in packages:
        if not isinstance(package, str) or not package:
            raise ValueError(f"gym package names must be non-empty strings, got {package!r}")
        try:
            importlib.import_module(package)
        except Exception as error:  # ImportError, or the package's own code failing
            text = " ".join(str(error).split())
            raise ValueError(f"cannot import gym package {package!r}: {type(error).__name__}: {text}") from None


def normalize_wrappers(spec: WrapperSpec) -> list[tuple[Any, dict[str, Any]]]:
    """A wrapper spec -> ``[(path or callable, kwargs), ...]`` in application order.

    :raises ValueError: anything else (e.g. a number, kwargs that are not a mapping).
    """
    if spec is None:
        return []
    if isinstance(spec, (str, bytes)) or callable(spec):
        if isinstance(spec, bytes) or (isinstance(spec, str) and not spec.strip()):
            raise ValueError(f"bad env wrapper {spec!r}: write 'package.module:Class'")
        return [(spec, {})]
    if isinstance(spec, Mapping):
        out = []
        for target, kwargs in spec.items():
            if kwargs is not None and not isinstance(kwargs, Mapping):
                raise ValueError(f"arguments of env wrapper {target!r} must be a mapping, got {kwargs!r}")
            out.extend((item, {**extra, **dict(kwargs or {})}) for item, extra in normalize_wrappers(target))
        return out
    if isinstance(spec, (list, tuple)):
        return [pair for item in spec for pair in normalize_wrappers(item)]
    raise ValueError(f"bad env wrapper {spec!r}: give 'package.module:Class', {{'package.module:Class': {{...}}}} or a list")


def wrapper_modules(spec: WrapperSpec) -> list[str]:
    """The modules a wrapper spec would import (its string entries)."""
    modules = []
    for target, _ in normalize_wrappers(spec):
        if isinstance(target, str):
            module, _, name = target.partition(":")
            modules.append(module if name else target.rpartition(".")[0])
    return modules


def resolve_wrappers(
    spec: WrapperSpec, allow_imports: bool = True, allowed: tuple[str, ...] = WRAPPER_IMPORTS
) -> list[Callable[[gym.Env], gym.Env]]:
    """Import a wrapper spec: callables ``env -> wrapped env`` in application order.

    :param allow_imports: import any module (the caller vouches for it); ``False``: only modules
        under ``allowed``, checked before anything is imported.
    :raises ValueError: a disallowed module, a path that does not import, or a non-callable.
    """
    from rimrl.agents.presets import import_object  # lazy: rimrl.agents imports rimrl.envs

    wrappers = []
    for target, kwargs in normalize_wrappers(spec):
        if isinstance(target, str):
            target = import_object(target, allow_imports=allow_imports, what="env wrapper", allowed=allowed)
        if not callable(target):
            raise ValueError(f"env wrapper {target!r} is not callable")
        wrappers.append(functools.partial(target, **kwargs) if kwargs else target)
    return wrappers


def apply_wrappers(env: gym.Env, wrappers: Sequence[Callable[[gym.Env], gym.Env]]) -> gym.Env:
    """``wrappers[-1](...wrappers[0](env))``; each must return a ``gymnasium.Env``."""
    for wrapper in wrappers:
        env = wrapper(env)
        if not isinstance(env, gym.Env):
            raise ValueError(f"env wrapper {wrapper!r} returned a {type(env).__name__}, not a gymnasium.Env")
    return env
