"""What to evaluate: run directories and ``model.zip`` files, resolved to a model, env, core and seed.

A run directory, as written by ``train.py`` (``runs/<env>/<core>/seed<k>/``), holds ``model.zip``
(the final model), ``best_model.zip`` and ``config.yml`` with top-level ``env``, ``core`` and
``seed`` (and optionally ``env_kwargs``). A bare ``model.zip`` is evaluated on ``--env``; its core is
read from the saved policy once loaded, and a ``config.yml`` next to it is used when present.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sb3_contrib import RecurrentPPO

from rimrl.agents.presets import read_yaml_mapping
from rimrl.evaluation.environments import EvaluationInputError

__all__ = ["CONFIG_FILE", "ModelSource", "core_of", "label_sources", "resolve_source", "resolve_sources"]

CONFIG_FILE = "config.yml"
_CHECKPOINTS = {"final": "model.zip", "best": "best_model.zip"}
_SEED_DIR = re.compile(r"^seed(\d+)$")


@dataclass
class ModelSource:
    """One model to evaluate.

    Attributes:
        path: the ``.zip`` to load.
        run_dir: the run directory (None for a zip outside one).
        env_id: the env it was trained on (from ``config.yml``) or ``--env``.
        core: ``"rim"``, ``"lstm"``, ... (None until read from the loaded policy).
        seed: the training seed (None when unknown).
        env_kwargs: the run's env arguments (``config.yml``'s ``env_kwargs``), reused for evaluation.
        eval_deterministic: the action mode of the run's training-time evaluation (``config.yml``'s
            ``eval_deterministic``; None when it does not say), which picked its ``best_model.zip``.
        label: a short unique name for tables (``"rim-seed0"``), set by :func:`label_sources`.
    """

    path: Path
    run_dir: Path | None
    env_id: str | None
    core: str | None
    seed: int | None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    eval_deterministic: bool | None = None
    label: str = ""

    @property
    def run(self) -> str:
        """The run directory, or the zip itself when there is none (the ``run`` column)."""
        return str(self.run_dir if self.run_dir is not None else self.path)


def _seed_of(config: dict[str, Any], run_dir: Path | None) -> int | None:
    seed = config.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    match = _SEED_DIR.match(run_dir.name) if run_dir is not None else None
    return int(match.group(1)) if match else None


def _check_wrapper_imports(wrappers: Any, config_path: Path | None) -> None:
    """A run's ``env_wrapper`` may import only modules under gymnasium/rimrl's allow-list, or ones
    already imported (``--gym-packages``): a ``config.yml`` is a file that travels, and importing a
    module runs its code."""
    import sys

    from rimrl.agents.presets import import_allowed
    from rimrl.envs.custom import WRAPPER_IMPORTS, wrapper_modules

    try:
        modules = wrapper_modules(wrappers)
    except ValueError as error:
        raise EvaluationInputError(f"bad env_wrapper in {str(config_path)!r}: {error}") from None
    for module in modules:
        if module not in sys.modules and not import_allowed(module, WRAPPER_IMPORTS):
            raise EvaluationInputError(
                f"{str(config_path)!r} wraps its env with a class from {module!r}: pass --gym-packages {module} "
                "to import it (importing runs its code)"
            )


def resolve_source(argument: str | Path, env: str | None = None, checkpoint: str = "final") -> ModelSource:
    """Resolve one command-line argument (run directory or ``.zip``) to a :class:`ModelSource`.

    ``env`` (``--env``) overrides the run's env; it is required for a zip without ``config.yml``.
    ``checkpoint``: ``"final"`` (``model.zip``) or ``"best"`` (``best_model.zip``) for run directories.
    """
    path = Path(argument)
    if not path.exists():
        raise EvaluationInputError(f"no such run directory or model file: {str(path)!r}")
    if path.is_dir():
        run_dir = path
        zip_path = path / _CHECKPOINTS[checkpoint]
        if not zip_path.is_file():
            raise EvaluationInputError(f"run directory {str(path)!r} has no {_CHECKPOINTS[checkpoint]}")
    else:
        zip_path = path
        # model.zip / best_model.zip sit in the run directory, checkpoints one folder below it
        candidates = (path.parent, path.parent.parent) if path.parent.name == "checkpoints" else (path.parent,)
        run_dir = next((folder for folder in candidates if (folder / CONFIG_FILE).is_file()), None)
    config_path = None if run_dir is None else run_dir / CONFIG_FILE
    has_config = config_path is not None and config_path.is_file()
    config = read_yaml_mapping(config_path, "run config", EvaluationInputError) if has_config else {}
    env_id = env or config.get("env")
    if not env_id:
        where = f"{str(run_dir / CONFIG_FILE)!r} names no env" if run_dir is not None else "it has no config.yml next to it"
        raise EvaluationInputError(f"no env to evaluate {str(zip_path)!r} on ({where}): pass --env ENV_ID")
    env_kwargs = config.get("env_kwargs") or {}
    if not isinstance(env_kwargs, dict):
        raise EvaluationInputError(f"env_kwargs in {str(run_dir / CONFIG_FILE)!r} must be a mapping")
    wrappers = config.get("env_wrapper") or []
    if wrappers:  # the run's --env-wrapper: make_env takes it as `wrappers`
        _check_wrapper_imports(wrappers, config_path)
        env_kwargs = {**env_kwargs, "wrappers": wrappers}
    core = config.get("core")
    mode = config.get("eval_deterministic")
    return ModelSource(
        path=zip_path,
        run_dir=run_dir,
        env_id=str(env_id),
        core=str(core) if core else None,
        seed=_seed_of(config, run_dir),
        env_kwargs=dict(env_kwargs),
        eval_deterministic=mode if isinstance(mode, bool) else None,
    )


def resolve_sources(arguments: Sequence[str | Path], env: str | None = None, checkpoint: str = "final") -> list[ModelSource]:
    """:func:`resolve_source` for each argument, then :func:`label_sources`."""
    if not arguments:
        raise EvaluationInputError("nothing to evaluate: give one or more run directories or model.zip files")
    sources = [resolve_source(argument, env, checkpoint) for argument in arguments]
    seen: set[Path] = set()
    for source in sources:
        resolved = source.path.resolve()
        if resolved in seen:
            raise EvaluationInputError(f"{str(source.path)!r} is given twice")
        seen.add(resolved)
    return sources


def core_of(model: RecurrentPPO) -> str:
    """The core of a loaded model: rimrl policies say it; sb3-contrib's own policies hold an LSTM."""
    name = getattr(model.policy, "core_name", None)
    if name:
        return str(name)
    return "lstm"


def label_sources(sources: Sequence[ModelSource]) -> None:
    """Give each source a short unique ``label``: ``<core>-seed<k>`` (prefixed by the env's name,
    e.g. ``Breakout-v5/rim-seed0``, when the sources come from several envs), else the run's or
    zip's name; repeated labels get ``#2``, ``#3``, ..."""
    several_envs = len({source.env_id for source in sources}) > 1
    counts: dict[str, int] = {}
    for source in sources:
        if source.core is not None and source.seed is not None:
            base = f"{source.core}-seed{source.seed}"
            if several_envs and source.env_id:
                base = f"{source.env_id.split('/')[-1]}/{base}"
        elif source.run_dir is not None:
            base = source.run_dir.name
        else:
            base = source.path.stem
        counts[base] = counts.get(base, 0) + 1
        source.label = base if counts[base] == 1 else f"{base}#{counts[base]}"
