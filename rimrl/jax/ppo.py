"""Recurrent PPO in one ``jax.jit``: rollouts on the JAX suite, GAE and the PPO epochs.

One :func:`make_update` call compiles a function that collects ``n_steps`` steps from ``n_envs``
envs (:mod:`rimrl.jax.envs`, vmapped, automatic resets) with the policy's recurrent state carried
across steps, computes advantages, and runs ``n_epochs`` of minibatch updates, all inside XLA.
The settings and their meaning are sb3-contrib's ``RecurrentPPO`` (the same preset values), with
these choices written out:

- advantages: GAE(``gamma``, ``gae_lambda``); a truncated episode's last reward gets
  ``gamma * V(terminal observation)`` added, as SB3 does;
- minibatches: ``batch_size // sequence_length`` sequences of ``sequence_length`` consecutive
  steps of one env (default: the whole ``n_steps`` column, PureJaxRL's layout), each replayed from
  the core state the rollout recorded at its first step, with the recorded episode starts
  resetting it. sb3-contrib instead cuts sequences at episode starts and pads them, which gives the
  same gradients per sequence but other minibatch groupings. A shorter ``sequence_length`` runs the
  same number of steps per minibatch as more, shorter sequences (a shorter ``lax.scan`` over a
  wider batch, faster on CPU); gradients then stop at the sequence boundaries, as they stop at
  sb3-contrib's minibatch boundaries;
- loss: clipped surrogate with per-minibatch advantage normalisation, ``vf_coef`` x MSE value loss
  (no value clipping), ``ent_coef`` x entropy bonus; Adam (eps 1e-5) after global-norm clipping
  at ``max_grad_norm``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rimrl.jax.envs import PickupJax, PickupState
from rimrl.jax.policy import JaxPolicy

__all__ = ["PPOSettings", "RunnerState", "init_runner", "make_update"]


@dataclass(frozen=True)
class PPOSettings:
    """sb3-contrib ``RecurrentPPO`` arguments (constant learning rate and clip range)."""

    n_envs: int = 8
    n_steps: int = 128
    batch_size: int = 256
    n_epochs: int = 4
    learning_rate: float = 2.5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    sequence_length: int | None = None  # steps per training sequence; None: n_steps (whole env columns)

    def __post_init__(self) -> None:
        length = self.seq_len
        if length < 1 or self.n_steps % length:
            raise ValueError(f"sequence_length ({length}) must divide n_steps ({self.n_steps})")
        if self.batch_size % length or (self.n_envs * self.n_steps) % self.batch_size:
            raise ValueError(
                f"rimrl.jax's minibatches are whole sequences: batch_size ({self.batch_size}) must be a multiple of "
                f"the sequence length ({length}) and divide n_envs * n_steps ({self.n_envs * self.n_steps})"
            )

    @property
    def seq_len(self) -> int:
        """Steps per training sequence."""
        return self.n_steps if self.sequence_length is None else self.sequence_length

    @property
    def sequences_per_minibatch(self) -> int:
        return self.batch_size // self.seq_len

    @property
    def n_sequences(self) -> int:
        """Sequences per rollout: ``n_envs * n_steps / seq_len``."""
        return self.n_envs * self.n_steps // self.seq_len

    def optimizer(self) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(self.max_grad_norm), optax.adam(self.learning_rate, eps=1e-5))


class RunnerState(NamedTuple):
    """Everything carried from one update to the next."""

    params: Any
    opt_state: Any
    env_state: PickupState  # batched over envs
    obs: dict[str, jax.Array]  # (B, ...)
    core_state: tuple[jax.Array, jax.Array]  # (B, H) each
    episode_start: jax.Array  # (B,)
    episode_return: jax.Array  # (B,) running return of the current episodes
    episode_length: jax.Array  # (B,)
    key: jax.Array


def init_runner(policy: JaxPolicy, params: Any, env: PickupJax, settings: PPOSettings, key: jax.Array) -> RunnerState:
    key, reset_key = jax.random.split(key)
    env_state, obs = jax.vmap(env.reset)(jax.random.split(reset_key, settings.n_envs))
    zeros = jnp.zeros(settings.n_envs, jnp.float32)  # explicit dtypes: the same with jax_enable_x64
    return RunnerState(params=params, opt_state=settings.optimizer().init(params), env_state=env_state, obs=obs,
                       core_state=policy.initial_state(params, settings.n_envs),
                       episode_start=jnp.ones(settings.n_envs, jnp.float32), episode_return=zeros,
                       episode_length=zeros.astype(jnp.int32), key=key)


def _add_time(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a[None], tree)


def make_update(policy: JaxPolicy, env: PickupJax, settings: PPOSettings):
    """``update(runner) -> (runner, metrics)``: one rollout and its PPO epochs, jitted.

    ``metrics`` holds per-step episode ends of the rollout (``done``, ``episode_return``,
    ``episode_length``, ``success``, each ``(n_steps, n_envs)``) and the losses of the last epoch.
    """
    s = settings
    optimizer = s.optimizer()
    step_env = jax.vmap(env.step_autoreset)

    def rollout_step(runner: RunnerState, _: Any) -> tuple[RunnerState, dict[str, jax.Array]]:
        key, action_key, env_key = jax.random.split(runner.key, 3)
        logits, value, core_state = policy.apply(runner.params, _add_time(runner.obs), runner.core_state,
                                                 runner.episode_start[None])
        logits, value = logits[0], value[0]
        action = jax.random.categorical(action_key, logits)
        log_prob = jax.nn.log_softmax(logits)[jnp.arange(s.n_envs), action]
        env_state, obs, reward, done, truncated, success, terminal_obs = step_env(
            jax.random.split(env_key, s.n_envs), runner.env_state, action)
        # A timeout is not a terminal state: bootstrap from the value of the observation it cut.
        terminal_value = jax.lax.cond(  # one more forward pass, only in steps where a timeout happens
            truncated.any(),
            lambda: policy.apply(runner.params, _add_time(terminal_obs), core_state, jnp.zeros((1, s.n_envs)))[1][0],
            lambda: jnp.zeros(s.n_envs, value.dtype),
        )
        reward = reward + s.gamma * jnp.where(truncated, terminal_value, 0.0)
        episode_return = runner.episode_return + reward
        episode_length = runner.episode_length + 1
        transition = {"obs": runner.obs, "core_state": runner.core_state, "episode_start": runner.episode_start,
                      "action": action, "log_prob": log_prob, "value": value, "reward": reward, "done": done,
                      "episode_return": episode_return, "episode_length": episode_length, "success": success}
        runner = runner._replace(env_state=env_state, obs=obs, core_state=core_state,
                                 episode_start=done.astype(jnp.float32),
                                 episode_return=jnp.where(done, 0.0, episode_return),
                                 episode_length=jnp.where(done, 0, episode_length), key=key)
        return runner, transition

    def advantages(traj: dict[str, jax.Array], last_value: jax.Array, last_start: jax.Array) -> tuple[jax.Array, jax.Array]:
        """GAE over the rollout, ``(T, B)`` each (SB3's recursion: episode starts cut it)."""
        next_non_terminal = jnp.concatenate([1.0 - traj["episode_start"][1:], (1.0 - last_start)[None]])
        next_values = jnp.concatenate([traj["value"][1:], last_value[None]])

        def back(gae: jax.Array, xs: tuple[jax.Array, ...]) -> tuple[jax.Array, jax.Array]:
            reward, value, next_value, non_terminal = xs
            delta = reward + s.gamma * next_value * non_terminal - value
            gae = delta + s.gamma * s.gae_lambda * non_terminal * gae
            return gae, gae

        _, adv = jax.lax.scan(back, jnp.zeros_like(last_value),
                              (traj["reward"], traj["value"], next_values, next_non_terminal), reverse=True)
        return adv, adv + traj["value"]

    def loss_fn(params: Any, batch: dict[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits, values, _ = policy.apply(params, batch["obs"], batch["core_state"], batch["episode_start"])
        log_probs = jax.nn.log_softmax(logits)
        log_prob = jnp.take_along_axis(log_probs, batch["action"][..., None], axis=-1)[..., 0]
        adv = batch["advantage"]
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        ratio = jnp.exp(log_prob - batch["log_prob"])
        policy_loss = -jnp.minimum(adv * ratio, adv * jnp.clip(ratio, 1 - s.clip_range, 1 + s.clip_range)).mean()
        value_loss = ((batch["return"] - values) ** 2).mean()
        entropy = -(jnp.exp(log_probs) * log_probs).sum(-1).mean()
        loss = policy_loss - s.ent_coef * entropy + s.vf_coef * value_loss
        clip_fraction = (jnp.abs(ratio - 1) > s.clip_range).mean()
        return loss, {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
                      "clip_fraction": clip_fraction, "approx_kl": ((ratio - 1) - jnp.log(ratio)).mean()}

    def sequences(a: jax.Array) -> jax.Array:
        """``(T, B, ...)`` -> ``(L, T / L * B, ...)``: the rollout cut into sequences of ``L`` steps."""
        chunks = a.reshape(s.n_steps // s.seq_len, s.seq_len, *a.shape[1:])  # (T / L, L, B, ...)
        return jnp.swapaxes(chunks, 0, 1).reshape(s.seq_len, s.n_sequences, *a.shape[2:])

    def update(runner: RunnerState) -> tuple[RunnerState, dict[str, jax.Array]]:
        runner, traj = jax.lax.scan(rollout_step, runner, None, s.n_steps)
        _, last_value, _ = policy.apply(runner.params, _add_time(runner.obs), runner.core_state,
                                        runner.episode_start[None])
        adv, returns = advantages(traj, last_value[0], runner.episode_start)
        data = {"obs": traj["obs"], "episode_start": traj["episode_start"], "action": traj["action"],
                "log_prob": traj["log_prob"], "advantage": adv, "return": returns}
        data = jax.tree_util.tree_map(sequences, data)
        # Each sequence starts from the core state the rollout had at its first step: (T / L * B, H).
        start_state = jax.tree_util.tree_map(lambda a: sequences(a)[0], traj["core_state"])

        def epoch(carry: tuple[Any, Any, jax.Array], _: Any) -> tuple[tuple[Any, Any, jax.Array], dict[str, jax.Array]]:
            params, opt_state, key = carry
            key, perm_key = jax.random.split(key)
            order = jax.random.permutation(perm_key, s.n_sequences).reshape(-1, s.sequences_per_minibatch)

            def minibatch(carry: tuple[Any, Any], columns: jax.Array) -> tuple[tuple[Any, Any], dict[str, jax.Array]]:
                params, opt_state = carry
                batch = jax.tree_util.tree_map(lambda a: a[:, columns], data)
                batch["core_state"] = jax.tree_util.tree_map(lambda a: a[columns], start_state)
                grads, info = jax.grad(loss_fn, has_aux=True)(params, batch)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), info

            (params, opt_state), info = jax.lax.scan(minibatch, (params, opt_state), order)
            return (params, opt_state, key), info

        key, epoch_key = jax.random.split(runner.key)
        (params, opt_state, _), info = jax.lax.scan(epoch, (runner.params, runner.opt_state, epoch_key), None,
                                                    s.n_epochs)
        runner = runner._replace(params=params, opt_state=opt_state, key=key)
        metrics = {name: traj[name] for name in ("done", "episode_return", "episode_length", "success")}
        metrics.update({name: value[-1].mean() for name, value in info.items()})
        return runner, metrics

    return jax.jit(update)
