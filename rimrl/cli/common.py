"""Helpers shared by the rimrl command lines (train, evaluate).

- :func:`fail` prints ``error: <message>`` (one line) to stderr and exits with status 2;
- :func:`main_guard` wraps a ``main(argv) -> int`` so the expected errors (:class:`CLIError`,
  the library's :class:`~rimrl.experiments.ExperimentInputError` and, for code that opts in,
  ``ValueError``) end that way, without a traceback;
- :class:`ArgumentParser` reports argparse's own errors the same way;
- ``key=value`` parsing; the file helpers (YAML I/O, atomic writes, run directory naming,
  provenance) are :mod:`rimrl.experiments.io`'s, re-exported here.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import yaml

from rimrl.experiments.errors import EXIT_USAGE, ExperimentInputError

# The file and provenance helpers live in the library; re-exported here for the CLIs and callers
# that import them from this module.
from rimrl.experiments.io import (
    atomic_write_bytes,
    atomic_write_text,
    env_dirname,
    git_info,
    one_line,
    package_versions,
    read_yaml,
    run_dir_for,
    to_yaml_safe,
    write_json,
    write_yaml,
)

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

#: Set this environment variable to ``1`` to see the traceback behind an ``error:`` line.
DEBUG_ENV = "RIMRL_DEBUG"

_F = TypeVar("_F", bound=Callable[..., int])
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class CLIError(ExperimentInputError):
    """An expected, user-facing error of a command line: :func:`main_guard` prints it as one
    ``error:`` line, exit 2. A kind of the library's
    :class:`~rimrl.experiments.errors.ExperimentInputError`, which :func:`main_guard` treats the same."""


def fail(message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: <message>`` (one line) to stderr and exit (status 2 unless told otherwise)."""
    sys.stdout.flush()
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    raise SystemExit(exit_code)


def main_guard(
    func: _F | None = None, *, expected: tuple[type[BaseException], ...] = (ExperimentInputError,)
) -> _F | Callable[[_F], _F]:
    """Decorate a CLI ``main``: the ``expected`` exceptions become a one-line ``error:`` and exit 2.

    :class:`CLIError` and the library's :class:`~rimrl.experiments.errors.ExperimentInputError`
    are always expected (their ``exit_code`` is used). Pass e.g.
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
                code = error.exit_code if isinstance(error, ExperimentInputError) else EXIT_USAGE
                fail(str(error) or type(error).__name__, exit_code=code)
            except ExperimentInputError as error:
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
