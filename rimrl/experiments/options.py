"""What a training run is: its settings (:class:`TrainOptions`), its validated form
(:class:`ResolvedTrial`), what it reports (:class:`TrialResult`), and the names of the files it
writes in its run directory (``docs/train.md`` documents the layout)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rimrl.experiments.errors import EXIT_USAGE
from rimrl.experiments.io import env_dirname, run_dir_for

__all__ = [
    "BEST_MODEL_FILE",
    "CONFIG_FILE",
    "CORES",
    "DEFAULTS",
    "EVALUATIONS_FILE",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "METRICS_FILE",
    "MODEL_FILE",
    "MONITOR_DIR",
    "TB_DIR",
    "VEC_ENVS",
    "ResolvedTrial",
    "TrainOptions",
    "TrialResult",
    "variant_evaluations_file",
]

#: rimrl's own cores, in the order the help lists them; ``--core`` also takes any name given to
#: :func:`rimrl.cores.register_core` (by a module that ``--gym-packages`` imports, say).
CORES = ("rim", "srm", "lstm", "gru")
VEC_ENVS = ("dummy", "subproc", "ale")

#: Defaults of the settings that a ``--config`` file (or a caller) may also set.
DEFAULTS: dict[str, Any] = {
    "envs": ["rimrl/Pickup-Train-v0"],
    "cores": ["rim"],
    "seeds": [0],
    "n_timesteps": 500_000,
    "n_envs": None,  # the preset's
    "vec_env": None,  # make_env's default: "ale" for Atari, "dummy" for MiniGrid
    "preset": None,  # configs/<family>.yml
    "hyperparams": {},
    "env_kwargs": {},
    "gym_packages": [],  # imported first: they register env ids (and cores)
    "env_wrapper": [],  # wrapper specs (rimrl.envs.custom), applied to every env
    "log_folder": "runs",
    "tensorboard": None,  # <run dir>/tb
    "eval_freq": 25_000,
    "eval_episodes": 20,
    "eval_deterministic": None,  # the env family's (rimrl.envs.default_deterministic)
    "eval_variants": [],
    "save_freq": 25_000,
    "keep_checkpoints": 5,
    "device": "auto",
    "threads": 1,
}

CONFIG_FILE = "config.yml"
MODEL_FILE = "model.zip"
BEST_MODEL_FILE = "best_model.zip"
METRICS_FILE = "final_metrics.json"
EVALUATIONS_FILE = "evaluations.npz"
MONITOR_DIR = "monitor"
TB_DIR = "tb"
TB_LOG_NAME = "RecurrentPPO"

#: Offsets so the evaluation env and resumed sessions never replay the training episodes.
EVAL_SEED_OFFSET = 1_000_003
SESSION_SEED_STRIDE = 10_007
#: Seconds between plain progress lines (when no progress bar is shown).
LOG_EVERY_S = 30.0

EXIT_OK, EXIT_FAILED = 0, 1


def variant_evaluations_file(variant: str) -> str:
    """``evaluations_<variant>.npz``: the periodic evaluations on another variant (``--eval-variants``)."""
    return f"evaluations_{variant}.npz"


@dataclass
class TrainOptions:
    """Everything one trial needs; picklable (sent to sweep workers and Ray tasks)."""

    env: str = DEFAULTS["envs"][0]
    core: str = DEFAULTS["cores"][0]
    seed: int = 0
    n_timesteps: int = DEFAULTS["n_timesteps"]
    n_envs: int | None = None
    vec_env: str | None = None
    preset: str | None = None
    hyperparams: dict[str, Any] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    gym_packages: list[str] = field(default_factory=list)
    env_wrapper: list[Any] = field(default_factory=list)  # "pkg.mod:Class" or {"pkg.mod:Class": {kwargs}}
    log_folder: str = DEFAULTS["log_folder"]
    tensorboard: str | None = None
    eval_freq: int = DEFAULTS["eval_freq"]
    eval_episodes: int = DEFAULTS["eval_episodes"]
    #: None until :func:`rimrl.experiments.validation.resolve_trial` sets the env family's
    #: default (a bool from then on).
    eval_deterministic: bool | None = DEFAULTS["eval_deterministic"]
    eval_variants: list[str] = field(default_factory=list)
    save_freq: int = DEFAULTS["save_freq"]
    keep_checkpoints: int = DEFAULTS["keep_checkpoints"]
    device: str = DEFAULTS["device"]
    threads: int = DEFAULTS["threads"]
    resume: bool = False
    overwrite: bool = False
    allow_imports: bool = False  # policy_kwargs.*_class may import modules outside the allow-list
    quiet: bool = False
    progress_bar: bool | None = None  # None: when stdout is a terminal
    label: str = ""  # prefix of log lines (sweeps)
    argv: list[str] = field(default_factory=list)
    explicit: frozenset[str] = frozenset()  # fields given on the command line or in --config
    #: The run directory's last component instead of ``seed<k>``: ``seed<k>_<n>`` (``--exp-id``) or
    #: ``trial<k>`` (``--optimize``). Empty: ``seed<k>``.
    run_name: str = ""
    #: ``--track``: log the run to Weights & Biases (:mod:`rimrl.experiments.tracking`).
    track: bool = False
    wandb_project: str = "rimrl"
    wandb_entity: str | None = None
    wandb_group: str | None = None
    #: Called after each evaluation on the train variant with ``(steps, result)``; a non-empty
    #: string returned stops training there as ``pruned`` (that string is the message). Used by
    #: ``--optimize``'s pruner (:mod:`rimrl.experiments.search`); must be picklable for sweeps.
    on_evaluation: Any = None

    def dir_under(self, root: str | Path) -> Path:
        """``<root>/<env>/<core>/<seed<k> or run_name>``."""
        if self.run_name:
            return Path(root) / env_dirname(self.env) / self.core / self.run_name
        return run_dir_for(root, self.env, self.core, self.seed)

    @property
    def run_dir(self) -> Path:
        """``<log_folder>/<env>/<core>/seed<k>`` (or ``.../<run_name>``)."""
        return self.dir_under(self.log_folder)

    @property
    def name(self) -> str:
        """``<env>/<core>/seed<k>`` (the run directory below the log folder)."""
        return f"{env_dirname(self.env)}/{self.core}/{self.run_name or f'seed{self.seed}'}"


@dataclass
class TrialResult:
    """What a trial reports back (the sweep summary's rows)."""

    env: str
    core: str
    seed: int
    run_dir: str
    status: str  # completed | skipped | interrupted | pruned | nan | invalid | failed | cancelled
    exit_code: int
    num_timesteps: int | None = None
    success_rate: float | None = None
    mean_return: float | None = None
    wall_time_s: float | None = None
    message: str = ""


@dataclass
class ResolvedTrial:
    """A validated trial: resolved hyperparameters, its family, the resume source if any."""

    options: TrainOptions
    family: str
    params: dict[str, Any]  # resolve_hyperparams' result without n_envs (objects, not YAML)
    n_envs: int
    vec_env: str
    preset_for_agent: str | dict[str, Any] | None  # what make_agent gets as preset
    overrides: dict[str, Any]  # what make_agent gets as overrides
    saved_config: dict[str, Any] | None = None  # the run's config.yml on --resume
    resume_from: Path | None = None  # the checkpoint to continue from
    variant_envs: dict[str, str] = field(default_factory=dict)  # --eval-variants: variant -> env id

    @property
    def run_dir(self) -> Path:
        return self.options.run_dir
