"""Grouped layers: one independent set of weights per unit/module, applied in one batched matmul.

Every tensor here is laid out group-first, ``(G, B, features)``, so a group's weights meet its
rows in a single ``torch.baddbmm`` — no Python loop over units.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rimrl.cores.base import check_positive

CELL_KINDS = ("lstm", "gru")


def _uniform_(tensor: torch.Tensor, fan: int) -> None:
    bound = 1.0 / math.sqrt(fan)
    nn.init.uniform_(tensor, -bound, bound)


class GroupedLinear(nn.Module):
    """``G`` independent linear maps: ``(G, B, in_features) -> (G, B, out_features)``."""

    def __init__(self, num_groups: int, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(num_groups, 1, out_features)) if bias else None
        _uniform_(self.weight, in_features)
        if self.bias is not None:
            _uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


class _GroupedCell(nn.Module):
    """``G`` independent recurrent cells: ``(x (G, B, input_size), h (G, B, H), c (G, B, H)) -> (h', c')``.

    A loop that also projects ``h`` for other purposes (RIM/SRM queries) can merge that projection
    with the cell's into one matmul: :meth:`hidden_projection` gives the weight and bias that
    multiply ``h``, and :meth:`step` takes their product precomputed:
    ``forward(x, h, c) == step(x, h @ W_h + b_h, h, c)``.
    """

    num_gates: int
    #: Whether the recurrent projection has its own bias (a GRU needs it inside ``r * (W h + b)``).
    hidden_bias: bool

    def __init__(self, num_groups: int, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.input_gates = GroupedLinear(num_groups, input_size, self.num_gates * hidden_size)
        self.hidden_gates = GroupedLinear(
            num_groups, hidden_size, self.num_gates * hidden_size, bias=self.hidden_bias
        )
        for layer in (self.input_gates, self.hidden_gates):
            _uniform_(layer.weight, hidden_size)
            if layer.bias is not None:
                _uniform_(layer.bias, hidden_size)

    def hidden_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(G, H, gates * H)`` and bias (or ``None``) of the projection of ``h`` that :meth:`step` takes."""
        raise NotImplementedError

    def step(
        self,
        x: torch.Tensor,
        hidden_gates: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from ``x`` and the precomputed ``hidden_gates = h @ W_h + b_h`` ``(G, B, gates * H)``."""
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self.hidden_projection()
        hidden_gates = torch.bmm(h, weight) if bias is None else torch.baddbmm(bias, h, weight)
        return self.step(x, hidden_gates, h, c)


class LSTMPointwise(torch.autograd.Function):
    """The LSTM cell after its matmuls, with a hand-written backward.

    ``h', c' = LSTMPointwise.apply(gates, c)`` for ``gates`` ``(..., 4H)`` in the order (i, f, o, g)
    and ``c`` ``(..., H)``: ``c' = σ(f) c + σ(i) tanh(g)``, ``h' = σ(o) tanh(c')``.

    Why by hand: autograd records about nine nodes for these few elementwise ops (and two
    concatenations in their backward). In a recurrent loop over small batches the per-node cost
    dominates; here the step is one node, and the backward reuses the saved activations.
    """

    @staticmethod
    def forward(ctx, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        size = c.shape[-1]
        sigmoids = torch.sigmoid(gates[..., : 3 * size])
        i, f, o = sigmoids.chunk(3, dim=-1)
        g = torch.tanh(gates[..., 3 * size :])
        c_next = torch.addcmul(f * c, i, g)
        tanh_c = torch.tanh(c_next)
        ctx.save_for_backward(sigmoids, g, c, tanh_c)
        return o * tanh_c, c_next

    @staticmethod
    def backward(ctx, grad_h: torch.Tensor, grad_c_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        sigmoids, g, c, tanh_c = ctx.saved_tensors
        size = c.shape[-1]
        i, f, o = sigmoids.chunk(3, dim=-1)
        # dL/dc' in total: through h' = o tanh(c') and from the next step.
        grad_c = torch.addcmul(grad_c_next, grad_h * o, 1.0 - tanh_c * tanh_c)
        grad_gates = torch.empty(*c.shape[:-1], 4 * size, dtype=c.dtype, device=c.device)
        # d/d(sigmoid outputs) of i, f, o, then through the sigmoid: s (1 - s).
        torch.mul(grad_c, g, out=grad_gates[..., :size])
        torch.mul(grad_c, c, out=grad_gates[..., size : 2 * size])
        torch.mul(grad_h, tanh_c, out=grad_gates[..., 2 * size : 3 * size])
        grad_gates[..., : 3 * size].mul_(sigmoids * (1.0 - sigmoids))
        torch.mul(grad_c * i, 1.0 - g * g, out=grad_gates[..., 3 * size :])
        return grad_gates, grad_c * f


class GroupedLSTMCell(_GroupedCell):
    """``G`` independent LSTM cells (``torch.nn.LSTMCell``'s equations).

    Gates are stored in the order (i, f, o, g) so one sigmoid covers the three gates. One bias
    suffices (torch's second LSTM bias is redundant); it is stored with the input projection but
    added with the hidden one (:meth:`hidden_projection`), so the input matmul adds onto the hidden
    gates in one ``baddbmm``.
    """

    num_gates = 4
    hidden_bias = False

    def hidden_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.hidden_gates.weight, self.input_gates.bias

    def step(
        self,
        x: torch.Tensor,
        hidden_gates: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.baddbmm(hidden_gates, x, self.input_gates.weight)  # the bias came with hidden_gates
        return LSTMPointwise.apply(gates, c)


class GroupedGRUCell(_GroupedCell):
    """``G`` independent GRU cells (``torch.nn.GRUCell``'s equations, gates r, z, n).

    A GRU has no cell state: ``c`` is passed through untouched.
    """

    num_gates = 3
    hidden_bias = True

    def hidden_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.hidden_gates.weight, self.hidden_gates.bias

    def step(
        self,
        x: torch.Tensor,
        hidden_gates: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xr, xz, xn = self.input_gates(x).chunk(3, dim=-1)
        hr, hz, hn = hidden_gates.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return n + z * (h - n), c


def make_grouped_cell(kind: str, num_groups: int, input_size: int, hidden_size: int) -> nn.Module:
    """Build ``num_groups`` independent ``"lstm"`` or ``"gru"`` cells."""
    check_positive("num_groups", num_groups)
    if kind == "lstm":
        return GroupedLSTMCell(num_groups, input_size, hidden_size)
    if kind == "gru":
        return GroupedGRUCell(num_groups, input_size, hidden_size)
    raise ValueError(f"cell must be one of {CELL_KINDS}, got {kind!r}")
