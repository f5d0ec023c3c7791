"""Evaluation of a JAX policy on the JAX suite: ``n`` whole episodes in one jitted ``lax.scan``.

:func:`make_evaluator` compiles ``evaluate(params, key)`` for one variant: ``n`` envs are reset
(vmapped :meth:`~rimrl.jax.envs.PickupJax.reset`) and stepped together with
:meth:`~rimrl.jax.envs.PickupJax.step` (no automatic reset) for the env's ``max_steps``, the
policy's recurrent state starting from :meth:`~rimrl.jax.policy.JaxPolicy.initial_state` with
``episode_start`` 1 at the first step only. Every env plays exactly one episode: once it ends
(pick-up or time limit) its further steps are masked out of the return, the length and the
success. The outcome per episode is what SB3's monitor and :func:`rimrl.agents.training.evaluate_recurrent`
report: the raw return, the number of steps, and whether the target was picked up;
:func:`eval_result` turns it into the same :class:`~rimrl.agents.training.EvalResult`.

Randomness comes from ``key`` alone (:func:`split_eval_key`), so the same key gives the same
episodes and the same sampled actions: periodic evaluations of one run with one key differ only
by the parameters, as train.py's evaluations with a fixed evaluation seed do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rimrl.agents.training import EvalResult
from rimrl.jax.cores import Params
from rimrl.jax.envs import PickupJax
from rimrl.jax.policy import JaxPolicy

__all__ = ["Evaluator", "eval_result", "make_evaluator", "split_eval_key"]

#: ``evaluate(params, key) -> {"returns": (n,), "lengths": (n,), "successes": (n,)}``.
Evaluator = Callable[[Params, jax.Array], dict[str, jax.Array]]


def split_eval_key(key: jax.Array, n_episodes: int, n_steps: int) -> tuple[jax.Array, jax.Array]:
    """``(reset_keys (n_episodes, 2), action_keys (n_steps, 2))``: env ``i`` starts from
    ``env.reset(reset_keys[i])``, step ``t`` samples every env's action with ``action_keys[t]``."""
    reset_key, action_key = jax.random.split(key)
    return jax.random.split(reset_key, n_episodes), jax.random.split(action_key, n_steps)


def make_evaluator(policy: JaxPolicy, env: PickupJax, n_episodes: int, deterministic: bool = False) -> Evaluator:
    """A jitted ``evaluate(params, key)`` playing one episode in each of ``n_episodes`` envs of ``env``.

    :param policy: the converted policy (:func:`rimrl.jax.policy.policy_from_torch`).
    :param env: the variant to play (:func:`rimrl.jax.envs.make_pickup`); its ``max_steps`` bounds
        every episode (the time limit truncates it there).
    :param n_episodes: episodes per evaluation, played in parallel (one per env).
    :param deterministic: greedy actions (argmax of the logits) instead of sampled ones. The
        MiniGrid presets evaluate with sampled actions (``eval_deterministic: False``).
    :returns: ``evaluate(params, key)`` -> ``{"returns": (n,) float32, "lengths": (n,) int32,
        "successes": (n,) bool}``; compiled on its first call, reused after (same shapes).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    n, horizon = int(n_episodes), int(env.max_steps)
    step_envs = jax.vmap(env.step)

    def evaluate(params: Params, key: jax.Array) -> dict[str, jax.Array]:
        reset_keys, action_keys = split_eval_key(key, n, horizon)
        env_state, obs = jax.vmap(env.reset)(reset_keys)
        zeros = jnp.zeros(n, jnp.float32)  # explicit dtypes: the same with jax_enable_x64
        carry = (env_state, obs, policy.initial_state(params, n), jnp.ones(n, jnp.float32),
                 jnp.ones(n, bool), zeros, zeros.astype(jnp.int32), jnp.zeros(n, bool))

        def step(carry: tuple[Any, ...], action_key: jax.Array) -> tuple[tuple[Any, ...], None]:
            env_state, obs, core_state, episode_start, running, returns, lengths, successes = carry
            # (1, n, ...) in, (1, n, A) out: one time step of the (T, B) policy.
            logits, _, core_state = policy.apply(params, jax.tree_util.tree_map(lambda a: a[None], obs), core_state,
                                                 episode_start[None])
            logits = logits[0]
            action = jnp.argmax(logits, axis=-1) if deterministic else jax.random.categorical(action_key, logits)
            env_state, obs, reward, terminated, truncated, success = step_envs(env_state, action)
            # An ended env keeps stepping (no reset) but no longer counts: one episode per env.
            returns = returns + jnp.where(running, reward, 0.0)
            lengths = lengths + running.astype(jnp.int32)
            successes = successes | (running & success)
            running = running & ~(terminated | truncated)
            return (env_state, obs, core_state, jnp.zeros(n, jnp.float32), running, returns, lengths, successes), None

        carry, _ = jax.lax.scan(step, carry, action_keys)
        returns, lengths, successes = carry[5:]
        return {"returns": returns, "lengths": lengths, "successes": successes}

    return jax.jit(evaluate)


def eval_result(outcome: dict[str, Any]) -> EvalResult:
    """The :class:`~rimrl.agents.training.EvalResult` of an evaluator's output (fetched to the host)."""
    outcome = jax.device_get(outcome)
    return EvalResult(returns=[float(r) for r in np.asarray(outcome["returns"])],
                      lengths=[int(n) for n in np.asarray(outcome["lengths"])],
                      successes=[bool(s) for s in np.asarray(outcome["successes"])])
