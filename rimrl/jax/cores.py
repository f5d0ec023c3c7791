"""rimrl's recurrent cores in JAX: pure functions of ``(params, x, state, episode_starts)``.

Every core is the torch core's equations (:mod:`rimrl.cores`) written once per step and run over
time by ``jax.lax.scan``; the whole call jits and differentiates with ``jax.grad``. A core object
holds only static settings; the parameters are a dict of arrays (a pytree), in the torch core's
layouts, so :mod:`rimrl.jax.convert` maps them one to one.

Shapes: ``x`` ``(T, B, input_size)``; ``episode_starts`` ``(T, B)`` (1 resets a row to the initial
state before step t); ``state`` ``(h, c)``, each ``(B, hidden_size)`` (``None``: the initial
state); the output ``(T, B, hidden_size)``. Modular cores also return the ``(T, B, num_units)``
bool mask of active units.

One modular step (RIM; SRM adds its kernel terms), for ``U`` units of size ``S``, ``N`` tokens:

1. input attention of unit-specific queries over ``[null, tokens]`` (null key and value exactly 0);
2. the ``k`` units with the least null attention are active (hard; ties: see
   :class:`ModularSettings` ``tie_break``);
3. one LSTM/GRU per unit reads its attended input;
4. per-head attention among all units, added to the states as a residual;
5. inactive units keep ``h`` and ``c`` exactly (``jnp.where``).

The JAX cores compute the torch cores' evaluation-mode function: dropout on the attentions (0 in
rimrl's RL presets) is not applied.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
State = tuple[jax.Array, jax.Array]

__all__ = ["GRU", "LSTM", "RIM", "SRM", "JaxCore", "ModularSettings"]


def _zeros_state(batch_size: int, hidden_size: int, dtype: Any) -> State:
    zeros = jnp.zeros((batch_size, hidden_size), dtype)
    return zeros, zeros


def _keep_mask(x: jax.Array, episode_starts: jax.Array | None) -> jax.Array:
    """``(T, B, 1)``: 0 where a row starts an episode at that step, else 1."""
    if episode_starts is None:
        return jnp.ones((*x.shape[:2], 1), x.dtype)
    if episode_starts.shape != x.shape[:2]:
        raise ValueError(f"episode_starts must have shape (T, B) = {x.shape[:2]}, got {episode_starts.shape}")
    return (1.0 - episode_starts.astype(x.dtype))[..., None]


class JaxCore:
    """Base of the JAX cores: static settings; ``__call__(params, x, state, episode_starts)``."""

    kind: str
    input_size: int
    hidden_size: int

    def initial_state(self, params: Params, batch_size: int, dtype: Any = jnp.float32) -> State:
        return _zeros_state(batch_size, self.hidden_size, dtype)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (T, B, {self.input_size}), got {x.shape}")


# ==============================================================================================
# LSTM and GRU (torch's nn.LSTM / nn.GRU equations, one layer)
# ==============================================================================================


@dataclass(frozen=True)
class LSTM(JaxCore):
    """``torch.nn.LSTM`` (one layer): params ``weight_ih (4H, D)``, ``weight_hh (4H, H)``,
    ``bias_ih``, ``bias_hh`` ``(4H,)``, gates (i, f, g, o) as torch orders them."""

    input_size: int
    hidden_size: int
    kind: str = "lstm"

    def __call__(self, params: Params, x: jax.Array, state: State | None = None,
                 episode_starts: jax.Array | None = None) -> tuple[jax.Array, State]:
        self._check_input(x)
        state = self.initial_state(params, x.shape[1], x.dtype) if state is None else state
        inputs = x @ params["weight_ih"].T + params["bias_ih"] + params["bias_hh"]  # (T, B, 4H), outside the scan

        def step(carry: State, xs: tuple[jax.Array, jax.Array]) -> tuple[State, jax.Array]:
            (h, c), (gates_x, keep) = carry, xs
            h, c = h * keep, c * keep
            i, f, g, o = jnp.split(gates_x + h @ params["weight_hh"].T, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        final, out = jax.lax.scan(step, state, (inputs, _keep_mask(x, episode_starts)))
        return out, final


@dataclass(frozen=True)
class GRU(JaxCore):
    """``torch.nn.GRU`` (one layer): params as :class:`LSTM`'s with ``3H`` rows, gates (r, z, n).
    ``c`` is carried as zeros (the torch core returns zeros there too)."""

    input_size: int
    hidden_size: int
    kind: str = "gru"

    def __call__(self, params: Params, x: jax.Array, state: State | None = None,
                 episode_starts: jax.Array | None = None) -> tuple[jax.Array, State]:
        self._check_input(x)
        h0 = (self.initial_state(params, x.shape[1], x.dtype) if state is None else state)[0]
        inputs = x @ params["weight_ih"].T + params["bias_ih"]  # (T, B, 3H)

        def step(h: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            gates_x, keep = xs
            h = h * keep
            xr, xz, xn = jnp.split(gates_x, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ params["weight_hh"].T + params["bias_hh"], 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = n + z * (h - n)
            return h, h

        h, out = jax.lax.scan(step, h0, (inputs, _keep_mask(x, episode_starts)))
        return out, (h, jnp.zeros_like(h))


# ==============================================================================================
# RIM and SRM
# ==============================================================================================


@dataclass(frozen=True)
class ModularSettings:
    """The static sizes and switches of a modular core (what the torch core derives from its
    arguments; :func:`rimrl.jax.convert.from_torch` reads them off a torch core)."""

    input_size: int
    hidden_size: int
    num_units: int
    k: int | None
    cell: str
    num_tokens: int
    input_key_size: int
    input_value_size: int
    num_input_heads: int
    comm_key_size: int
    comm_value_size: int
    num_comm_heads: int
    comm_out: bool
    learn_initial_state: bool
    position_k: int | None = None
    # How exact ties in the null attention are broken (they are common: units whose state is
    # still exactly zero after an episode start tie with each other). "index": the lower index
    # first, pure JAX (jits anywhere). "torch": torch's own CPU top-k, called back on the host,
    # so that a model trained with the torch core makes the same choices (torch leaves the order
    # of equal values to its implementation).
    tie_break: str = "index"
    # SRM only.
    tau: float | None = None
    zero_tokens_absent: bool = False
    position_lr_scale: float = 1.0

    @property
    def unit_size(self) -> int:
        return self.hidden_size // self.num_units

    @property
    def token_dim(self) -> int:
        return self.input_size // self.num_tokens


def _normalize(v: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``torch.nn.functional.normalize`` along the last axis."""
    return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), eps)


def _truncated_kernel_log(u: jax.Array, v: jax.Array, sigma: jax.Array, tau: float) -> jax.Array:
    """``log K(u, v)``: ``(u·v - 1) / σ`` where ``u·v >= τ``, ``-inf`` elsewhere; ``(M, N)``."""
    dots = u @ v.T
    return jnp.where(dots >= tau, (dots - 1.0) / sigma, -jnp.inf)


def _torch_least_k(values: np.ndarray, k: int) -> np.ndarray:
    import torch

    return torch.from_numpy(np.array(values)).topk(k, dim=1, largest=False).indices.numpy().astype(np.int32)


def _least_k_mask(values: jax.Array, k: int, tie_break: str) -> jax.Array:
    """``(B, U)`` bool: the ``k`` smallest entries of each row of ``values`` ``(B, U)``."""
    batch_size, units = values.shape
    if tie_break == "torch":
        shape = jax.ShapeDtypeStruct((batch_size, k), jnp.int32)
        chosen = jax.pure_callback(functools.partial(_torch_least_k, k=k), shape, values, vmap_method="sequential")
        return jnp.zeros((batch_size, units), bool).at[jnp.arange(batch_size)[:, None], chosen].set(True)
    if tie_break != "index":
        raise ValueError(f"tie_break must be 'index' or 'torch', got {tie_break!r}")
    # Rank of each unit: how many come before it (smaller, or equal with a lower index); the k
    # first are chosen. U x U comparisons, no sort: the units are few.
    index = jnp.arange(units)
    smaller = values[:, None, :] < values[:, :, None]
    tied_before = (values[:, None, :] == values[:, :, None]) & (index[None, None, :] < index[None, :, None])
    return (smaller | tied_before).sum(axis=-1) < k


def _heads_first(z: jax.Array, heads: int) -> jax.Array:
    """``(..., B, N, heads * d)`` -> ``(..., B, heads, N, d)`` (features split head-major, as the torch
    cores split them)."""
    z = z.reshape(*z.shape[:-1], heads, z.shape[-1] // heads)
    return jnp.swapaxes(z, -3, -2)


def _heads_last(z: jax.Array) -> jax.Array:
    """``(B, heads, U, d)`` -> ``(U, B, heads * d)``."""
    batch_size, heads, units, size = z.shape
    return z.transpose(2, 0, 1, 3).reshape(units, batch_size, heads * size)


@dataclass(frozen=True)
class _Modular(JaxCore):
    settings: ModularSettings

    @property
    def input_size(self) -> int:  # type: ignore[override]
        return self.settings.input_size

    @property
    def hidden_size(self) -> int:  # type: ignore[override]
        return self.settings.hidden_size

    @property
    def num_units(self) -> int:
        return self.settings.num_units

    # --- what a subclass adds (RIM: nothing) -----------------------------------------------------

    def attention_terms(self, params: Params) -> tuple[jax.Array | None, jax.Array | None, jax.Array | None]:
        """``(input_logits (U, N + 1), comm_logits (U, U), eligible (U,) bool)``, each or ``None``."""
        return None, None, None

    def token_presence(self, tokens: jax.Array) -> jax.Array | None:
        """``(T, B, N)`` bool, or ``None``: every token present."""
        return None

    # --- the core ----------------------------------------------------------------------------------

    def initial_state(self, params: Params, batch_size: int, dtype: Any = jnp.float32) -> State:
        if not self.settings.learn_initial_state:
            return _zeros_state(batch_size, self.hidden_size, dtype)
        h = jnp.broadcast_to(params["h_init"].reshape(1, -1), (batch_size, self.hidden_size)).astype(dtype)
        c_init = params.get("c_init")
        c = jnp.zeros_like(h) if c_init is None else jnp.broadcast_to(c_init.reshape(1, -1), h.shape).astype(dtype)
        return h, c

    def __call__(self, params: Params, x: jax.Array, state: State | None = None,
                 episode_starts: jax.Array | None = None,
                 active_mask: jax.Array | None = None) -> tuple[jax.Array, State, jax.Array]:
        """``(out (T, B, H), (h, c) each (B, H), active (T, B, U) bool)``; ``active_mask``
        ``(T, B, U)`` replaces the selection (ablations, tests)."""
        s = self.settings
        self._check_input(x)
        seq_len, batch_size = x.shape[:2]
        units, size, heads, comm_heads = s.num_units, s.unit_size, s.num_input_heads, s.num_comm_heads
        if active_mask is not None and active_mask.shape != (seq_len, batch_size, units):
            raise ValueError(f"active_mask must have shape (T, B, U) = {(seq_len, batch_size, units)}, got {active_mask.shape}")
        state = self.initial_state(params, batch_size, x.dtype) if state is None else state
        init_h, init_c = self.initial_state(params, 1, x.dtype)
        init_h, init_c = init_h.reshape(units, size), init_c.reshape(units, size)

        # Everything that does not depend on the state, once per call. Layouts are chosen so that
        # every product in the step is a matmul with its batch axes leading (XLA's CPU dot is
        # several times slower on einsums with a batch axis in the middle): units first, (U, B, .),
        # for the per-unit weights; (B, heads, ., .) for the attentions.
        tokens = x.reshape(seq_len, batch_size, s.num_tokens, s.token_dim)
        null_first = ((0, 0), (0, 0), (0, 0), (1, 0), (0, 0))  # the null token's key and value: exact zeros
        keys = tokens @ params["input_key"].T * (1.0 / math.sqrt(s.input_key_size))  # the scale, folded in
        keys_t = jnp.pad(_heads_first(keys, heads), null_first).swapaxes(-1, -2)  # (T, B, heads, dk, N + 1)
        values = jnp.pad(_heads_first(tokens @ params["input_value"].T, heads), null_first)  # (T, B, heads, N + 1, dv)
        input_logits, comm_logits, eligible = self.attention_terms(params)
        presence = self.token_presence(tokens)
        token_bias = None
        if presence is not None:
            token_bias = jnp.where(presence, 0.0, -jnp.inf).astype(x.dtype)
            token_bias = jnp.concatenate([jnp.zeros((seq_len, batch_size, 1), x.dtype), token_bias], axis=-1)
            readable = jnp.ones((units, s.num_tokens), bool) if input_logits is None else jnp.isfinite(input_logits[:, 1:])
            eligible = jnp.einsum("tbn,un->tbu", presence.astype(x.dtype), readable.astype(x.dtype)) > 0  # (T, B, U)
        elif eligible is not None:
            eligible = jnp.broadcast_to(eligible, (seq_len, batch_size, units))
        keep = _keep_mask(x, episode_starts)
        xs = {"keys_t": keys_t, "values": values, "keep": keep}
        if token_bias is not None:
            xs["token_bias"] = token_bias
        if eligible is not None:
            xs["eligible"] = eligible
        if active_mask is not None:
            xs["active_mask"] = active_mask.astype(bool)
        comm_scale = 1.0 / math.sqrt(s.comm_key_size)
        init_h, init_c = init_h[:, None, :], init_c[:, None, :]  # (U, 1, S)

        def step(carry: State, inputs: dict[str, jax.Array]) -> tuple[State, tuple[jax.Array, jax.Array]]:
            h, c = carry  # (U, B, S)
            row_keep = inputs["keep"][None]  # (1, B, 1)
            if s.learn_initial_state:
                h = jnp.where(row_keep > 0, h, init_h)
                c = jnp.where(row_keep > 0, c, init_c)
            else:
                h, c = h * row_keep, c * row_keep
            # 1. Input attention: (B, heads, U, N + 1).
            query = _heads_first(jnp.swapaxes(h @ params["input_query"], 0, 1), heads)  # (B, heads, U, dk)
            scores = query @ inputs["keys_t"]
            if input_logits is not None:
                scores = scores + input_logits
            if "token_bias" in inputs:
                scores = scores + inputs["token_bias"][:, None, None, :]
            if s.position_k is not None:
                real = scores[..., 1:]
                kth = -jnp.sort(-real, axis=2)[:, :, s.position_k - 1 : s.position_k, :]  # k-th best unit per token
                scores = jnp.concatenate([scores[..., :1], jnp.where(real < kth, -jnp.inf, real)], axis=-1)
            attention = jax.nn.softmax(scores, axis=-1)
            # 2. Selection (hard; no gradient flows through the choice): (B, U).
            if "active_mask" in inputs:
                mask = inputs["active_mask"]
            elif s.k is not None:
                mask = _least_k_mask(jax.lax.stop_gradient(attention[..., 0].mean(axis=1)), s.k, s.tie_break)
                if "eligible" in inputs:
                    mask = mask & inputs["eligible"]
            elif "eligible" in inputs:
                mask = inputs["eligible"]
            else:
                mask = jnp.ones((batch_size, units), bool)
            unit_mask = mask.T[:, :, None]  # (U, B, 1)
            # 3. Independent dynamics on each unit's own read (heads concatenated, head-major).
            attended = _heads_last(attention @ inputs["values"])  # (U, B, heads * dv)
            h_cell, c_cell = self._cell(params, attended, h, c)
            h_tilde, c = jnp.where(unit_mask, h_cell, h), jnp.where(unit_mask, c_cell, c)
            # 4. Communication among all units, per head, as a residual.
            qkv = _heads_first(jnp.swapaxes(h_tilde @ params["comm_qkv"], 0, 1), comm_heads)  # (B, heads, U, .)
            q, k, v = jnp.split(qkv, [s.comm_key_size, 2 * s.comm_key_size], axis=-1)
            comm_scores = (q * comm_scale) @ jnp.swapaxes(k, -1, -2)  # (B, heads, U, U)
            if comm_logits is not None:
                comm_scores = comm_scores + comm_logits
            read = _heads_last(jax.nn.softmax(comm_scores, axis=-1) @ v)  # (U, B, heads * dv)
            if s.comm_out:
                read = read @ params["comm_out_weight"] + params["comm_out_bias"]
            # 5. Sparse update: inactive units keep h exactly.
            h = jnp.where(unit_mask, h_tilde + read, h)
            return (h, c), (h, mask)

        def unit_major(z: jax.Array) -> jax.Array:  # (B, U * S) -> (U, B, S)
            return z.reshape(batch_size, units, size).swapaxes(0, 1)

        (h, c), (out, masks) = jax.lax.scan(step, (unit_major(state[0]), unit_major(state[1])), xs)
        out = out.transpose(0, 2, 1, 3).reshape(seq_len, batch_size, self.hidden_size)  # (T, U, B, S) -> (T, B, H)
        c = jnp.zeros_like(h) if s.cell == "gru" else c
        return out, (out[-1], c.swapaxes(0, 1).reshape(batch_size, -1)), masks

    def _cell(self, params: Params, x: jax.Array, h: jax.Array, c: jax.Array) -> State:
        """One grouped LSTM/GRU step, ``(U, B, ...)``; the torch cores' gate layouts: LSTM (i, f, o, g)
        with one bias, GRU (r, z, n) with input and hidden biases."""
        gates_x = x @ params["cell_input_weight"]
        gates_h = h @ params["cell_hidden_weight"]
        if self.settings.cell == "lstm":
            i, f, o, g = jnp.split(gates_x + gates_h + params["cell_input_bias"], 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            return jax.nn.sigmoid(o) * jnp.tanh(c), c
        xr, xz, xn = jnp.split(gates_x + params["cell_input_bias"], 3, axis=-1)
        hr, hz, hn = jnp.split(gates_h + params["cell_hidden_bias"], 3, axis=-1)
        r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return n + z * (h - n), c


@dataclass(frozen=True)
class RIM(_Modular):
    """Recurrent Independent Mechanisms (:class:`rimrl.cores.RIM`'s equations)."""

    kind: str = "rim"


@dataclass(frozen=True)
class SRM(_Modular):
    """Spatially Structured Recurrent Modules (:class:`rimrl.cores.SRM`'s equations): the kernel
    ``log K`` on the input and communication logits, modules without a token in their support
    inactive, ``zero_tokens_absent``. Extra params: ``token_positions (N, P)`` (fixed),
    ``position_first_weight``/``_bias``, ``position_last_weight``/``_bias`` (the positional MLP,
    stored divided by ``position_lr_scale`` as in torch), ``log_sigma`` and ``module_embedding (M, d)``."""

    kind: str = "srm"

    def log_kernels(self, params: Params) -> tuple[jax.Array, jax.Array]:
        scale = self.settings.position_lr_scale
        positions = jax.lax.stop_gradient(params["token_positions"])
        hidden = jnp.tanh(positions @ (params["position_first_weight"] * scale).T + params["position_first_bias"] * scale)
        encoded = hidden @ (params["position_last_weight"] * scale).T + params["position_last_bias"] * scale
        p, tokens = _normalize(params["module_embedding"]), _normalize(encoded)
        sigma = jnp.exp(params["log_sigma"])
        tau = self.settings.tau
        return _truncated_kernel_log(p, tokens, sigma, tau), _truncated_kernel_log(p, p, sigma, tau)

    def attention_terms(self, params: Params) -> tuple[jax.Array, jax.Array, jax.Array]:
        log_k_input, log_k_comm = self.log_kernels(params)
        supported = jnp.isfinite(log_k_input).any(axis=1)
        null_logit = jnp.zeros((self.num_units, 1), log_k_input.dtype)  # log K_null = log 1
        return jnp.concatenate([null_logit, log_k_input], axis=1), log_k_comm, supported

    def token_presence(self, tokens: jax.Array) -> jax.Array | None:
        return (tokens != 0).any(axis=-1) if self.settings.zero_tokens_absent else None
