"""LSTM and GRU cores: torch's fused kernels over whole sequences, split only at episode starts."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rimrl.cores.base import RecurrentCore, State, check_positive

# Torch arguments that would change the (T, B, H) layout or the state shape the policy and
# sb3-contrib's buffers rely on; everything else (dropout, bias, device, dtype) is passed through.
_LAYOUT_KWARGS = ("batch_first", "bidirectional", "proj_size", "input_size", "hidden_size", "num_layers")


def _check_rnn_kwargs(rnn_kwargs: dict[str, Any]) -> None:
    """Raise ``ValueError`` for a torch argument that changes the layout (see ``_LAYOUT_KWARGS``)."""
    bad = sorted(set(rnn_kwargs) & set(_LAYOUT_KWARGS))
    if bad:
        raise ValueError(f"{bad[0]!r} cannot be set for a rimrl core: it changes the (T, B, H) layout or the state shape")


class _FusedCore(RecurrentCore):
    """Runs a fused ``nn.LSTM``/``nn.GRU`` over the longest spans that contain no episode start.

    Starts at t = 0 only zero the initial state, so the common case (sb3-contrib's padded
    sequences, each beginning an episode) is one kernel call. A start at t > 0 in any row splits
    the sequence there: one fused call per span, never a per-step loop.
    """

    rnn: nn.LSTM | nn.GRU
    #: The torch arguments ``**rnn_kwargs`` may carry (the rest change the layout, or do not
    #: exist): named so that presets can reject a misspelt ``core_kwargs`` key before building.
    torch_kwargs: tuple[str, ...] = ("bias", "dropout")

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` ``(T, B, input_size)`` -> ``out`` ``(T, B, hidden_size)``, ``(h, c)`` each ``(num_layers, B, hidden_size)``."""
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
    """``torch.nn.LSTM`` with the rimrl core contract; ``c`` is the LSTM cell state.

    :param num_layers: torch's stacked layers; ``h`` and ``c`` are ``(num_layers, B, H)``.
    :param rnn_kwargs: passed to ``nn.LSTM`` (``dropout`` between layers, ``bias``, ...).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **rnn_kwargs: Any) -> None:
        super().__init__(input_size, hidden_size)
        check_positive("num_layers", num_layers)
        _check_rnn_kwargs(rnn_kwargs)
        self.num_layers = num_layers
        self.rnn = nn.LSTM(input_size, hidden_size, num_layers=num_layers, **rnn_kwargs)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, (h, c) = self.rnn(x, (state[0].contiguous(), state[1].contiguous()))
        return out, (h, c)


class GRU(_FusedCore):
    """``torch.nn.GRU`` with the rimrl core contract (``num_layers``, ``rnn_kwargs`` as :class:`LSTM`).

    A GRU has one state tensor: ``h``. The returned ``c`` is always zeros of ``h``'s shape; it
    exists only so sb3-contrib's ``(h, c)`` buffers work unchanged, and it is ignored on input.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, **rnn_kwargs: Any) -> None:
        super().__init__(input_size, hidden_size)
        check_positive("num_layers", num_layers)
        _check_rnn_kwargs(rnn_kwargs)
        self.num_layers = num_layers
        self.rnn = nn.GRU(input_size, hidden_size, num_layers=num_layers, **rnn_kwargs)

    def _run(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        out, h = self.rnn(x, state[0].contiguous())
        return out, (h, torch.zeros_like(h))


#: Cores that are torch's own ``nn.LSTM``/``nn.GRU`` and take its keyword arguments (``lstm_kwargs``).
TORCH_RNN_CORES = (LSTM, GRU)
