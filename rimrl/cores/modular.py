"""What RIM and SRM share: units with their own cells that read a token set by attention (with a
null token), a hard choice of active units, communication among units as a residual, and a sparse
update that copies inactive units bit-for-bit.

The cores differ only in the logit terms they add and in which units may be active:

- RIM (Goyal et al. 2019): no extra terms; the ``k`` units that attend least to the null token.
- SRM (Rahaman, Goyal et al. 2021): ``log K(p_m, s_i)`` added to the input-attention logits and
  ``log K(p_m, p_n)`` to the communication logits (a truncated kernel: ``-inf`` outside the
  support), units with no token in their support are inactive, and ``k`` is an optional cap.

:class:`ModularCore` holds the layers and the one loop over time; a subclass supplies the terms
through :meth:`ModularCore.attention_terms`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rimrl.cores.base import RecurrentCore, State, check_divisible, check_positive, check_probability
from rimrl.cores.grouped import CELL_KINDS, GroupedLinear, make_grouped_cell
from rimrl.cores.loop import LoopSettings, run_modular_loop

#: Standard deviation of the learned initial ``h`` at construction (``c`` starts at zero).
INITIAL_STATE_STD = 0.1

#: How the top-k unit choice breaks exact ties in the null attention (units whose state is still
#: exactly zero after an episode start tie with each other): ``"torch"``, the order of
#: ``torch.topk`` (left to its implementation: the default, which every model trained before the
#: option existed used), or ``"index"``, the lower unit index first (a stable sort: the same on any
#: device and in rimrl.jax without calling back into torch).
TIE_BREAKS = ("torch", "index")


class ModularCore(RecurrentCore):
    """Units (modules) of ``unit_size`` with grouped cells, input attention and communication.

    ``hidden_size = num_units * unit_size``; ``x`` ``(T, B, input_size)`` is read as ``num_tokens``
    tokens of ``input_size // num_tokens`` features. See :class:`rimrl.cores.RIM` for the
    arguments. ``unit_name`` is the word error messages use for ``num_units`` (SRM says modules).

    After each call, ``last_active_mask`` holds the ``(T, B, num_units)`` bool mask of active units
    (detached); with ``record_attention = True`` the call also stores ``last_input_attention``
    ``(T, B, num_units, N + 1)`` (head-averaged, slot 0 = null, detached).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_units: int,
        k: int | None,
        cell: str,
        num_tokens: int,
        input_key_size: int,
        input_value_size: int | None,
        num_input_heads: int,
        comm_key_size: int,
        comm_value_size: int | None,
        num_comm_heads: int,
        input_dropout: float,
        comm_dropout: float,
        learn_initial_state: bool = False,
        position_k: int | None = None,
        unit_name: str = "num_units",
        tie_break: str = "torch",
    ) -> None:
        super().__init__(input_size, hidden_size)
        check_positive(unit_name, num_units)
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_units):
            raise ValueError(f"k must be None or an integer in [1, {unit_name}={num_units}], got {k!r}")
        if cell not in CELL_KINDS:
            raise ValueError(f"cell must be one of {CELL_KINDS}, got {cell!r}")
        check_positive("num_tokens", num_tokens)
        check_divisible("hidden_size", hidden_size, unit_name, num_units)
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
        # The state a reset (and state=None) sets. Zeros make every unit's query zero at an
        # episode's first step: all units then tie on the null slot and top-k always picks the same
        # ones. A learned state gives each unit its own first query (docs/policies.md, "Ties").
        if not isinstance(learn_initial_state, bool):
            raise ValueError(f"learn_initial_state must be a bool, got {learn_initial_state!r}")
        self.learn_initial_state = learn_initial_state
        if position_k is not None and (
            not isinstance(position_k, int) or isinstance(position_k, bool) or not 1 <= position_k <= num_units
        ):
            raise ValueError(f"position_k must be None or an integer in [1, {unit_name}={num_units}], got {position_k!r}")
        self.position_k = position_k
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
        self.tie_break = tie_break
        if learn_initial_state:
            self.h_init = nn.Parameter(INITIAL_STATE_STD * torch.randn(num_units, 1, unit_size))
            self.c_init = nn.Parameter(torch.zeros(num_units, 1, unit_size)) if cell == "lstm" else None
        else:
            self.h_init = self.c_init = None
        self.record_attention = False
        self.fold_projections = True  # see attention_operands
        self.last_active_mask: torch.Tensor | None = None
        self.last_input_attention: torch.Tensor | None = None

    def initial_state(self, batch_size: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, c)``, each ``(1, B, hidden_size)``: zeros, or the learned initial state."""
        if self.h_init is None:
            return super().initial_state(batch_size, like)
        zeros = super().initial_state(batch_size, like)[0]
        h = self.h_init.transpose(0, 1).reshape(1, 1, self.hidden_size).expand(1, batch_size, -1).to(like)
        c = zeros if self.c_init is None else self.c_init.transpose(0, 1).reshape(1, 1, -1).expand_as(h).to(like)
        return h, c

    def attention_terms(self) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """``(input_logits (U, N + 1), comm_logits (U, U), eligible (U,) bool)``, each or ``None``.

        Added to the input-attention and communication logits of every step and row; units not
        ``eligible`` are never active. The base class adds nothing (RIM).
        """
        return None, None, None

    def token_presence(self, x: torch.Tensor) -> torch.Tensor | None:
        """``(T, B, N)`` bool: which tokens of ``x`` are present at each step and row; ``None``: all,
        always. Absent tokens get no attention, and units with no present token they may read are
        inactive. The base class treats every token as present (RIM)."""
        return None

    def input_keys_values(self, x: torch.Tensor, key_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared keys and values of the input set with the null token placed first, as the paper
        writes them, in the layouts a step's attention multiplies with.

        ``x`` ``(T, B, input_size)`` -> transposed keys ``(T, B * heads, input_key_size, N + 1)``
        (times ``key_scale``) and values ``(T, B * heads, N + 1, input_value_size)``, rows ordered
        (batch, head); slot 0 is the null token, whose key and value are exactly zero (padded
        in: what the bias-free projections give a zero token). The keys are computed transposed
        and the two projections kept apart so that, for one head, no copy or split stands between
        them and the steps, in the forward or the backward pass.
        """
        tokens = self._tokens(x)
        return self._input_keys_t(tokens, key_scale), self._input_values(tokens)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(T, B, input_size)`` -> ``(T, B, N, token_dim)``."""
        return x.reshape(x.shape[0], x.shape[1], self.num_tokens, self.token_dim)

    def _input_keys_t(self, tokens: torch.Tensor, key_scale: float) -> torch.Tensor:
        seq_len, batch_size = tokens.shape[:2]
        key_weight = self.input_key.weight if key_scale == 1.0 else self.input_key.weight * key_scale
        # The null slot is padded in as exact zeros after the projections (no matmul of zero rows).
        keys_t = F.pad(torch.matmul(key_weight, tokens.transpose(2, 3)), (1, 0))  # (T, B, heads * dk, N + 1)
        return keys_t.view(seq_len, batch_size * self.num_input_heads, self.input_key_size, self.num_tokens + 1)

    def _input_values(self, tokens: torch.Tensor) -> torch.Tensor:
        seq_len, batch_size = tokens.shape[:2]
        heads = self.num_input_heads
        values = F.pad(F.linear(tokens, self.input_value.weight), (0, 0, 1, 0))  # (T, B, N + 1, heads * dv)
        if heads > 1:
            values = values.unflatten(-1, (heads, -1)).transpose(2, 3)
        return values.reshape(seq_len, batch_size * heads, self.num_tokens + 1, self.input_value_size)

    def attention_operands(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a step's input attention and cells multiply with: ``(keys_t, values, query_weight,
        input_weight)``.

        The attention is bilinear, ``(h W_q)(s W_k)^T = h (W_q W_k^T) s^T``, and the cells read
        ``(a S W_v) W_x = (a S)(W_v W_x)``. With one head and tokens narrower than the keys
        (values), the token projection is folded into each unit's query (input) weight: the steps
        then read the raw tokens and no ``(T, B, N, d)`` projection of every token is made — for a
        7x7 grid of 32-d tokens that projection costs more than the steps' whole attention. Same
        equations and parameters; ``fold_projections = False`` keeps the paper's order of products.

        Returns keys ``(T, B * heads, d_q, N + 1)`` (the attention scale folded in, slot 0 the null
        token, exactly zero), values ``(T, B * heads, N + 1, d_v)``, the queries' weight
        ``(U, unit_size, heads * d_q)`` and the cells' input weight ``(U, heads * d_v, gates * unit_size)``.
        """
        key_scale = 1.0 / math.sqrt(self.input_key_size)
        one_head = self.num_input_heads == 1 and self.fold_projections
        fold_keys = one_head and self.token_dim < self.input_key_size
        fold_values = one_head and self.token_dim <= self.input_value_size
        tokens = self._tokens(x)
        query_weight, input_weight = self.input_query.weight, self.cell.input_projection()[0]
        if fold_keys or fold_values:
            padded = F.pad(tokens, (0, 0, 1, 0))  # (T, B, N + 1, D), the null token (zeros) first
        if fold_keys:
            keys_t = padded.transpose(2, 3)
            query_weight = torch.matmul(query_weight, self.input_key.weight) * key_scale  # (U, S, D)
        else:
            keys_t = self._input_keys_t(tokens, key_scale)
        if fold_values:
            values = padded
            input_weight = torch.matmul(self.input_value.weight.t(), input_weight)  # (U, D, gates * S)
        else:
            values = self._input_values(tokens)
        return keys_t, values, query_weight, input_weight

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
            state: ``(h, c)``, each ``(1, B, hidden_size)``; ``None`` for the initial state (zeros,
                or the learned one with ``learn_initial_state``).
            episode_starts: ``(T, B)`` in {0, 1}; rows with 1 are reset to the initial state
                before step t.
            active_mask: optional ``(T, B, num_units)`` bool that replaces the selection (for
                ablations and tests); ``None`` selects as the core's paper does.

        Returns:
            ``out`` ``(T, B, hidden_size)`` and the final ``(h, c)``, each ``(1, B, hidden_size)``.
        """
        state, keep = self._prepare(x, state, episode_starts)
        seq_len, batch_size = x.shape[:2]
        units, heads = self.num_units, self.num_input_heads
        if active_mask is not None and active_mask.shape != (seq_len, batch_size, units):
            raise ValueError(
                f"active_mask must have shape (T, B, {units}) = ({seq_len}, {batch_size}, {units}), "
                f"got {tuple(active_mask.shape)}"
            )
        # Everything that does not depend on the state is computed once, outside the time loop.
        input_logits, comm_logits, eligible = self.attention_terms()
        # Keys and values in (T, B * heads, ...) layouts: a step's scores and reads are then one
        # bmm each.
        keys_t, values, query_weight, input_weight = self.attention_operands(x)
        presence = self.token_presence(x)
        token_bias = None
        if presence is not None:
            # Absent tokens: -inf logits (zero attention and gradient); the null slot stays.
            token_bias = F.pad(torch.zeros_like(presence, dtype=x.dtype).masked_fill(~presence, float("-inf")), (1, 0))
            token_bias = token_bias.repeat_interleave(heads, dim=1).unsqueeze(2)  # (T, B * heads, 1, N + 1)
            # A unit may be active at a step only if a present token lies where it may read (its
            # kernel support for SRM: a finite input logit).
            readable = torch.ones(units, self.num_tokens, dtype=x.dtype, device=x.device)
            if input_logits is not None:
                readable = torch.isfinite(input_logits[:, 1:]).to(x.dtype)
            eligible = (torch.matmul(presence.to(x.dtype), readable.t()) > 0).permute(0, 2, 1).unsqueeze(-1)
        elif eligible is not None:
            eligible = eligible.view(units, 1, 1)
        # Which units may be active at all; with no top-k and all eligible nothing is masked.
        all_active = active_mask is None and self.k is None and (eligible is None or bool(eligible.all()))
        # One host sync up front instead of a multiply per step: which steps reset any row.
        reset_steps = keep[:, :, 0].lt(1).any(dim=1).tolist()

        # The units' queries and the cells' recurrent gates both read h: one matmul per step.
        query_size = query_weight.shape[-1]
        hidden_weight, hidden_bias = self.cell.hidden_projection()
        read_h_weight = torch.cat([query_weight, hidden_weight], dim=-1)
        read_h_bias = F.pad(hidden_bias, (query_size, 0))  # the queries have no bias
        comm_heads = self.num_comm_heads
        comm_split = [self.comm_key_size, self.comm_key_size, self.comm_value_size]
        # The communication scale 1/sqrt(d) folded into the query columns of each head.
        column_scale = torch.ones(comm_heads, sum(comm_split), dtype=x.dtype, device=x.device)
        column_scale[:, : self.comm_key_size] = 1.0 / math.sqrt(self.comm_key_size)
        comm_weight = self.comm_qkv.weight * column_scale.view(-1)
        # Communication of all heads in one (U * heads)-row attention per batch row: rows (unit, head)
        # attend only within their head (-inf elsewhere, so those weights are exactly 0). One
        # (B, U * heads, ...) matmul instead of B * heads tiny (U, ...) ones: several times fewer,
        # larger matmuls for the same result.
        comm_rows = units * comm_heads
        head_of_row = torch.arange(comm_rows, device=x.device) % comm_heads
        comm_bias = torch.zeros(comm_rows, comm_rows, dtype=x.dtype, device=x.device)
        comm_bias.masked_fill_(head_of_row[:, None] != head_of_row[None, :], float("-inf"))
        if comm_logits is not None:
            comm_bias = comm_bias + comm_logits.repeat_interleave(comm_heads, 0).repeat_interleave(comm_heads, 1)

        input_bias = self.cell.input_projection()[1]
        comm_out = self.comm_out
        settings = LoopSettings(
            cell=self.cell,
            input_heads=heads,
            comm_heads=comm_heads,
            query_size=query_size,
            comm_split=comm_split,
            k=self.k,
            position_k=self.position_k,
            tie_break=self.tie_break,
            eligible=eligible,
            token_bias=token_bias,
            active_mask=active_mask,
            all_active=all_active,
            reset_steps=reset_steps,
            input_dropout=self.input_dropout.p if self.input_dropout.training else 0.0,
            comm_dropout=self.comm_dropout.p if self.comm_dropout.training else 0.0,
            record_attention=self.record_attention,
        )
        # Unit-major layout (U, B, S) so each unit's weights apply in one bmm.
        h0 = state[0].reshape(batch_size, units, self.unit_size).transpose(0, 1).contiguous()
        c0 = state[1].reshape(batch_size, units, self.unit_size).transpose(0, 1).contiguous()
        outputs, c = run_modular_loop(
            settings, keys_t, values, keep, h0, c0, read_h_weight, read_h_bias, input_weight, input_bias,
            input_logits, comm_weight, comm_bias,
            None if comm_out is None else comm_out.weight, None if comm_out is None else comm_out.bias,
            self.h_init, self.c_init,
        )  # fmt: skip  # outputs (T, U, B, S)

        if all_active:
            self.last_active_mask = torch.ones(seq_len, batch_size, units, dtype=torch.bool, device=x.device)
        else:
            self.last_active_mask = torch.stack(settings.masks).squeeze(-1).transpose(1, 2)  # (T, B, U)
        self.last_input_attention = torch.stack(settings.attentions) if settings.attentions else None
        out = outputs.permute(0, 2, 1, 3).reshape(seq_len, batch_size, self.hidden_size)
        h_final = out[-1:]
        if self.cell_kind == "gru":
            c_final = torch.zeros_like(h_final)
        else:
            c_final = c.transpose(0, 1).reshape(1, batch_size, self.hidden_size)
        return out, (h_final, c_final)
