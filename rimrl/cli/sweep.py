"""Moved: the sweep runner is :mod:`rimrl.experiments.sweep`; its names are re-exported here for
code that imports them from this module."""

from rimrl.experiments.sweep import *  # noqa: F403 - re-exports
from rimrl.experiments.sweep import __all__  # noqa: F401 - the same public names
