"""The contract every rimrl core implements (see DESIGN.md, "The core interface")."""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]


def check_positive(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise ``ValueError`` unless ``divisor`` divides ``value``."""
    if value % divisor != 0:
        raise ValueError(
            f"{name} ({value}) must be divisible by {divisor_name} ({divisor}); "
            f"allowed values are multiples of {divisor}"
        )


def check_probability(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``0 <= value < 1``."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class RecurrentCore(nn.Module):
    """Base class: ``nn.LSTM``'s sequence-first, one-layer contract plus ``episode_starts``.

    ``out, (h, c) = core(x, state=None, episode_starts=None)`` with

    - ``x``: ``(T, B, input_size)``
    - ``state``: ``(h, c)``, each ``(1, B, hidden_size)``; ``None`` means zeros
    - ``episode_starts``: ``(T, B)`` in {0, 1}; where 1, that row's state is zeroed *before* step t
    - ``out``: ``(T, B, hidden_size)``
    """

    num_layers: int = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        check_positive("input_size", input_size)
        check_positive("hidden_size", hidden_size)
        self.input_size = input_size
        self.hidden_size = hidden_size

    def initial_state(self, batch_size: int, like: torch.Tensor) -> State:
        """Zero state ``(h, c)``, each ``(num_layers, B, hidden_size)``, on ``like``'s device and dtype."""
        zeros = like.new_zeros(self.num_layers, batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def _prepare(
        self, x: torch.Tensor, state: State | None, episode_starts: torch.Tensor | None
    ) -> tuple[State, torch.Tensor]:
        """Validate shapes; return the state (zeros if missing) and ``(T, B, 1)`` keep-masks (1 - start)."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must have shape (T, B, {self.input_size}), got {tuple(x.shape)}"
            )
        seq_len, batch_size = x.shape[:2]
        if state is None:
            state = self.initial_state(batch_size, x)
        if episode_starts is None:
            keep = x.new_ones(seq_len, batch_size, 1)
        else:
            if episode_starts.shape != (seq_len, batch_size):
                raise ValueError(
                    f"episode_starts must have shape (T, B) = ({seq_len}, {batch_size}), "
                    f"got {tuple(episode_starts.shape)}"
                )
            keep = (1.0 - episode_starts.to(x.dtype)).unsqueeze(-1)
        return state, keep
