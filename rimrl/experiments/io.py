"""Files and provenance of a run: YAML/JSON I/O (atomic), the run-directory naming, package
versions and the git commit. Shared by the library (:mod:`rimrl.experiments`) and the CLIs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rimrl.agents.presets import read_yaml_mapping
from rimrl.agents.training import atomic_replace
from rimrl.experiments.errors import ExperimentInputError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "env_dirname",
    "git_info",
    "one_line",
    "package_versions",
    "read_yaml",
    "run_dir_for",
    "to_yaml_safe",
    "write_json",
    "write_yaml",
]


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def read_yaml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Read a YAML mapping; a missing file, a parse error or a non-mapping is an
    :class:`~rimrl.experiments.errors.ExperimentInputError`."""
    return read_yaml_mapping(path, what=what, error=ExperimentInputError)


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
    """Atomically write ``data`` to ``path`` (see :func:`rimrl.agents.training.atomic_replace`)."""
    return atomic_replace(lambda tmp: tmp.write_bytes(data), path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path`` (see :func:`rimrl.agents.training.atomic_replace`)."""
    return atomic_write_bytes(path, text.encode())


def write_yaml(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Atomically write ``data`` (made YAML-safe, key order kept) as YAML."""
    return atomic_write_text(path, yaml.safe_dump(to_yaml_safe(data), sort_keys=False, default_flow_style=False))


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Atomically write ``data`` (made JSON-safe) as indented JSON."""
    return atomic_write_text(path, json.dumps(to_yaml_safe(data), indent=2) + "\n")


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
