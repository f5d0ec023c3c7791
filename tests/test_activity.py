"""rimrl.agents.activity: per-unit activity and null attention of modular cores in TensorBoard."""

from __future__ import annotations

import pytest
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.logger import Logger

from rimrl.agents.activity import CoreActivityCallback, core_activity_summary
from rimrl.envs import make_env
from rimrl.policies import POLICIES


class _Recorder(Logger):
    """A logger that keeps every recorded value (SB3's clears them at each dump)."""

    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.seen: dict[str, list[float]] = {}

    def record(self, key, value, exclude=None) -> None:
        self.seen.setdefault(key, []).append(value)
        super().record(key, value, exclude)


def test_summary_counts_units_and_the_selection_gap():
    masks = th.tensor([[[True, True, False]], [[True, False, True]]])  # (T=2, B=1, U=3)
    null = th.tensor([[[0.1, 0.2, 0.6]], [[0.1, 0.5, 0.3]]])
    summary = core_activity_summary(masks, null, k=2)
    assert summary["active_fraction"] == pytest.approx(4 / 6)
    assert [summary[f"active_unit{u}"] for u in range(3)] == [1.0, 0.5, 0.5]
    assert summary["null_attention_unit1"] == pytest.approx(0.35)
    # k-th vs (k+1)-th smallest null attention: (0.6 - 0.2 + 0.5 - 0.3) / 2
    assert summary["null_attention_gap"] == pytest.approx(0.3)
    assert "null_attention_gap" not in core_activity_summary(masks, null, k=None)


@pytest.mark.parametrize("core", ["rim", "srm", "lstm"])
def test_callback_logs_core_scalars_per_rollout(core):
    th.set_num_threads(1)
    env = make_env("rimrl/Pickup-Train-v0", n_envs=2, seed=0)
    kwargs = dict(lstm_hidden_size=48 if core != "lstm" else 32)
    if core == "srm":
        kwargs["core_kwargs"] = dict(k=4)
    model = RecurrentPPO(POLICIES[core], env, n_steps=16, batch_size=32, n_epochs=1, seed=0, policy_kwargs=kwargs)
    recorder = _Recorder()
    model.set_logger(recorder)
    model.learn(64, callback=CoreActivityCallback())
    env.close()
    if core == "lstm":
        assert not any(key.startswith("core/") for key in recorder.seen)
        return
    units = model.policy.core.num_units
    assert len(recorder.seen["core/active_fraction"]) == 2  # one value per rollout
    assert recorder.seen["core/active_fraction"][-1] == pytest.approx(4 / units)  # k = 4 of 6
    frequencies = [recorder.seen[f"core/active_unit{u}"][-1] for u in range(units)]
    assert sum(frequencies) == pytest.approx(4.0)
    nulls = [recorder.seen[f"core/null_attention_unit{u}"][-1] for u in range(units)]
    assert all(0.0 < value < 1.0 for value in nulls)
    assert recorder.seen["core/null_attention_gap"][-1] >= 0.0
    assert not model.policy.core.record_attention  # switched off for the training epochs
