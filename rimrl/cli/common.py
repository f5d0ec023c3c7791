"""Helpers shared by the rimrl command lines (train, evaluate).

- :func:`fail` prints ``error: <message>`` (one line) to stderr and exits with status 2;
- :func:`main_guard` wraps a ``main(argv) -> int`` so the expected errors (:class:`CLIError`,
  and, for code that opts in, ``ValueError``) end that way, without a traceback;
- :class:`ArgumentParser` reports argparse's own errors the same way;
- small utilities the CLIs share: ``key=value`` parsing, YAML I/O, atomic file writes, the run
  directory naming, package versions and the git commit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from rimrl.agents.presets import read_yaml_mapping
from rimrl.agents.training import atomic_replace

__all__ = [
    "EXIT_USAGE",
    "ArgumentParser",
    "CLIError",
    "atomic_write_bytes",
    "atomic_write_text",
    "env_dirname",
    "fail",
    "git_info",
    "main_guard",
    "one_line",
    "package_versions",
    "parse_key_values",
    "parse_scalar",
    "read_yaml",
    "run_dir_for",
    "to_yaml_safe",
    "write_json",
    "write_yaml",
]

#: Exit status for bad input (argparse's convention).
EXIT_USAGE = 2
#: Set this environment variable to ``1`` to see the traceback behind an ``error:`` line.
DEBUG_ENV = "RIMRL_DEBUG"

_F = TypeVar("_F", bound=Callable[..., int])
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class CLIError(Exception):
    """An expected, user-facing error: :func:`main_guard` prints it as one ``error:`` line, exit 2."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def fail(message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: <message>`` (one line) to stderr and exit (status 2 unless told otherwise)."""
    sys.stdout.flush()
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


def main_guard(
    func: _F | None = None, *, expected: tuple[type[BaseException], ...] = (CLIError,)
) -> _F | Callable[[_F], _F]:
    """Decorate a CLI ``main``: the ``expected`` exceptions become a one-line ``error:`` and exit 2.

    :class:`CLIError` is always expected (its ``exit_code`` is used). Pass e.g.
    ``expected=(CLIError, ValueError)`` to treat library ``ValueError``\\ s as bad input too.
    ``KeyboardInterrupt`` exits with 130 and no traceback. Anything else propagates (a bug shows
    its traceback). With ``RIMRL_DEBUG=1`` the traceback is printed before the error line.

    Usable bare (``@main_guard``) or with arguments (``@main_guard(expected=...)``).
    """

    def decorate(inner: _F) -> _F:
        @functools.wraps(inner)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            try:
                return inner(*args, **kwargs)
            except expected as error:
                if os.environ.get(DEBUG_ENV) == "1":
                    import traceback

                    traceback.print_exc()
                code = error.exit_code if isinstance(error, CLIError) else EXIT_USAGE
                fail(str(error) or type(error).__name__, exit_code=code)
            except CLIError as error:
                fail(str(error), exit_code=error.exit_code)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr, flush=True)
                return 130

        return wrapper  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error: ...`` line (exit 2), no usage dump."""

    def error(self, message: str) -> NoReturn:  # noqa: D102 - argparse API
        fail(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------------------------
# Values and files
# ----------------------------------------------------------------------------------------------


def parse_scalar(text: str) -> Any:
    """Type a command-line value with ``yaml.safe_load`` (``3`` -> int, ``true`` -> bool, ``[1, 2]``
    -> list, ``{a: 1}`` -> dict, ``null`` -> None), also reading ``1e-3`` as a float (PyYAML reads
    exponents without a dot as strings)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CLIError(f"cannot parse value {text!r}: {one_line(error)}") from None
    if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
        return float(value)
    return value


def parse_key_values(items: Iterable[str], what: str = "--hyperparams") -> dict[str, Any]:
    """``["n_steps=64", "policy_kwargs.core_kwargs.k=3"]`` -> ``{"n_steps": 64, "policy_kwargs.core_kwargs.k": 3}``."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"{what} expects key=value items, got {item!r}")
        parsed[key] = parse_scalar(text)
    return parsed


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a parse error or a non-mapping is a :class:`CLIError`."""
    return read_yaml_mapping(path, what=what, error=CLIError)


def to_yaml_safe(value: Any) -> Any:
    """Recursively turn ``value`` into plain YAML data: schedules -> ``"lin_<x>"``, classes ->
    ``"module:Name"`` (activations by name), tuples -> lists, numpy scalars -> Python numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_yaml_safe(v) for v in value]
    initial = getattr(value, "initial", None)
    if type(value).__name__ == "LinearDecay" and initial is not None:
        return f"lin_{initial}"
    if isinstance(value, type):
        import torch.nn as nn

        if issubclass(value, nn.Module) and value.__module__.startswith("torch.nn"):
            activations = {"Tanh": "tanh", "ReLU": "relu", "ELU": "elu", "GELU": "gelu", "LeakyReLU": "leaky_relu", "SiLU": "silu"}
            if value.__name__ in activations:
                return activations[value.__name__]
        return f"{value.__module__}:{value.__qualname__}"
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        try:
            return to_yaml_safe(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_replace`)."""
    return atomic_replace(lambda tmp: tmp.write_bytes(data), path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path`` (see :func:`atomic_replace`)."""
    return atomic_write_bytes(path, text.encode())


def write_yaml(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Atomically write ``data`` (made YAML-safe, key order kept) as YAML."""
    return atomic_write_text(path, yaml.safe_dump(to_yaml_safe(data), sort_keys=False, default_flow_style=False))


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Atomically write ``data`` (made JSON-safe) as indented JSON."""
    return atomic_write_text(path, json.dumps(to_yaml_safe(data), indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Runs and provenance
# ----------------------------------------------------------------------------------------------


def env_dirname(env_id: str) -> str:
    """The folder name for an env id: ``"rimrl/Pickup-Train-v0"`` -> ``"rimrl-Pickup-Train-v0"``."""
    return env_id.replace("/", "-").replace(os.sep, "-")


def run_dir_for(log_folder: str | Path, env_id: str, core: str, seed: int) -> Path:
    """``<log_folder>/<env with "/" -> "-">/<core>/seed<seed>`` (the layout train writes and evaluate reads)."""
    return Path(log_folder) / env_dirname(env_id) / core / f"seed{seed}"


def package_versions(names: Sequence[str] = (
    "rimrl", "torch", "numpy", "stable_baselines3", "sb3_contrib", "gymnasium", "minigrid", "ale_py",
)) -> dict[str, str | None]:
    """``{"python": "3.11.x", name: version or None}`` for the packages a run depends on."""
    from importlib import metadata

    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            module = sys.modules.get(name)
            versions[name] = getattr(module, "__version__", None)
    return versions


def git_info(path: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` for the repository holding ``path``
    (default: this package's source tree)."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where, capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}
