"""What a modular core does during training, logged to TensorBoard as ``core/...`` scalars.

:class:`CoreActivityCallback` reads, at every rollout step, the actor core's active-unit mask
``(1, B, U)`` and its head-averaged input attention ``(1, B, U, N + 1)`` (slot 0 = null), and at
the end of each rollout records, over that rollout's steps and envs:

- ``core/active_fraction``: the mean share of units active per step (``k / U`` for RIM);
- ``core/active_unit<u>``: how often unit u was active — a unit that never is has died;
- ``core/null_attention_unit<u>``: unit u's mean attention on the null slot — units whose values
  are all equal do not compete;
- ``core/null_attention_gap``: the mean, over steps, of the k-th minus the (k+1)-th smallest null
  attention (RIM): how decided the competition is (0 when units tie).

Only cores with ``last_active_mask`` (RIM, SRM) are logged; for LSTM/GRU the callback does
nothing. Attention is recorded in rollouts only (``record_attention`` is switched off for the
training epochs), where a step holds one ``(B, U, N + 1)`` tensor.
"""

from __future__ import annotations

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["CoreActivityCallback", "core_activity_summary"]


def core_activity_summary(masks: th.Tensor, null_attention: th.Tensor | None, k: int | None) -> dict[str, float]:
    """Scalars of :mod:`rimrl.agents.activity` from ``masks`` ``(T, B, U)`` bool and
    ``null_attention`` ``(T, B, U)`` (or ``None``), keyed without the ``core/`` prefix."""
    masks = masks.float()
    units = masks.shape[-1]
    per_unit = masks.mean(dim=(0, 1))
    out = {"active_fraction": float(per_unit.mean())}
    out.update({f"active_unit{u}": float(per_unit[u]) for u in range(units)})
    if null_attention is not None:
        mean_null = null_attention.mean(dim=(0, 1))
        out.update({f"null_attention_unit{u}": float(mean_null[u]) for u in range(units)})
        if k is not None and k < units:
            ordered = null_attention.sort(dim=-1).values
            out["null_attention_gap"] = float((ordered[..., k] - ordered[..., k - 1]).mean())
    return out


class CoreActivityCallback(BaseCallback):
    """Logs per-unit activation frequency and null attention of the actor's core per rollout."""

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self._masks: list[th.Tensor] = []
        self._nulls: list[th.Tensor] = []

    @property
    def _core(self):
        core = getattr(self.model.policy, "core", None)
        return core if core is not None and hasattr(core, "last_active_mask") else None

    def _on_rollout_start(self) -> None:
        core = self._core
        if core is not None:
            core.record_attention = True
        self._masks, self._nulls = [], []

    def _on_step(self) -> bool:
        core = self._core
        if core is not None and core.last_active_mask is not None:
            self._masks.append(core.last_active_mask[-1].cpu())
            if core.last_input_attention is not None:
                self._nulls.append(core.last_input_attention[-1, ..., 0].cpu())
        return True

    def _on_rollout_end(self) -> None:
        core = self._core
        if core is None or not self._masks:
            return
        core.record_attention = False
        nulls = th.stack(self._nulls) if len(self._nulls) == len(self._masks) else None
        summary = core_activity_summary(th.stack(self._masks), nulls, getattr(core, "k", None))
        for key, value in summary.items():
            if np.isfinite(value):
                self.logger.record(f"core/{key}", value)
        self._masks, self._nulls = [], []
