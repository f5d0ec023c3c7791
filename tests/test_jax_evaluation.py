"""rimrl.jax.evaluation: the jitted evaluator plays one whole episode per env, as the env and torch count it.

A policy whose logits are rigged to one action gives exactly the returns, lengths and successes of
stepping the env by hand from the same resets, with the env object's own time limit. A uniformly
random policy (the action head zeroed) gives, in JAX, the success rate, return and length that
torch's :func:`rimrl.agents.training.evaluate_recurrent` measures on the gymnasium suite, within
sampling error, and every JAX episode is one episode: its reward is the pick-up reward of its last
step or nothing. (The trainer's periodic evaluations are tested in ``test_jax_agent.py``.)
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="rimrl.jax needs the jax extra: pip install 'rimrl[jax]'")
import jax.numpy as jnp  # noqa: E402

from rimrl.agents import make_agent  # noqa: E402
from rimrl.agents.training import evaluate_recurrent  # noqa: E402
from rimrl.envs import make_env  # noqa: E402
from rimrl.jax.envs import make_pickup  # noqa: E402
from rimrl.jax.evaluation import eval_result, make_evaluator, split_eval_key  # noqa: E402
from rimrl.jax.policy import policy_from_torch  # noqa: E402

ENV = "rimrl/Pickup-Train-v0"
PICK_UP = 3


@pytest.fixture(scope="module")
def lstm_policy():
    """A fresh LSTM agent (the fastest core to compile) and its JAX conversion."""
    model = make_agent(make_env(ENV, n_envs=1), core="lstm", seed=0)
    policy, params = policy_from_torch(model.policy)
    return model, policy, params


def _rigged(params: dict, action: int | None) -> dict:
    """``params`` with the action head's weights zeroed: logits all equal (``action`` None) or far
    in favour of ``action`` (no Gumbel sample can overturn a gap of 100)."""
    bias = jnp.zeros_like(params["action_bias"])
    if action is not None:
        bias = bias.at[:].set(-50.0).at[action].set(50.0)
    return {**params, "action_weight": jnp.zeros_like(params["action_weight"]), "action_bias": bias}


@functools.cache
def _vmapped(env) -> tuple:
    """Jitted ``(reset, step)`` over a batch of ``env``s (compiled once per env settings)."""
    return jax.jit(jax.vmap(env.reset)), jax.jit(jax.vmap(env.step))


def _by_hand(env, key: jax.Array, n: int, action: int) -> dict[str, np.ndarray]:
    """Step ``n`` envs (reset as the evaluator resets them) with one action until each episode
    ends, bookkeeping on the host: ``returns``, ``lengths``, ``successes`` ``(n,)``."""
    reset_keys, _ = split_eval_key(key, n, env.max_steps)
    reset, step = _vmapped(env)
    state, _ = reset(reset_keys)
    returns, lengths, successes = np.zeros(n), np.zeros(n, int), np.zeros(n, bool)
    running = np.ones(n, bool)
    while running.any():
        state, _, reward, terminated, truncated, success = step(state, jnp.full(n, action))
        for i in np.flatnonzero(running):
            returns[i] += float(reward[i])
            lengths[i] += 1
            successes[i] = bool(success[i])
            running[i] = not (bool(terminated[i]) or bool(truncated[i]))
    return {"returns": returns, "lengths": lengths, "successes": successes}


@pytest.mark.parametrize("deterministic", [True, False])
def test_a_rigged_policy_scores_what_stepping_by_hand_gives(lstm_policy, deterministic: bool) -> None:
    _, policy, params = lstm_policy
    env = dataclasses.replace(make_pickup(ENV), max_steps=20)  # the horizon is the env's, not 128
    key, n = jax.random.PRNGKey(7), 128
    evaluate = make_evaluator(policy, env, n, deterministic=deterministic)
    outcome = jax.device_get(evaluate(_rigged(params, PICK_UP), key))
    expected = _by_hand(env, key, n, PICK_UP)
    assert outcome["returns"].shape == outcome["lengths"].shape == outcome["successes"].shape == (n,)
    np.testing.assert_allclose(outcome["returns"], expected["returns"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(outcome["lengths"], expected["lengths"])
    np.testing.assert_array_equal(outcome["successes"], expected["successes"])
    # Both endings occur: a pick-up at the first step (some of the target), the time limit otherwise.
    assert set(np.unique(outcome["lengths"])) == {1, 20}
    assert 0 < outcome["successes"].sum() < (outcome["lengths"] == 1).sum()

    # Always forward: no episode ends before the time limit, and nothing is earned.
    walker = jax.device_get(evaluate(_rigged(params, 2), key))
    assert (walker["lengths"] == 20).all() and not walker["returns"].any() and not walker["successes"].any()


def test_a_random_policy_scores_in_jax_what_torch_measures(lstm_policy) -> None:
    torch.set_num_threads(1)
    model, policy, params = lstm_policy
    env = make_pickup(ENV)
    evaluate = make_evaluator(policy, env, 2000)
    outcome = jax.device_get(evaluate(_rigged(params, None), jax.random.PRNGKey(0)))
    returns, lengths, successes = outcome["returns"], outcome["lengths"], outcome["successes"]

    # One episode per env: it ends within the time limit, and its reward is the pick-up reward of
    # its last step (1 - 0.9 * length / max_steps) when it picked up the target, else nothing.
    assert lengths.min() >= 1 and lengths.max() <= env.max_steps == 128
    np.testing.assert_allclose(returns, np.where(successes, 1 - 0.9 * lengths / env.max_steps, 0.0), atol=1e-6)
    assert (lengths == env.max_steps).any() and (lengths < env.max_steps).any()
    again = jax.device_get(evaluate(_rigged(params, None), jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(again["lengths"], lengths)  # one key, the same episodes
    jax_result = eval_result(outcome)
    assert jax_result.success_rate == pytest.approx(successes.mean())

    # torch: the same (uniform) policy, sampled, on the gymnasium suite.
    with torch.no_grad():
        model.policy.action_net.weight.zero_()
        model.policy.action_net.bias.zero_()
    torch_result = evaluate_recurrent(model, make_env(ENV, n_envs=8, seed=0), 400, deterministic=False, seed=1)
    for ours, theirs in ((np.asarray(jax_result.successes, float), np.asarray(torch_result.successes, float)),
                         (np.asarray(jax_result.lengths, float), np.asarray(torch_result.lengths, float)),
                         (np.asarray(jax_result.returns), np.asarray(torch_result.returns))):
        error = np.sqrt(ours.var() / len(ours) + theirs.var() / len(theirs))
        assert abs(ours.mean() - theirs.mean()) < 4 * error, (ours.mean(), theirs.mean(), error)


def test_bad_episode_counts_are_refused(lstm_policy) -> None:
    _, policy, _ = lstm_policy
    with pytest.raises(ValueError, match="n_episodes"):
        make_evaluator(policy, make_pickup(ENV), 0)
