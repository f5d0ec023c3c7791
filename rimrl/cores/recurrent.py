"""LSTM and GRU cores: torch's fused kernels over whole sequences, split only at episode starts."""

from __future__ import annotations

import torch
from torch import nn

from rimrl.cores.base import RecurrentCore, State


class _FusedCore(RecurrentCore):
    """Runs a fused ``nn.LSTM``/``nn.GRU`` over the longest spans that contain no episode start.

    Starts at t = 0 only zero the initial state, so the common case (sb3-contrib's padded
    sequences, each beginning an episode) is one kernel call. A start at t > 0 in any row splits
    the sequence there: one fused call per span, never a per-step loop.
    """

    rnn: nn.LSTM | nn.GRU

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` ``(T, B, input_size)`` -> ``out`` ``(T, B, hidden_size)``, ``(h, c)`` each ``(1, B, hidden_size)``."""
        state, keep = self._prepare(x, state, episode_starts)
        if episode_starts is None:
            return self._run(x, state)
        # Times t > 0 at which at least one row starts a new episode.
        boundaries = [0, *(torch.nonzero(keep[1:, :, 0].min(dim=1).values < 1).flatten() + 1).tolist()]
        boundaries.append(x.shape[0])
        outputs = []
        for start, end in zip(boundaries[:-1], boundaries[1:], strict=True):
            mask = keep[start].unsqueeze(0)  # (1, B, 1)
            state = (state[0] * mask, state[1] * mask)
            out, state = self._run(x[start:end], state)
            outputs.append(out)
        return torch.cat(outputs, dim=0), state


class LSTM(_FusedCore):
    """``torch.nn.LSTM`` (one layer) with the rimrl core contract; ``c`` is the LSTM cell state."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.LSTM(input_size, hidden_size)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, (h, c) = self.rnn(x, (state[0].contiguous(), state[1].contiguous()))
        return out, (h, c)


class GRU(_FusedCore):
    """``torch.nn.GRU`` (one layer) with the rimrl core contract.

    A GRU has one state tensor: ``h``. The returned ``c`` is always zeros of ``h``'s shape; it
    exists only so sb3-contrib's ``(h, c)`` buffers work unchanged, and it is ignored on input.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size)
        self.rnn = nn.GRU(input_size, hidden_size)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, h = self.rnn(x, state[0].contiguous())
        return out, (h, torch.zeros_like(h))
