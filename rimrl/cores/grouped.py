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


#: Below this many elements one ``tanh`` call costs less than the four ops of ``2 sigmoid(2x) - 1``.
_TANH_VIA_SIGMOID_MIN_NUMEL = 2048


def tanh_via_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """``tanh(x)``, as ``2 sigmoid(2x) - 1`` for tensors of 2048 elements or more.

    On CPU, torch's ``tanh`` kernel costs several times its ``sigmoid`` per element, so from a
    few thousand elements the four ops of this form
    cost less than one ``tanh``; below that, the call overhead of the extra ops dominates.
    Absolute error about 1e-7 (float32). The cores' backward uses the output
    (``tanh_backward``), so the extra ops add no backward work there.
    """
    if x.numel() < _TANH_VIA_SIGMOID_MIN_NUMEL:
        return torch.tanh(x)
    doubled = torch.sigmoid(x * 2.0)
    return (doubled + doubled).sub_(1.0)  # not in place on the sigmoid: autograd keeps its output


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
    ``forward(x, h, c) == step(x, W_x, h @ W_h + b_h, h, c)``.
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

    def hidden_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(G, H, gates * H)`` and bias ``(G, 1, gates * H)`` of the projection of ``h`` that :meth:`step` takes."""
        raise NotImplementedError

    def input_projection(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight ``(G, input_size, gates * H)`` and bias (``None`` if it is added with ``h``'s) of
        the projection of ``x`` inside :meth:`step`."""
        raise NotImplementedError

    def step(
        self,
        x: torch.Tensor,
        input_weight: torch.Tensor,
        hidden_gates: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """One step from ``x``, the weight that multiplies it (:meth:`input_projection`'s, or a
        product that ends in it) and the precomputed ``hidden_gates = h @ W_h + b_h``
        ``(G, B, gates * H)``.

        Returns ``(h', c', saved)``: ``saved`` is what :meth:`step_backward` needs.
        """
        raise NotImplementedError

    def step_backward(
        self, saved: tuple[torch.Tensor, ...], grad_h: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The step's backward from ``d h'`` and ``d c'`` (each ``(G, B, H)``).

        Returns the gradients of the input projection's output ``x @ W_x (+ b_x)``, of
        ``hidden_gates``, of ``h`` along the paths that bypass ``hidden_gates`` (``None`` if
        none), and of ``c``.
        """
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self.hidden_projection()
        h_next, c_next, _ = self.step(x, self.input_projection()[0], torch.baddbmm(bias, h, weight), h, c)
        return h_next, c_next


class GroupedLSTMCell(_GroupedCell):
    """``G`` independent LSTM cells (``torch.nn.LSTMCell``'s equations).

    Gates are stored in the order (i, f, o, g) so one sigmoid covers the three gates. One bias
    suffices (torch's second LSTM bias is redundant); it is stored with the input projection but
    added with the hidden one (:meth:`hidden_projection`), so the input matmul adds onto the hidden
    gates in one ``baddbmm``.
    """

    num_gates = 4
    hidden_bias = False

    def hidden_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden_gates.weight, self.input_gates.bias

    def input_projection(self) -> tuple[torch.Tensor, None]:
        return self.input_gates.weight, None

    def step(
        self,
        x: torch.Tensor,
        input_weight: torch.Tensor,
        hidden_gates: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        gates = torch.baddbmm(hidden_gates, x, input_weight)  # the bias came with hidden_gates
        # split, not slices: the backward is one cat instead of two zero-filled full-size gradients.
        sigmoid_gates, cell_input = gates.split([3 * self.hidden_size, self.hidden_size], dim=-1)
        sigmoid_gates, cell_input = torch.sigmoid(sigmoid_gates), tanh_via_sigmoid(cell_input)
        i, f, o = sigmoid_gates.chunk(3, dim=-1)
        c_next = torch.addcmul(f * c, i, cell_input)
        tanh_c = tanh_via_sigmoid(c_next)
        return o * tanh_c, c_next, (sigmoid_gates, cell_input, tanh_c, c)

    def step_backward(
        self, saved: tuple[torch.Tensor, ...], grad_h: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, None, torch.Tensor]:
        sigmoid_gates, cell_input, tanh_c, c = saved
        i, f, o = sigmoid_gates.chunk(3, dim=-1)
        grad_c_next = torch.ops.aten.tanh_backward(grad_h * o, tanh_c).add_(grad_c)
        grad_ifo = torch.cat([grad_c_next * cell_input, grad_c_next * c, grad_h * tanh_c], dim=-1)
        grad_gates = torch.cat(
            [
                torch.ops.aten.sigmoid_backward(grad_ifo, sigmoid_gates),
                torch.ops.aten.tanh_backward(grad_c_next * i, cell_input),
            ],
            dim=-1,
        )
        # One pre-activation sum: the input and hidden projections get the same gradient.
        return grad_gates, grad_gates, None, grad_c_next * f


class GroupedGRUCell(_GroupedCell):
    """``G`` independent GRU cells (``torch.nn.GRUCell``'s equations, gates r, z, n).

    A GRU has no cell state: ``c`` is passed through untouched.
    """

    num_gates = 3
    hidden_bias = True

    def hidden_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hidden_gates.weight, self.hidden_gates.bias

    def input_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_gates.weight, self.input_gates.bias

    def step(
        self,
        x: torch.Tensor,
        input_weight: torch.Tensor,
        hidden_gates: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        xr, xz, xn = torch.baddbmm(self.input_gates.bias, x, input_weight).chunk(3, dim=-1)
        hr, hz, hn = hidden_gates.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = tanh_via_sigmoid(torch.addcmul(xn, r, hn))
        return n + z * (h - n), c, (r, z, n, hn, h)

    def step_backward(
        self, saved: tuple[torch.Tensor, ...], grad_h: torch.Tensor, grad_c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        r, z, n, hn, h = saved
        grad_n = torch.ops.aten.tanh_backward(grad_h - grad_h * z, n)  # d(xn + r * hn)
        grad_r = torch.ops.aten.sigmoid_backward(grad_n * hn, r)
        grad_z = torch.ops.aten.sigmoid_backward(grad_h * (h - n), z)
        grad_input_gates = torch.cat([grad_r, grad_z, grad_n], dim=-1)
        grad_hidden_gates = torch.cat([grad_r, grad_z, grad_n * r], dim=-1)
        return grad_input_gates, grad_hidden_gates, grad_h * z, grad_c


def make_grouped_cell(kind: str, num_groups: int, input_size: int, hidden_size: int) -> nn.Module:
    """Build ``num_groups`` independent ``"lstm"`` or ``"gru"`` cells."""
    check_positive("num_groups", num_groups)
    if kind == "lstm":
        return GroupedLSTMCell(num_groups, input_size, hidden_size)
    if kind == "gru":
        return GroupedGRUCell(num_groups, input_size, hidden_size)
    raise ValueError(f"cell must be one of {CELL_KINDS}, got {kind!r}")
