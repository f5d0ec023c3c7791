"""rimrl's MiniGrid recurrent actor-critic in JAX, converted from (and back into) the torch policy.

The policy is the torch :class:`rimrl.policies.ModularRecurrentPolicy` as the MiniGrid presets
build it: :class:`~rimrl.policies.MiniGridTokenEncoder` tokens (multi-hot rows of one embedding
table plus a per-token position term; absent cells zeroed), flattened, optionally ``Linear`` +
(LayerNorm) + ReLU/tanh, one core shared by actor and critic, SB3's ``MlpExtractor`` and the action
and value heads. :func:`policy_from_torch` reads a torch policy's settings and parameters;
:func:`load_policy_into_torch` writes JAX parameters back, so a model trained in JAX is saved as an
SB3 ``model.zip`` that ``evaluate.py`` and ``RecurrentPPO.load`` read as any other.

Shapes: observations are the suite's dict, each entry with leading ``(T, B)``; ``episode_starts``
``(T, B)``; ``state`` ``(h, c)`` each ``(B, H)``. :meth:`JaxPolicy.apply` returns action logits
``(T, B, A)``, values ``(T, B)`` and the final state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

from rimrl.jax.convert import from_torch, load_into_torch
from rimrl.jax.cores import JaxCore, Params, State

__all__ = ["JaxPolicy", "load_policy_into_torch", "policy_from_torch"]

_ACTIVATIONS = {torch.nn.Tanh: "tanh", torch.nn.ReLU: "relu"}


def _activate(x: jax.Array, kind: str) -> jax.Array:
    return jnp.tanh(x) if kind == "tanh" else jax.nn.relu(x)


@dataclass(frozen=True)
class JaxPolicy:
    """Static settings of a converted policy (hashable: a jit static argument)."""

    core: JaxCore
    view: int
    has_direction: bool
    has_target: bool
    offsets: tuple[tuple[int, int, int], ...]  # per token: the table row offset of each index slot
    maxima: tuple[tuple[int, int, int], ...]  # per token: the largest index of each slot (clamping)
    table_rows: int
    absent_objects: tuple[int, ...]  # object indices whose cells are absent (zero tokens)
    projection: str | None  # None, "relu", "layernorm-relu" or "tanh"
    pi_layers: int
    vf_layers: int
    activation: str  # the MlpExtractor's, "tanh" or "relu"
    num_actions: int

    def tokens(self, params: Params, obs: dict[str, jax.Array]) -> jax.Array:
        """``(T, B, N * D)``: the encoder's flattened tokens."""
        grid = obs["grid"].astype(jnp.float32)
        lead = grid.shape[:2]
        parts = [grid.reshape(*lead, self.view * self.view, 3)]
        if self.has_direction:
            direction = obs["direction"].astype(jnp.float32).reshape(*lead, 1, 1)
            parts.append(jnp.pad(direction, ((0, 0), (0, 0), (0, 0), (0, 2))))
        if self.has_target:
            target = obs["target"].astype(jnp.float32).reshape(*lead, 1, 2)
            parts.append(jnp.pad(target, ((0, 0), (0, 0), (0, 0), (0, 1))))
        raw = jnp.concatenate(parts, axis=2)  # (T, B, N, 3)
        index = jnp.minimum(jnp.maximum(jnp.round(raw), 0).astype(jnp.int32), jnp.asarray(self.maxima))
        index = index + jnp.asarray(self.offsets)
        # The torch encoder's multi-hot bag: an index repeated in a bag counts once.
        hot = jax.nn.one_hot(index, self.table_rows, dtype=params["table"].dtype).max(axis=-2)
        tokens = hot @ params["table"] + params["token_pos"]
        if self.absent_objects:
            cells = self.view * self.view
            objects = raw[:, :, :cells, 0]
            present = ~jnp.isin(jnp.round(objects).astype(jnp.int32), jnp.asarray(self.absent_objects))
            tokens = jnp.concatenate([tokens[:, :, :cells] * present[..., None], tokens[:, :, cells:]], axis=2)
        return tokens.reshape(*lead, -1)

    def apply(self, params: Params, obs: dict[str, jax.Array], state: State | None,
              episode_starts: jax.Array) -> tuple[jax.Array, jax.Array, State]:
        """``(logits (T, B, A), values (T, B), state)`` for a sequence of observations."""
        x = self.tokens(params, obs)
        if self.projection is not None:
            x = x @ params["proj_weight"].T + params["proj_bias"]
            if self.projection == "layernorm-relu":
                mean = x.mean(axis=-1, keepdims=True)
                var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
                x = (x - mean) / jnp.sqrt(var + 1e-5) * params["ln_weight"] + params["ln_bias"]
            x = jnp.tanh(x) if self.projection == "tanh" else jax.nn.relu(x)
        result = self.core(params["core"], x, state, episode_starts)
        latent, state = result[0], result[1]
        pi, vf = latent, latent
        for i in range(self.pi_layers):
            pi = _activate(pi @ params[f"pi_{i}_weight"].T + params[f"pi_{i}_bias"], self.activation)
        for i in range(self.vf_layers):
            vf = _activate(vf @ params[f"vf_{i}_weight"].T + params[f"vf_{i}_bias"], self.activation)
        logits = pi @ params["action_weight"].T + params["action_bias"]
        values = (vf @ params["value_weight"].T + params["value_bias"])[..., 0]
        return logits, values, state

    def initial_state(self, params: Params, batch_size: int) -> State:
        return self.core.initial_state(params["core"], batch_size, params["action_weight"].dtype)


def _torch_layout(policy: Any) -> dict[str, str]:
    """JAX name -> torch ``state_dict`` name for the policy's non-core parameters."""
    names = {"table": "features_extractor.table", "token_pos": "features_extractor.token_pos",
             "action_weight": "action_net.weight", "action_bias": "action_net.bias",
             "value_weight": "value_net.weight", "value_bias": "value_net.bias"}
    for prefix, net in (("pi", policy.mlp_extractor.policy_net), ("vf", policy.mlp_extractor.value_net)):
        linear = [i for i, layer in enumerate(net) if isinstance(layer, torch.nn.Linear)]
        for n, i in enumerate(linear):
            side = "policy_net" if prefix == "pi" else "value_net"
            names[f"{prefix}_{n}_weight"] = f"mlp_extractor.{side}.{i}.weight"
            names[f"{prefix}_{n}_bias"] = f"mlp_extractor.{side}.{i}.bias"
    if hasattr(policy.lstm_actor, "proj"):
        names.update(proj_weight="lstm_actor.proj.0.weight", proj_bias="lstm_actor.proj.0.bias")
        if isinstance(policy.lstm_actor.proj[1], torch.nn.LayerNorm):
            names.update(ln_weight="lstm_actor.proj.1.weight", ln_bias="lstm_actor.proj.1.bias")
    return names


def _core_module(policy: Any) -> torch.nn.Module:
    """The policy's core, unwrapped from its input projection."""
    return policy.lstm_actor.core if hasattr(policy.lstm_actor, "proj") else policy.lstm_actor


def policy_from_torch(policy: Any, tie_break: str | None = None) -> tuple[JaxPolicy, Params]:
    """``(jax_policy, params)`` from a torch :class:`~rimrl.policies.ModularRecurrentPolicy` on the
    suite's observations (a shared core, ``MiniGridTokenEncoder``, discrete actions). ``tie_break``:
    see :func:`rimrl.jax.convert.jax_core_for` (``None``: the torch core's).

    :raises ValueError: another encoder, a separate critic core, a stacked core, or continuous actions.
    """
    from gymnasium import spaces

    from rimrl.policies import MiniGridTokenEncoder, ModularRecurrentPolicy

    if not isinstance(policy, ModularRecurrentPolicy):
        raise ValueError(f"rimrl.jax converts rimrl's ModularRecurrentPolicy, not {type(policy).__name__}")
    encoder = policy.features_extractor
    if not isinstance(encoder, MiniGridTokenEncoder) or not encoder._dict_obs:
        raise ValueError("rimrl.jax converts policies on the MiniGrid dict observation (MiniGridTokenEncoder)")
    if not policy.shared_lstm or policy.lstm_critic is not None or policy.n_lstm_layers != 1:
        raise ValueError("rimrl.jax converts one shared core (shared_lstm=True, enable_critic_lstm=False, n_lstm_layers=1)")
    if not isinstance(policy.action_space, spaces.Discrete):
        raise ValueError("rimrl.jax converts policies with discrete actions")
    activation = _ACTIVATIONS.get(policy.activation_fn)
    if activation is None:
        raise ValueError(f"rimrl.jax supports Tanh or ReLU in the MlpExtractor, not {policy.activation_fn.__name__}")
    core_module = _core_module(policy)
    core, core_params = from_torch(core_module, tie_break=tie_break)
    projection = getattr(policy.lstm_actor, "proj", None)
    projection_kind = None
    if projection is not None:
        projection_kind = ("layernorm-relu" if isinstance(projection[1], torch.nn.LayerNorm)
                           else "tanh" if isinstance(projection[-1], torch.nn.Tanh) else "relu")
    names = _torch_layout(policy)
    state = policy.state_dict()
    params: Params = {name: jnp.asarray(state[torch_name].detach().cpu().numpy()) for name, torch_name in names.items()}
    params["core"] = core_params
    absent = tuple(int(i) for i in torch.nonzero(encoder._absent_object).flatten().tolist())
    jax_policy = JaxPolicy(
        core=core, view=encoder.view,
        has_direction=encoder._has_direction, has_target=encoder._has_target,
        offsets=tuple(map(tuple, encoder._offsets.tolist())), maxima=tuple(map(tuple, encoder._maxima.tolist())),
        table_rows=int(params["table"].shape[0]), absent_objects=absent if encoder.absent_objects else (),
        projection=projection_kind, pi_layers=sum(n.startswith("pi_") for n in names) // 2,
        vf_layers=sum(n.startswith("vf_") for n in names) // 2, activation=activation,
        num_actions=int(policy.action_space.n),
    )
    return jax_policy, params


def load_policy_into_torch(jax_policy: JaxPolicy, params: Params, policy: Any) -> Any:
    """Copy ``params`` into the torch ``policy`` (built with the same settings), in place; returns it.
    A shared feature extractor's copies (``pi_``/``vf_features_extractor``) are the same tensors."""
    names = _torch_layout(policy)
    state = policy.state_dict()
    with torch.no_grad():
        for name, torch_name in names.items():
            state[torch_name].copy_(torch.from_numpy(np.array(params[name])))
    load_into_torch(jax_policy.core, params["core"], _core_module(policy))
    return policy
