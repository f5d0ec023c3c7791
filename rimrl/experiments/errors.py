"""The library's "bad input" error for training runs and sweeps."""

from __future__ import annotations

__all__ = ["EXIT_USAGE", "ExperimentInputError"]

#: Exit status a command line gives for bad input (argparse's convention).
EXIT_USAGE = 2


class ExperimentInputError(ValueError):
    """Bad input to a run or a sweep (a hyperparameter, a device, a run directory's state, ...).

    The message is one line meant for the user; a command line prints it as ``error: <message>``
    and exits with :attr:`exit_code` (2 unless told otherwise). A ``ValueError`` so library callers
    that already catch ``ValueError`` keep working.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
