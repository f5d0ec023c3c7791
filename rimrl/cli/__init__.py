"""rimrl.cli: the command lines (``rimrl-train``; argument parsing and orchestration only).

- :mod:`rimrl.cli.train`: one training run or a sweep (``main(argv) -> int``);
- :mod:`rimrl.cli.sweep`: the grid runner (local process pool or Ray) and its summary table;
- :mod:`rimrl.cli.common`: helpers shared with the evaluation CLI (``fail``, ``main_guard``, ...).

Submodules are imported on use, so ``import rimrl.cli`` stays cheap.
"""
