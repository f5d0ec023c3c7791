"""The core registry: every name ``core="..."`` may take, built-in or registered by the user.

A registered core is a *factory* ``factory(input_size, hidden_size, **core_kwargs) -> nn.Module``
(a :class:`~rimrl.cores.base.RecurrentCore` subclass is one) whose result follows the core
contract of :mod:`rimrl.cores.base`::

    out, (h, c) = core(x, state=None, episode_starts=None)
    # x (T, B, input_size) -> out (T, B, hidden_size); h, c each (1, B, hidden_size)

with attributes ``input_size``, ``hidden_size`` and ``num_layers == 1`` (sb3-contrib sizes its
state buffers from them). ``n_lstm_layers > 1`` stacks such a core (:meth:`CoreSpec.build_layers`);
a factory that takes ``num_layers`` itself (torch's LSTM/GRU) stacks its own layers, state
``(num_layers, B, hidden_size)``. Registration also records what the policy needs to know about the core
(:class:`CoreSpec`): which encoder output it reads, its default width and default kwargs, and
which preset section it falls back to when a preset file has none for it.

Pure torch, like the rest of :mod:`rimrl.cores`: nothing here imports stable-baselines3.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = [
    "BUILTIN_CORES",
    "CORE_INPUT_KINDS",
    "CoreSpec",
    "UnknownCoreError",
    "core_factory_parameters",
    "core_names",
    "core_spec",
    "is_registered",
    "register_core",
    "unregister_core",
]

#: What a core may read of the encoder's tokens: one flattened vector, or the set of tokens.
CORE_INPUT_KINDS = ("vector", "tokens")
#: Names :func:`register_core` refuses (the cores rimrl ships).
BUILTIN_CORES = ("lstm", "gru", "rim", "srm")
# Names end up in run directories (runs/<env>/<core>/seed0) and preset sections: keep them plain.
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
# Arguments the policy fills in from the encoder (only if the factory accepts them).
ENCODER_ARGUMENTS = ("num_tokens", "token_positions")


class UnknownCoreError(ValueError):
    """``core`` names no registered core (e.g. a saved model whose core's module was not imported)."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"unknown core {name!r}: registered cores are {', '.join(core_names())}; a core of your own must be "
            f"registered first with rimrl.cores.register_core({name!r}, factory) (import the module that does it)"
        )


@dataclass(frozen=True)
class CoreSpec:
    """One registered core.

    :param name: the ``core=`` name.
    :param factory: ``factory(input_size, hidden_size, **core_kwargs) -> nn.Module``.
    :param inputs: what it may read (``"vector"`` and/or ``"tokens"``); the first is the default.
    :param hidden_size: ``lstm_hidden_size`` when the policy is given none.
    :param default_kwargs: merged *under* the user's ``core_kwargs``.
    :param preset: the core whose preset section it uses when a preset file has no section for
        ``name`` (``None``: only the ``default`` section).
    :param builtin: one of rimrl's own cores.
    """

    name: str
    factory: Callable[..., nn.Module]
    inputs: tuple[str, ...] = ("vector",)
    hidden_size: int = 128
    default_kwargs: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = "lstm"
    builtin: bool = False

    def build(self, input_size: int, hidden_size: int, **kwargs: Any) -> nn.Module:
        """Call the factory and check the result's contract attributes.

        :raises ValueError: bad arguments for the factory, or a module without the contract's
            ``input_size`` / ``hidden_size`` / ``num_layers`` (1, or the ``num_layers`` given).
        """
        try:
            core = self.factory(input_size, hidden_size, **kwargs)
        except TypeError as error:
            raise ValueError(f"bad arguments for core {self.name!r}: {error}") from None
        if not isinstance(core, nn.Module):
            raise ValueError(f"core {self.name!r}: the factory returned a {type(core).__name__}, not a torch nn.Module")
        found = {key: getattr(core, key, None) for key in ("input_size", "hidden_size", "num_layers")}
        expected = {"input_size": input_size, "hidden_size": hidden_size, "num_layers": kwargs.get("num_layers", 1)}
        if found != expected:
            raise ValueError(
                f"core {self.name!r} does not follow the core contract: its (input_size, hidden_size, num_layers) are "
                f"{tuple(found.values())}, expected {tuple(expected.values())} (see rimrl.cores.base.RecurrentCore)"
            )
        return core

    def build_layers(self, input_size: int, hidden_size: int, num_layers: int, **kwargs: Any) -> nn.Module:
        """A core of ``num_layers`` layers, state ``(num_layers, B, hidden_size)``.

        A factory that takes ``num_layers`` itself (LSTM, GRU: torch's stacking) gets it; any
        other core is stacked by :class:`~rimrl.cores.stack.StackedCore`: layer 0 is built with
        ``kwargs`` and reads the input, each later layer is built with the same ``kwargs`` but
        reads the layer below's output as one vector (``num_tokens=1``, one position at the
        origin for cores that take positions).
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"n_lstm_layers must be an integer >= 1, got {num_layers!r}")
        accepted = core_factory_parameters(self.factory)
        if "num_layers" in accepted:
            return self.build(input_size, hidden_size, num_layers=num_layers, **kwargs)
        if "num_layers" in kwargs:
            raise ValueError(f"core {self.name!r} takes no num_layers; set n_lstm_layers to stack it")
        if num_layers == 1:
            return self.build(input_size, hidden_size, **kwargs)
        import torch

        from rimrl.cores.stack import StackedCore

        upper = dict(kwargs)
        if "num_tokens" in accepted:
            upper["num_tokens"] = 1
        if "token_positions" in accepted:
            upper["token_positions"] = torch.zeros(1, 3)
        layers = [self.build(input_size, hidden_size, **kwargs)]
        layers += [self.build(hidden_size, hidden_size, **upper) for _ in range(num_layers - 1)]
        return StackedCore(layers)


_REGISTRY: dict[str, CoreSpec] = {}


def core_factory_parameters(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword parameters of a factory beyond ``input_size`` and ``hidden_size`` (a class: its ``__init__``)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: nothing is known
        return {}
    if inspect.isclass(factory) and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    named = [p for p in parameters if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    return {p.name: p for p in named[2:]}  # the first two are input_size and hidden_size


def _add(spec: CoreSpec) -> CoreSpec:
    _REGISTRY[spec.name] = spec
    # rimrl.cores.CORES mirrors the registry (name -> factory) for code that reads it directly.
    from rimrl.cores import CORES

    CORES[spec.name] = spec.factory
    return spec


def register_core(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    inputs: tuple[str, ...] | list[str] = ("vector",),
    hidden_size: int = 128,
    default_kwargs: Mapping[str, Any] | None = None,
    preset: str | None = "lstm",
) -> CoreSpec:
    """Make ``core=name`` available to the policies, presets, ``train.py --core`` and saved models.

    Registering a name again replaces it (re-running a notebook cell); rimrl's own names
    (:data:`BUILTIN_CORES`) cannot be replaced. Registration lives in the process: a script, a
    sweep worker or a process loading a saved model must import the module that registers the
    core (``train.py --gym-packages my_package`` does it for the CLI).

    :param name: lower-case letters, digits, ``_`` and ``-``, starting with a letter.
    :param factory: ``factory(input_size, hidden_size, **core_kwargs)`` returning a module that
        follows the core contract (see the module docstring). When the core reads ``"tokens"``,
        ``num_tokens`` (and ``token_positions``, an ``(N, 3)`` tensor) are passed to it if its
        signature names them.
    :param inputs: ``("vector",)`` (default), ``("tokens",)`` or both; the first is the default
        ``core_input``.
    :param hidden_size: the policy's ``lstm_hidden_size`` when none is given.
    :param default_kwargs: ``core_kwargs`` defaults, overridden by the user's.
    :param preset: the built-in core whose preset section (``configs/<family>.yml``) a preset
        without a ``name`` section uses; ``None``: the ``default`` section only.
    :return: the :class:`CoreSpec` stored.
    :raises ValueError: a bad name, a built-in name, a non-callable factory or a bad option.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"core name must match {_NAME_RE.pattern} (it names run directories), got {name!r}")
    if name in BUILTIN_CORES:
        raise ValueError(f"core {name!r} is one of rimrl's own cores and cannot be replaced; pick another name")
    if not callable(factory):
        raise ValueError(f"factory for core {name!r} must be callable, got {factory!r}")
    inputs = tuple(inputs)
    if not inputs or any(kind not in CORE_INPUT_KINDS for kind in inputs) or len(set(inputs)) != len(inputs):
        raise ValueError(f"inputs for core {name!r} must be a non-empty subset of {list(CORE_INPUT_KINDS)}, got {inputs!r}")
    if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 1:
        raise ValueError(f"hidden_size for core {name!r} must be an integer >= 1, got {hidden_size!r}")
    if preset is not None and preset not in BUILTIN_CORES:
        raise ValueError(f"preset for core {name!r} must be one of {list(BUILTIN_CORES)} or None, got {preset!r}")
    defaults = dict(default_kwargs or {})
    reserved = sorted(set(defaults) & set(ENCODER_ARGUMENTS))
    if reserved:
        raise ValueError(f"default_kwargs for core {name!r} must not set {reserved[0]!r}: it comes from the encoder")
    return _add(CoreSpec(name, factory, inputs, hidden_size, defaults, preset))


def _register_builtin(spec: CoreSpec) -> None:
    _add(spec)


def unregister_core(name: str) -> None:
    """Remove a registered core (tests, notebooks); built-in cores stay."""
    if name in BUILTIN_CORES:
        raise ValueError(f"core {name!r} is one of rimrl's own cores and cannot be removed")
    if _REGISTRY.pop(name, None) is not None:
        from rimrl.cores import CORES

        CORES.pop(name, None)


def is_registered(name: object) -> bool:
    """Whether ``name`` is a registered core name."""
    return isinstance(name, str) and name in _REGISTRY


def core_names() -> tuple[str, ...]:
    """Every registered core name: the built-in ones first, then the user's in registration order."""
    return tuple(_REGISTRY)


def core_spec(name: object) -> CoreSpec:
    """The :class:`CoreSpec` of ``name``; :class:`UnknownCoreError` if it is not registered."""
    if not is_registered(name):
        raise UnknownCoreError(name)
    return _REGISTRY[name]  # type: ignore[index]
