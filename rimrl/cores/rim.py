"""Recurrent Independent Mechanisms (Goyal et al., arXiv 1909.10893), as DESIGN.md states them.

One step, for ``U = num_units`` units of size ``S`` (``hidden_size = U * S``):

1. Input attention. The input is a set of ``N = num_tokens`` tokens plus a null token of zeros
   placed first. Unit u's query is ``q_u = h_u W_q^u`` (its own weights); keys ``K = X W_k`` and
   values ``V = X W_v`` are shared and have no bias, so the null slot's key and value are exactly
   zero. ``A_u = softmax(q_u K^T / sqrt(d_k))`` over the N + 1 slots (averaged over heads for
   selection).
2. Selection. The ``k`` units with the least attention on the null slot are active. The mask is
   hard (top-k indices) and carries no gradient.
3. Independent dynamics. Every unit has its own LSTM/GRU weights (one grouped matmul) and reads
   only its own attended input ``A_u V``.
4. Communication. Each unit forms unit-specific query/key/value from the states after step 3
   (inactive units contribute their previous state); multi-head attention over all units; the
   result, projected per unit, is added as a residual to the active units' states.
5. Sparse update. ``h`` and ``c`` of inactive units are copied bit-for-bit (``torch.where``), so
   their discarded candidate updates receive no gradient while gradient still flows in time
   through the copied state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rimrl.cores.base import (
    RecurrentCore,
    State,
    check_divisible,
    check_positive,
    check_probability,
)
from rimrl.cores.grouped import CELL_KINDS, GroupedLinear, make_grouped_cell


class RIM(RecurrentCore):
    """Recurrent Independent Mechanisms with the rimrl core contract.

    Args:
        input_size: ``num_tokens * token_dim``; ``x`` of shape ``(T, B, input_size)`` is read as
            ``num_tokens`` tokens of ``token_dim`` features (a set, attended by the units).
        hidden_size: ``num_units * unit_size``; the output and state are the units' states
            concatenated, unit-major.
        num_units: number of units (mechanisms) U.
        k: number of active units per step and row, ``1 <= k <= num_units``.
        cell: ``"lstm"`` or ``"gru"``. For ``"gru"`` the returned ``c`` is all zeros.
        num_tokens: number of input tokens N.
        input_key_size, num_input_heads: key size per head and heads of the input attention.
        input_value_size: value size per head of the input attention (default: unit size).
        comm_key_size, num_comm_heads: key size per head and heads of the communication.
        comm_value_size: value size per head of the communication. Default
            ``unit_size // num_comm_heads``: the heads, concatenated, are exactly a unit's state
            and are added to it as in the paper's ``h = softmax(Q K^T / sqrt(d)) V + h~`` (when the
            heads do not divide the unit size, ``unit_size``). Any size whose heads, concatenated,
            differ from ``unit_size`` adds a per-unit output projection back to ``unit_size``.
        input_dropout, comm_dropout: dropout on the two attention distributions.

    After each call, ``last_active_mask`` holds the ``(T, B, num_units)`` bool mask of active
    units (detached), for analysis and plots.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_units: int = 6,
        k: int = 4,
        cell: str = "lstm",
        num_tokens: int = 1,
        input_key_size: int = 64,
        input_value_size: int | None = None,
        num_input_heads: int = 1,
        comm_key_size: int = 32,
        comm_value_size: int | None = None,
        num_comm_heads: int = 4,
        input_dropout: float = 0.1,
        comm_dropout: float = 0.1,
    ) -> None:
        super().__init__(input_size, hidden_size)
        check_positive("num_units", num_units)
        if not isinstance(k, int) or not 1 <= k <= num_units:
            raise ValueError(f"k must be an integer in [1, num_units={num_units}], got {k!r}")
        if cell not in CELL_KINDS:
            raise ValueError(f"cell must be one of {CELL_KINDS}, got {cell!r}")
        check_positive("num_tokens", num_tokens)
        check_divisible("hidden_size", hidden_size, "num_units", num_units)
        check_divisible("input_size", input_size, "num_tokens", num_tokens)
        unit_size = hidden_size // num_units
        input_value_size = unit_size if input_value_size is None else input_value_size
        if comm_value_size is None:
            divides = num_comm_heads > 0 and unit_size % num_comm_heads == 0
            comm_value_size = unit_size // num_comm_heads if divides else unit_size
        for name, value in (
            ("input_key_size", input_key_size),
            ("input_value_size", input_value_size),
            ("num_input_heads", num_input_heads),
            ("comm_key_size", comm_key_size),
            ("comm_value_size", comm_value_size),
            ("num_comm_heads", num_comm_heads),
        ):
            check_positive(name, value)
        check_probability("input_dropout", input_dropout)
        check_probability("comm_dropout", comm_dropout)

        self.num_units, self.k, self.cell_kind = num_units, k, cell
        self.num_tokens, self.token_dim, self.unit_size = num_tokens, input_size // num_tokens, unit_size
        self.num_input_heads, self.input_key_size, self.input_value_size = (
            num_input_heads,
            input_key_size,
            input_value_size,
        )
        self.num_comm_heads, self.comm_key_size, self.comm_value_size = (
            num_comm_heads,
            comm_key_size,
            comm_value_size,
        )

        # 1. Input attention: unit-specific queries, shared bias-free keys and values.
        self.input_query = GroupedLinear(num_units, unit_size, num_input_heads * input_key_size, bias=False)
        self.input_key = nn.Linear(self.token_dim, num_input_heads * input_key_size, bias=False)
        self.input_value = nn.Linear(self.token_dim, num_input_heads * input_value_size, bias=False)
        self.input_dropout = nn.Dropout(input_dropout)
        # 3. Independent dynamics: one cell per unit.
        self.cell = make_grouped_cell(cell, num_units, num_input_heads * input_value_size, unit_size)
        # 4. Communication: unit-specific query/key/value in one grouped matmul, per-unit output.
        self.comm_qkv = GroupedLinear(
            num_units, unit_size, num_comm_heads * (2 * comm_key_size + comm_value_size), bias=False
        )
        read_size = num_comm_heads * comm_value_size
        self.comm_out = None if read_size == unit_size else GroupedLinear(num_units, read_size, unit_size)
        self.comm_dropout = nn.Dropout(comm_dropout)
        self.last_active_mask: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_units={self.num_units}, "
            f"k={self.k}, cell={self.cell_kind!r}, num_tokens={self.num_tokens}"
        )

    def input_keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the input set with the null token placed first.

        ``x`` ``(T, B, input_size)`` -> keys ``(T, B, N + 1, heads, input_key_size)`` and values
        ``(T, B, N + 1, heads, input_value_size)``; slot 0 is the null token (exactly zero).
        """
        seq_len, batch_size = x.shape[:2]
        tokens = x.reshape(seq_len, batch_size, self.num_tokens, self.token_dim)
        null = tokens.new_zeros(seq_len, batch_size, 1, self.token_dim)
        tokens = torch.cat([null, tokens], dim=2)
        keys = self.input_key(tokens).view(seq_len, batch_size, self.num_tokens + 1, self.num_input_heads, -1)
        values = self.input_value(tokens).view(seq_len, batch_size, self.num_tokens + 1, self.num_input_heads, -1)
        return keys, values

    def forward(
        self,
        x: torch.Tensor,
        state: State | None = None,
        episode_starts: torch.Tensor | None = None,
        active_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Run the whole sequence.

        Args:
            x: ``(T, B, input_size)``.
            state: ``(h, c)``, each ``(1, B, hidden_size)``; ``None`` for zeros.
            episode_starts: ``(T, B)`` in {0, 1}; rows with 1 are reset before step t.
            active_mask: optional ``(T, B, num_units)`` bool that replaces the top-k selection
                (for ablations and tests); ``None`` selects by attention as in the paper.

        Returns:
            ``out`` ``(T, B, hidden_size)`` and the final ``(h, c)``, each ``(1, B, hidden_size)``.
        """
        state, keep = self._prepare(x, state, episode_starts)
        seq_len, batch_size = x.shape[:2]
        units, unit_size = self.num_units, self.unit_size
        if active_mask is not None and active_mask.shape != (seq_len, batch_size, units):
            raise ValueError(
                f"active_mask must have shape (T, B, num_units) = ({seq_len}, {batch_size}, {units}), "
                f"got {tuple(active_mask.shape)}"
            )
        # Shared keys/values do not depend on the state: compute them for all steps at once.
        keys, values = self.input_keys_values(x)
        keys = keys * (1.0 / math.sqrt(self.input_key_size))  # fold the attention scale in once
        # unbind, not keys[t]: indexing in the loop would make backward zero-fill a (T, ...) tensor per step.
        step_keys, step_values, step_keep = keys.unbind(0), values.unbind(0), keep.unbind(0)
        comm_scale = 1.0 / math.sqrt(self.comm_key_size)
        comm_split = (self.comm_key_size, self.comm_key_size, self.comm_value_size)
        empty_scores = x.new_empty(batch_size * self.num_comm_heads, units, units)

        # Unit-major layout (U, B, S) so each unit's weights apply in one bmm.
        h = state[0].reshape(batch_size, units, unit_size).transpose(0, 1)
        c = state[1].reshape(batch_size, units, unit_size).transpose(0, 1)
        outputs, masks = [], []
        # One host sync up front instead of a multiply per step: which steps reset any row.
        reset_steps = keep[:, :, 0].lt(1).any(dim=1).tolist()
        for t in range(seq_len):
            if reset_steps[t]:
                h, c = h * step_keep[t], c * step_keep[t]

            # 1. Input attention over [null, tokens]: (B, heads, U, N + 1).
            query = self.input_query(h).view(units, batch_size, self.num_input_heads, -1)
            scores = torch.einsum("ubhd,bnhd->bhun", query, step_keys[t])
            attention = scores.softmax(dim=-1)

            # 2. Select the k units that attend least to the null slot (hard, no gradient).
            if active_mask is None:
                null_attention = attention[..., 0].detach()  # (B, heads, U)
                null_attention = null_attention[:, 0] if self.num_input_heads == 1 else null_attention.mean(1)
                chosen = null_attention.topk(self.k, dim=1, largest=False).indices
                mask = torch.zeros(batch_size, units, dtype=torch.bool, device=x.device)
                mask.scatter_(1, chosen, True)
            else:
                mask = active_mask[t].bool()
            masks.append(mask)
            unit_mask = mask.t().unsqueeze(-1)  # (U, B, 1)

            # 3. Independent dynamics on each unit's own attended input.
            attended = torch.einsum("bhun,bnhd->ubhd", self.input_dropout(attention), step_values[t])
            h_cell, c_cell = self.cell(attended.reshape(units, batch_size, -1), h, c)
            h_tilde = torch.where(unit_mask, h_cell, h)
            c = torch.where(unit_mask, c_cell, c)

            # 4. Communication among all units' states; a residual for the active ones.
            qkv = self.comm_qkv(h_tilde).view(units, batch_size * self.num_comm_heads, -1).transpose(0, 1)
            q, k, v = qkv.split(comm_split, dim=-1)  # each (B * heads, U, d)
            comm_attention = torch.baddbmm(empty_scores, q, k.transpose(1, 2), beta=0.0, alpha=comm_scale)
            read = torch.bmm(self.comm_dropout(comm_attention.softmax(dim=-1)), v)
            read = read.transpose(0, 1).reshape(units, batch_size, -1)
            h_comm = h_tilde + (read if self.comm_out is None else self.comm_out(read))

            # 5. Sparse update: inactive units keep h exactly (and, above, c).
            h = torch.where(unit_mask, h_comm, h)
            outputs.append(h)

        self.last_active_mask = torch.stack(masks)
        out = torch.stack(outputs).permute(0, 2, 1, 3).reshape(seq_len, batch_size, self.hidden_size)
        h_final = h.transpose(0, 1).reshape(1, batch_size, self.hidden_size)
        if self.cell_kind == "gru":
            c_final = torch.zeros_like(h_final)
        else:
            c_final = c.transpose(0, 1).reshape(1, batch_size, self.hidden_size)
        return out, (h_final, c_final)
