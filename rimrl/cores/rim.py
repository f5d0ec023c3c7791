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
   result is added as a residual to the active units' states:
   ``h_u = softmax(Q_u K^T / sqrt(d)) V + h~_u``.
5. Sparse update. ``h`` and ``c`` of inactive units are copied bit-for-bit (``torch.where``), so
   their discarded candidate updates receive no gradient while gradient still flows in time
   through the copied state.

The loop itself lives in :class:`rimrl.cores.modular.ModularCore`, shared with SRM.
"""

from __future__ import annotations

from rimrl.cores.modular import ModularCore


class RIM(ModularCore):
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
        learn_initial_state: reset rows (and ``state=None``) to a learned per-unit ``(h, c)``
            instead of zeros. With zeros every unit's first query is zero, all units tie on the
            null slot at an episode's first step, and top-k always picks the same units.
        position_k: per-position competition for a token set (the paper's rule for inputs with
            several positions): each real token is read only by the ``position_k`` units whose
            scores for it are highest (all units tied with the ``position_k``-th read it too);
            ``None`` lets every unit read every token. Selection of the ``k`` active units is
            unchanged (least null attention, after this masking).
        tie_break: how exact ties among the least-null units are broken: ``"torch"`` (default,
            ``torch.topk``'s order) or ``"index"`` (lower index first); see
            :data:`rimrl.cores.modular.TIE_BREAKS`.

    After each call, ``last_active_mask`` holds the ``(T, B, num_units)`` bool mask of active
    units (detached), for analysis and plots. ``forward(..., active_mask=...)`` replaces the
    selection with a given mask (ablations, tests).
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
        learn_initial_state: bool = False,
        position_k: int | None = None,
        tie_break: str = "torch",
    ) -> None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= num_units:
            raise ValueError(f"k must be an integer in [1, num_units={num_units}], got {k!r}")
        super().__init__(
            input_size,
            hidden_size,
            num_units=num_units,
            k=k,
            cell=cell,
            num_tokens=num_tokens,
            input_key_size=input_key_size,
            input_value_size=input_value_size,
            num_input_heads=num_input_heads,
            comm_key_size=comm_key_size,
            comm_value_size=comm_value_size,
            num_comm_heads=num_comm_heads,
            input_dropout=input_dropout,
            comm_dropout=comm_dropout,
            learn_initial_state=learn_initial_state,
            position_k=position_k,
            tie_break=tie_break,
        )

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, num_units={self.num_units}, "
            f"k={self.k}, cell={self.cell_kind!r}, num_tokens={self.num_tokens}"
        )
