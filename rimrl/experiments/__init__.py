"""rimrl.experiments: training runs and sweeps as a library (the ``rimrl-train`` CLI only parses
arguments and calls these).

- :mod:`rimrl.experiments.options`: :class:`TrainOptions`, :class:`ResolvedTrial`,
  :class:`TrialResult`, the defaults and the run directory's file names;
- :mod:`rimrl.experiments.validation`: :func:`resolve_trial` and the checks behind it
  (settings, hyperparameter types and ranges, device, run directory, ``--resume``);
- :mod:`rimrl.experiments.envs`: the training and evaluation envs of a run;
- :mod:`rimrl.experiments.callbacks`: the run's SB3 callbacks (NaN guard and stop, checkpoints,
  recurrent-aware evaluation);
- :mod:`rimrl.experiments.run`: :class:`Trainer` and :func:`execute_trial`;
- :mod:`rimrl.experiments.sweep`: a grid of trials on a local process pool or Ray, and its summary;
- :mod:`rimrl.experiments.io`: YAML/JSON files (atomic), run directory naming, provenance;
- :mod:`rimrl.experiments.naming`: ``--exp-id`` run directory names (``seed<k>_<n>``);
- :mod:`rimrl.experiments.tracking`: Weights & Biases runs (``--track``) and TensorBoard hparams;
- :mod:`rimrl.experiments.search`: hyperparameter search with Optuna (``--optimize``).

Bad input raises :class:`ExperimentInputError` (a ``ValueError``) with a one-line message.
Submodules are imported on use, so ``import rimrl.experiments`` stays cheap; nothing here imports
:mod:`rimrl.cli`.
"""

from rimrl.experiments.errors import ExperimentInputError

__all__ = ["ExperimentInputError"]
