"""Experiment tracking: Weights & Biases runs (``--track``) and TensorBoard hyperparameters.

- :func:`start_tracking` opens a W&B run for one training run: ``sync_tensorboard=True`` (the
  TensorBoard events SB3 writes are mirrored, so there is one source of metrics), the run's
  ``config.yml`` content as the W&B config, the run directory (``<env>/<core>/seed<k>``) as its
  name and ``<run>/wandb/`` as its local folder. ``WANDB_MODE=offline`` works without network
  (``wandb sync <run>/wandb/offline-run-*`` uploads it later). W&B is an optional extra
  (``pip install rimrl[track]``) and is imported only here, only with ``--track``.
- :func:`log_hparams` writes the resolved hyperparameters to TensorBoard as an ``hparams``
  summary (the HParams tab) and as YAML text (the Text tab), for every run, tracked or not.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rimrl.experiments.errors import ExperimentInputError
from rimrl.experiments.io import to_yaml_safe

__all__ = ["WANDB_MISSING", "Tracker", "flatten", "log_hparams", "start_tracking"]

WANDB_MISSING = "--track needs Weights & Biases: pip install rimrl[track]  (or: pip install wandb)"
#: The W&B run id, kept in the run directory so ``--resume`` continues the same W&B run.
WANDB_ID_FILE = "wandb_id.txt"
#: Scalars the HParams tab shows beside the hyperparameters (written by the periodic evaluation).
HPARAM_METRICS = ("eval/success_rate", "eval/mean_reward")


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"policy_kwargs": {"core_kwargs": {"k": 3}}}`` -> ``{"policy_kwargs.core_kwargs.k": 3}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """An open W&B run; :meth:`finish` closes it with the training run's status."""

    def __init__(self, run: Any) -> None:
        self.run = run

    def finish(self, status: str) -> None:
        """Record ``status`` in the run summary and close the run (exit code 1 unless it went well)."""
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status in ("completed", "skipped", "pruned") else 1)


def start_tracking(options: Any, config: Mapping[str, Any], run_dir: Path) -> Tracker:
    """Open the W&B run of one training run (see the module docstring).

    :param options: the run's ``TrainOptions`` (project, entity, group, quiet, name).
    :param config: the content of the run's ``config.yml``.
    :raises ExperimentInputError: W&B is not installed.
    """
    try:
        import wandb
    except ImportError:
        raise ExperimentInputError(WANDB_MISSING) from None
    id_file = run_dir / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else ""
    if not run_id:
        # W&B ids: lowercase letters and digits (its own generator is not public API).
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        id_file.write_text(run_id + "\n")
    run = wandb.init(
        project=options.wandb_project, entity=options.wandb_entity, group=options.wandb_group,
        name=options.name, id=run_id, resume="allow", dir=str(run_dir), config=to_yaml_safe(dict(config)),
        sync_tensorboard=True,
        # Optimize trials run one after another in one process: each gets its own W&B run.
        reinit="finish_previous",
        settings=wandb.Settings(silent=bool(options.quiet)),
    )
    return Tracker(run)


def _hparam_value(value: Any) -> bool | int | float | str:
    """TensorBoard's HParams accept bool, number and string values only."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


def log_hparams(logger: Any, trial: Any, step: int) -> None:
    """Write ``trial``'s resolved hyperparameters to the TensorBoard writers of the SB3 ``logger``.

    Written straight through the writers (not ``logger.record``), like the evaluation scalars, so
    the pending ``train/*`` values are not flushed early. A no-op without a TensorBoard writer.

    :param trial: the ``ResolvedTrial`` (its options and resolved ``params``).
    """
    from stable_baselines3.common.logger import HParam, TensorBoardOutputFormat

    writers = [w for w in getattr(logger, "output_formats", []) if isinstance(w, TensorBoardOutputFormat)]
    if not writers:
        return
    options = trial.options
    hyperparams = to_yaml_safe({**trial.params, "n_envs": trial.n_envs})
    run = {"env": options.env, "core": options.core, "seed": options.seed, "n_timesteps": options.n_timesteps}
    hparams = {key: _hparam_value(value) for key, value in flatten({**run, **hyperparams}).items()}
    # Markdown: four spaces make the YAML a code block in the Text tab.
    text = "\n".join("    " + line for line in yaml.safe_dump({**run, "hyperparams": hyperparams},
                                                              sort_keys=False).splitlines())
    values = {"hparams": HParam(hparams, {name: 0.0 for name in HPARAM_METRICS}), "hyperparameters": text}
    excluded: dict[str, tuple[str, ...] | None] = {key: None for key in values}
    for writer in writers:
        writer.write(values, excluded, step)
