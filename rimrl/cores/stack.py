"""A stack of recurrent cores: layer l reads the output of layer l - 1 (``n_lstm_layers > 1``).

Torch stacks its own LSTM/GRU layers (``num_layers``); :class:`StackedCore` does the same for any
one-layer core (RIM, SRM, a registered core), as in the RIMs paper's multi-layer setting: every
layer is a full core with its own units and state, and reads the layer below's output
``(T, B, H)`` as its input. The layers' states are stacked along dim 0, ``(n_layers, B, H)``,
exactly the shape sb3-contrib's rollout buffers and ``predict`` give ``nn.LSTM``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rimrl.cores.base import State


class StackedCore(nn.Module):
    """``layers[0]`` reads ``x`` ``(T, B, input_size)``; ``layers[l]`` reads ``layers[l - 1]``'s output.

    One call per layer per sequence (each layer runs its own time loop over the whole sequence),
    so the cost is ``n_layers`` core calls, not a Python loop over steps or units.

    :param layers: one-layer cores; layer 0's ``input_size`` is the stack's, every later layer's
        must equal the hidden size they all share.
    """

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(layers) < 2:
            raise ValueError(f"a StackedCore needs at least 2 layers, got {len(layers)}")
        hidden = layers[0].hidden_size
        for i, layer in enumerate(layers):
            if layer.hidden_size != hidden or getattr(layer, "num_layers", 1) != 1:
                raise ValueError(f"layer {i} of the stack must be a one-layer core of hidden_size {hidden}")
            if i > 0 and layer.input_size != hidden:
                raise ValueError(f"layer {i} reads the layer below: its input_size must be {hidden}, got {layer.input_size}")
        self.layers = nn.ModuleList(layers)
        self.input_size = int(layers[0].input_size)
        self.hidden_size = int(hidden)
        self.num_layers = len(layers)

    @property
    def last_active_mask(self) -> torch.Tensor | None:
        """The bottom layer's ``(T, B, U)`` active mask (the layer that reads the observation), if it has one."""
        return getattr(self.layers[0], "last_active_mask", None)

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """``x`` ``(T, B, input_size)`` -> ``out`` ``(T, B, H)`` (top layer), ``(h, c)`` each ``(n_layers, B, H)``.

        ``state`` is ``(h, c)`` each ``(n_layers, B, H)`` (``None``: every layer starts from its
        own initial state); ``episode_starts`` ``(T, B)`` resets every layer's row.
        """
        if state is not None and state[0].shape[0] != self.num_layers:
            raise ValueError(f"state must have shape ({self.num_layers}, B, {self.hidden_size}), got {tuple(state[0].shape)}")
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            layer_state = None if state is None else (state[0][i : i + 1], state[1][i : i + 1])
            x, (h, c) = layer(x, layer_state, episode_starts=episode_starts)
            hs.append(h)
            cs.append(c)
        return x, (torch.cat(hs, dim=0), torch.cat(cs, dim=0))

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_layers={self.num_layers}"
