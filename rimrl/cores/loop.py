"""The modular cores' loop over time as one autograd node with a hand-written backward through time.

:class:`ModularCore` (``modular.py``) prepares everything that does not depend on the state —
keys and values of all tokens, merged weights, logit terms — and hands it to
:func:`run_modular_loop`, which runs the five steps of DESIGN.md for every time step.

Why one node: at the batch sizes of PPO minibatches (about 8 sequences) a step costs its number
of ops, not its arithmetic. Autograd would record some 40 nodes per step and replay each one's
backward, including, per step, the gradient of every weight. Here the forward records nothing;
the backward runs only the sequential chain (gradients of ``h`` and ``c``) per step and computes
the gradients of the weights, keys and values once, from stacked per-step terms, as a few large
matmuls — what ``torch.nn.LSTM`` does for its own weights.

Layouts: units first for the cells, ``(U, B, ...)``; ``(B * heads, U, ...)`` for the input
attention; ``(B, U * heads, ...)`` (rows ordered (unit, head)) for the communication.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def within_head_dropout_mask(
    batch_size: int, p: float, units: int, heads: int, like: torch.Tensor
) -> torch.Tensor:
    """Scaled keep-mask ``(B, U * heads, U * heads)`` for the communication weights in their
    all-heads layout (rows and columns ordered (unit, head), zero between different heads).

    Each within-head weight ``((u, h), (u', h))`` is kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``, independently — dropout on the per-head ``(B, heads, U, U)`` weights: one
    draw per head and pair of units, spread over a row's columns of all heads (the cross-head
    weights it also scales are exactly zero). Contiguous, so applying it is a plain multiply.
    """
    keep = torch.empty(batch_size, heads, units, units, dtype=like.dtype, device=like.device)
    keep = keep.bernoulli_(1.0 - p).div_(1.0 - p).permute(0, 2, 1, 3).unsqueeze(-1)  # (B, U, heads, U, 1)
    rows = units * heads
    return keep.expand(batch_size, units, heads, units, heads).reshape(batch_size, rows, rows)


@dataclass
class LoopSettings:
    """What the loop needs besides tensors. ``cell`` supplies ``step`` / ``step_backward``."""

    cell: nn.Module
    input_heads: int
    comm_heads: int
    query_size: int
    comm_split: list[int]
    k: int | None
    # Which units may be active: (U, 1, 1) bool for every step, (T, U, B, 1) bool per step and row,
    # or None: every unit may be active.
    eligible: torch.Tensor | None
    active_mask: torch.Tensor | None  # (T, B, U) given by the caller, or None: select
    all_active: bool  # no selection at all: skip every torch.where
    reset_steps: list[bool]
    input_dropout: float
    comm_dropout: float
    record_attention: bool
    # Per step and row, added to the input-attention logits: (T, B * heads, 1, N + 1), -inf for
    # absent tokens (None: every token present).
    token_bias: torch.Tensor | None = None
    # Per-position competition: each real token is read only by the `position_k` units that score
    # it highest (None: every unit may read every token).
    position_k: int | None = None
    # Exact ties in the selection: "torch" (torch.topk's order) or "index" (lower index first).
    tie_break: str = "torch"
    # Filled by the forward pass (detached side outputs).
    masks: list[torch.Tensor] = field(default_factory=list)
    attentions: list[torch.Tensor] = field(default_factory=list)


def _position_competition(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per token (column >= 1 of ``scores`` ``(B * heads, U, N + 1)``), keep the scores of the ``k``
    units that score it highest and set the others' to ``-inf`` (they read nothing of it); the null
    column is never masked. The choice is hard: a masked entry's attention is exactly 0, and so is
    its gradient (softmax backward), with no extra term in the loop's backward."""
    real = scores[:, :, 1:]
    kth = real.topk(k, dim=1).values[:, -1:, :]  # (B * heads, 1, N): the k-th best score per token
    masked = real.masked_fill(real < kth, float("-inf"))
    return torch.cat([scores[:, :, :1], masked], dim=2)


def _to_head_rows(z: torch.Tensor, batch_size: int, heads: int) -> torch.Tensor:
    """``(U, B, heads * d)`` -> ``(B * heads, U, d)``."""
    if heads == 1:
        return z.transpose(0, 1)
    units = z.shape[0]
    return z.unflatten(-1, (heads, -1)).permute(1, 2, 0, 3).reshape(batch_size * heads, units, -1)


def _from_head_rows(z: torch.Tensor, batch_size: int, heads: int) -> torch.Tensor:
    """``(B * heads, U, d)`` -> ``(U, B, heads * d)``."""
    if heads == 1:
        return z.transpose(0, 1)
    units = z.shape[1]
    return z.view(batch_size, heads, units, -1).permute(2, 0, 1, 3).reshape(units, batch_size, -1)


def _stack_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Per-step ``(U, B, d)`` -> ``(U, T * B, d)``: rows of every step side by side per unit."""
    stacked = torch.stack(tensors, dim=1)
    return stacked.view(stacked.shape[0], -1, stacked.shape[-1])


def _grouped_grads(
    inputs: list[torch.Tensor], grads: list[torch.Tensor], bias: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of a grouped weight ``(U, d_in, d_out)`` (and bias ``(U, 1, d_out)``) from the
    per-step inputs and output gradients: ``sum_t inputs[t]^T @ grads[t]``, one bmm."""
    grad_rows = _stack_rows(grads)
    weight = torch.bmm(_stack_rows(inputs).transpose(1, 2), grad_rows)
    return weight, grad_rows.sum(dim=1, keepdim=True) if bias else None


class _ModularLoop(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        settings: LoopSettings,
        save: bool,
        keys_t: torch.Tensor,
        values: torch.Tensor,
        keep: torch.Tensor,
        h: torch.Tensor,
        c: torch.Tensor,
        read_h_weight: torch.Tensor,
        read_h_bias: torch.Tensor,
        input_weight: torch.Tensor,
        input_bias: torch.Tensor | None,  # the cell's own (its step adds it); an input for its gradient
        input_logits: torch.Tensor | None,
        comm_weight: torch.Tensor,
        comm_bias: torch.Tensor,
        out_weight: torch.Tensor | None,
        out_bias: torch.Tensor | None,
        h_init: torch.Tensor | None,  # (U, 1, S): the state a reset sets (None: zeros)
        c_init: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = settings
        units, batch_size = h.shape[:2]
        heads, comm_heads, comm_rows = s.input_heads, s.comm_heads, units * s.comm_heads
        split_h = [s.query_size, read_h_weight.shape[-1] - s.query_size]
        cell_step, k, eligible, active_mask = s.cell.step, s.k, s.eligible, s.active_mask
        step_keys, step_values, step_keep = keys_t.unbind(0), values.unbind(0), keep.unbind(0)
        seq_len = len(step_keys)
        # Dropout masks of every step in one draw each (the same distribution as per-step draws).
        input_keeps = comm_keeps = None
        if s.input_dropout:
            shape = (seq_len, *step_keys[0].shape[:1], units, step_keys[0].shape[-1])  # (T, B * heads, U, N + 1)
            input_keeps = torch.empty(shape, dtype=h.dtype, device=h.device)
            input_keeps = input_keeps.bernoulli_(1.0 - s.input_dropout).div_(1.0 - s.input_dropout).unbind(0)
        if s.comm_dropout:
            comm_keeps = within_head_dropout_mask(seq_len * batch_size, s.comm_dropout, units, comm_heads, h)
            comm_keeps = comm_keeps.view(seq_len, batch_size, comm_rows, comm_rows).unbind(0)
        no_unit = torch.zeros(batch_size, units, dtype=torch.bool, device=h.device)  # scattered into per step
        per_step_eligible = eligible is not None and eligible.dim() == 4
        step_eligible = eligible.unbind(0) if per_step_eligible else None
        eligible_rows = None if eligible is None or per_step_eligible else eligible.expand(units, batch_size, 1)
        token_bias = None if s.token_bias is None else s.token_bias.unbind(0)
        saved: list[tuple] = []
        outputs = []
        for t in range(seq_len):
            if s.reset_steps[t]:
                h, c = _reset(h, step_keep[t], h_init), _reset(c, step_keep[t], c_init)
            h_in = h

            # 1. Input attention over [null, tokens]: (B * heads, U, N + 1).
            query, hidden_gates = torch.baddbmm(read_h_bias, h, read_h_weight).split(split_h, dim=-1)
            query = _to_head_rows(query, batch_size, heads)
            logit_bias = input_logits
            if token_bias is not None:
                logit_bias = token_bias[t] if input_logits is None else token_bias[t] + input_logits
            if logit_bias is None:
                scores = torch.bmm(query, step_keys[t])
            else:
                scores = torch.baddbmm(logit_bias, query, step_keys[t])
            if s.position_k is not None:
                scores = _position_competition(scores, s.position_k)
            attention = scores.softmax(dim=-1)
            if s.record_attention:
                s.attentions.append(attention.view(batch_size, heads, units, -1).mean(1))

            # 2. Selection (hard, no gradient).
            if active_mask is not None:
                unit_mask = active_mask[t].bool().t().unsqueeze(-1)
            elif k is not None:
                # The k units that attend least to the null slot (most to the real tokens).
                null_attention = attention[:, :, 0]  # (B * heads, U)
                if heads > 1:
                    null_attention = null_attention.view(batch_size, heads, units).mean(1)
                if s.tie_break == "index":
                    chosen = torch.sort(null_attention, dim=1, stable=True).indices[:, :k]
                else:
                    chosen = null_attention.topk(k, dim=1, largest=False).indices
                unit_mask = no_unit.scatter(1, chosen, True).t().unsqueeze(-1)  # (U, B, 1)
                if eligible is not None:
                    unit_mask = unit_mask & (step_eligible[t] if per_step_eligible else eligible)
            else:
                unit_mask = step_eligible[t] if per_step_eligible else eligible_rows
            if unit_mask is not None:
                s.masks.append(unit_mask)

            # 3. Independent dynamics on each unit's own attended input (the null value is zero).
            input_keep = None if input_keeps is None else input_keeps[t]
            read_weights = attention if input_keep is None else attention * input_keep
            attended = _from_head_rows(torch.bmm(read_weights, step_values[t]), batch_size, heads)  # (U, B, heads * dv)
            h_cell, c_cell, cell_saved = cell_step(attended, input_weight, hidden_gates, h, c)
            if s.all_active:
                h_tilde, c = h_cell, c_cell
            else:
                h_tilde = torch.where(unit_mask, h_cell, h)
                c = torch.where(unit_mask, c_cell, c)

            # 4. Communication among all units' states (inactive ones: their previous state); a
            #    residual for the active ones. Rows (unit, head) attend within their head only.
            qkv = torch.bmm(h_tilde, comm_weight).view(units, batch_size, comm_heads, -1)
            qkv = qkv.transpose(0, 1).reshape(batch_size, comm_rows, -1)
            q, k_comm, v = qkv.split(s.comm_split, dim=-1)  # each (B, U * heads, d); q already scaled
            comm_weights = torch.baddbmm(comm_bias, q, k_comm.transpose(1, 2)).softmax(dim=-1)
            comm_keep = None if comm_keeps is None else comm_keeps[t]
            mixing = comm_weights if comm_keep is None else comm_weights * comm_keep
            read = torch.bmm(mixing, v).view(batch_size, units, -1).transpose(0, 1)  # (U, B, heads * dv)
            if out_weight is None:
                h_comm = h_tilde + read
            else:
                h_comm = torch.baddbmm(out_bias, read, out_weight).add_(h_tilde)

            # 5. Sparse update: inactive units keep h exactly (and, above, c).
            h = h_comm if s.all_active else torch.where(unit_mask, h_comm, h)
            outputs.append(h)
            if save:
                saved.append(
                    (h_in, query, attention, input_keep, read_weights, attended, cell_saved, unit_mask,
                     h_tilde, qkv, comm_weights, comm_keep, mixing, read)
                )

        if save:
            ctx.settings, ctx.saved_steps = s, saved
            ctx.has_init = (h_init is not None, c_init is not None)
            ctx.save_for_backward(
                keys_t, values, keep, read_h_weight, input_weight, comm_weight, out_weight, input_logits, comm_bias
            )
        return torch.stack(outputs), c

    @staticmethod
    @once_differentiable  # the backward is written out, not itself recorded
    def backward(ctx, grad_outputs: torch.Tensor, grad_c_final: torch.Tensor):  # type: ignore[override]
        s: LoopSettings = ctx.settings
        keys_t, values, keep, read_h_weight, input_weight, comm_weight, out_weight, input_logits, comm_bias = (
            ctx.saved_tensors
        )
        steps = ctx.saved_steps
        seq_len = len(steps)
        units, batch_size = grad_outputs.shape[1:3]
        heads, comm_rows = s.input_heads, units * s.comm_heads
        step_keys, step_values, step_keep = keys_t.unbind(0), values.unbind(0), keep.unbind(0)
        read_h_weight_t, input_weight_t = read_h_weight.transpose(1, 2), input_weight.transpose(1, 2)
        comm_weight_t = comm_weight.transpose(1, 2)
        out_weight_t = None if out_weight is None else out_weight.transpose(1, 2)
        cell_backward = s.cell.step_backward
        value_size = s.comm_split[2]

        grad_h = torch.zeros_like(grad_outputs[0])
        grad_c = grad_c_final  # never written in place below
        # Gradients of the learned initial state: the reset rows' state gradients, summed over rows.
        grad_h_init = grad_c_init = None
        # Per-step terms of the gradients computed after the loop (index t filled at step t).
        grad_read_h: list = [None] * seq_len
        grad_scores_all: list = [None] * seq_len
        grad_attended_all: list = [None] * seq_len
        grad_input_gates_all: list = [None] * seq_len
        grad_qkv_all: list = [None] * seq_len
        grad_comm_scores_all: list = [None] * seq_len
        grad_h_comm_all: list = [None] * seq_len
        for t in range(seq_len - 1, -1, -1):
            (h_in, query, attention, input_keep, read_weights, attended, cell_saved, unit_mask,
             h_tilde, qkv, comm_weights, comm_keep, mixing, read) = steps[t]
            grad_h = grad_h + grad_outputs[t]
            if unit_mask is not None:
                unit_mask = unit_mask.to(grad_h.dtype)  # once, not in each of the three products
            # 5. h = where(m, h_comm, h_in)
            if s.all_active:
                grad_h_comm, grad_h_in = grad_h, None
            else:
                grad_h_comm = grad_h * unit_mask
                grad_h_in = grad_h - grad_h_comm
            # 4. Communication.
            if out_weight_t is None:
                grad_read = grad_h_comm
            else:
                grad_read = torch.bmm(grad_h_comm, out_weight_t)
                grad_h_comm_all[t] = grad_h_comm
            grad_read = grad_read.transpose(0, 1).reshape(batch_size, comm_rows, value_size)
            q, k_comm, v = qkv.split(s.comm_split, dim=-1)
            grad_mixing = torch.bmm(grad_read, v.transpose(1, 2))
            grad_v = torch.bmm(mixing.transpose(1, 2), grad_read)
            if comm_keep is not None:
                grad_mixing = grad_mixing * comm_keep
            grad_comm_scores = torch._softmax_backward_data(grad_mixing, comm_weights, -1, comm_weights.dtype)
            grad_comm_scores_all[t] = grad_comm_scores
            grad_q = torch.bmm(grad_comm_scores, k_comm)
            grad_k = torch.bmm(grad_comm_scores.transpose(1, 2), q)
            grad_qkv = torch.cat([grad_q, grad_k, grad_v], dim=-1).view(batch_size, units, -1).transpose(0, 1)
            grad_qkv_all[t] = grad_qkv
            grad_h_tilde = torch.baddbmm(grad_h_comm, grad_qkv, comm_weight_t)
            # 3. h_tilde = where(m, h_cell, h_in), c = where(m, c_cell, c_in), the cell, the read.
            if s.all_active:
                grad_h_cell, grad_c_cell = grad_h_tilde, grad_c
            else:
                grad_h_cell = grad_h_tilde * unit_mask
                grad_h_in = grad_h_in + (grad_h_tilde - grad_h_cell)
                grad_c_cell = grad_c * unit_mask
            grad_input_gates, grad_hidden_gates, grad_h_direct, grad_c_in = cell_backward(
                cell_saved, grad_h_cell, grad_c_cell
            )
            if not s.all_active:
                grad_c_in = grad_c_in + (grad_c - grad_c_cell)
            grad_input_gates_all[t] = grad_input_gates
            grad_attended = _to_head_rows(torch.bmm(grad_input_gates, input_weight_t), batch_size, heads)
            grad_attended_all[t] = grad_attended
            grad_attention = torch.bmm(grad_attended, step_values[t].transpose(1, 2))
            if input_keep is not None:
                grad_attention = grad_attention * input_keep
            # 1. Input attention.
            grad_scores = torch._softmax_backward_data(grad_attention, attention, -1, attention.dtype)
            grad_scores_all[t] = grad_scores
            grad_query = _from_head_rows(torch.bmm(grad_scores, step_keys[t].transpose(1, 2)), batch_size, heads)
            grad_read_h[t] = torch.cat([grad_query, grad_hidden_gates], dim=-1)
            grad_h = torch.bmm(grad_read_h[t], read_h_weight_t)
            for extra in (grad_h_in, grad_h_direct):
                if extra is not None:
                    grad_h = grad_h + extra
            grad_c = grad_c_in
            if s.reset_steps[t]:
                reset_rows = 1.0 - step_keep[t]  # (B, 1)
                if ctx.has_init[0]:
                    part = (grad_h * reset_rows).sum(dim=1, keepdim=True)
                    grad_h_init = part if grad_h_init is None else grad_h_init + part
                if ctx.has_init[1]:
                    part = (grad_c * reset_rows).sum(dim=1, keepdim=True)
                    grad_c_init = part if grad_c_init is None else grad_c_init + part
                grad_h, grad_c = grad_h * step_keep[t], grad_c * step_keep[t]

        need = ctx.needs_input_grad
        grads: dict[str, torch.Tensor | None] = {}
        if need[2]:  # keys (T, B * heads, dk, N + 1) = sum over units of query^T @ d scores
            queries = torch.stack([step[1] for step in steps])
            grads["keys"] = torch.matmul(queries.transpose(2, 3), torch.stack(grad_scores_all))
        if need[3]:  # values (T, B * heads, N + 1, dv)
            reads = torch.stack([step[4] for step in steps])
            grads["values"] = torch.matmul(reads.transpose(2, 3), torch.stack(grad_attended_all))
        if need[7] or need[8]:
            grads["read_h_weight"], grads["read_h_bias"] = _grouped_grads(
                [step[0] for step in steps], grad_read_h, need[8]
            )
        if need[9] or need[10]:
            grads["input_weight"], grads["input_bias"] = _grouped_grads(
                [step[5] for step in steps], grad_input_gates_all, need[10]
            )
        if need[11]:
            grads["input_logits"] = torch.stack(grad_scores_all).sum(dim=(0, 1))
        if need[12]:
            grads["comm_weight"], _ = _grouped_grads([step[8] for step in steps], grad_qkv_all, False)
        if need[13]:
            grads["comm_bias"] = torch.stack(grad_comm_scores_all).sum(dim=(0, 1))
        if need[14] or need[15]:
            grads["out_weight"], grads["out_bias"] = _grouped_grads(
                [step[13] for step in steps], grad_h_comm_all, need[15]
            )
        return (
            None, None, grads.get("keys"), grads.get("values"), None, grad_h, grad_c,
            grads.get("read_h_weight"), grads.get("read_h_bias"), grads.get("input_weight"),
            grads.get("input_bias"), grads.get("input_logits"), grads.get("comm_weight"),
            grads.get("comm_bias"), grads.get("out_weight"), grads.get("out_bias"),
            grad_h_init if need[16] else None, grad_c_init if need[17] else None,
        )  # fmt: skip


def _reset(state: torch.Tensor, keep: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
    """Rows with ``keep == 0`` set to the initial state: ``state`` ``(U, B, S)``, ``keep`` ``(B, 1)``,
    ``init`` ``(U, 1, S)`` or ``None`` (zeros)."""
    return state * keep if init is None else torch.where(keep.bool(), state, init)  # kept rows exact


def run_modular_loop(settings: LoopSettings, *tensors: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the loop; returns the per-step states ``(T, U, B, S)`` and the final ``c`` ``(U, B, S)``.

    ``tensors``: ``keys_t (T, B * heads, dk, N + 1)``, ``values (T, B * heads, N + 1, dv)``,
    ``keep (T, B, 1)``, ``h``, ``c`` ``(U, B, S)``, the merged hidden projection's weight and bias,
    the cell's input weight and bias, input logits ``(U, N + 1)`` or ``None``, the communication
    weight (scale folded in) and its ``(U * heads, U * heads)`` logit bias, the output projection's
    weight and bias (or ``None``), and the initial ``h`` and ``c`` ``(U, 1, S)`` that a reset sets
    (``None``: zeros). The backward is written out only when a gradient will be asked
    for: in a rollout (no grad) nothing is kept.
    """
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return _ModularLoop.apply(settings, save, *tensors)
