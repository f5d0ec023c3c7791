"""rimrl.cli: the command lines (argument parsing only; the work is the library's).

- :mod:`rimrl.cli.train`: ``rimrl-train``, one training run or a sweep (``main(argv) -> int``),
  run by :mod:`rimrl.experiments` (:mod:`~rimrl.experiments.run`, :mod:`~rimrl.experiments.sweep`);
- :mod:`rimrl.cli.evaluate`: ``rimrl-evaluate``;
- :mod:`rimrl.cli.sweep`: re-exports of :mod:`rimrl.experiments.sweep` (the sweep runner moved there);
- :mod:`rimrl.cli.common`: helpers shared by the CLIs (``fail``, ``main_guard``, ...).

Submodules are imported on use, so ``import rimrl.cli`` stays cheap.
"""
