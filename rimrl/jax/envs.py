"""The pick-up distractor suite in ``jax.numpy``: the four variants of both suites, jittable and vmappable.

Same task, dynamics and observation layout as :class:`rimrl.envs.PickupEnv` in
:class:`~rimrl.envs.GridDictObsWrapper` (one walled 8x8 room, a 7x7 egocentric view with no
occlusion, MiniGrid's encoding and rotation, actions 0 left / 1 right / 2 forward / 3 pick up, the
episode ends at the first pick-up with reward ``1 - 0.9 * steps / max_steps`` for the target and 0
for a distractor, truncation at ``max_steps``), written as pure functions of a :class:`PickupState`.

Layouts are drawn as MiniGrid draws them: the target kind (uniform over the suite's targets), the
distractor count (uniform in the variant's range) and kinds (uniform, with replacement, over the
variant's types x colours minus the target's kind) once, then positions — target, distractors,
agent on distinct uniform interior cells, a uniform heading — redrawn until the agent can reach a
cell next to the target. The random streams differ from numpy's, so the two implementations share
layouts only through :func:`state_from_gym` (tests step both from the same state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from rimrl.envs.variants import VARIANT_SPECS, VariantSpec

__all__ = ["PickupJax", "PickupState", "make_pickup", "state_from_gym"]

EMPTY = np.array([OBJECT_TO_IDX["empty"], 0, 0], np.uint8)
WALL = np.array([OBJECT_TO_IDX["wall"], COLOR_TO_IDX["grey"], 0], np.uint8)
PICKABLE = np.array([OBJECT_TO_IDX[t] for t in ("key", "ball", "box")], np.uint8)
#: MiniGrid's DIR_TO_VEC: 0 east, 1 south, 2 west, 3 north.
DIR_TO_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.int32)
#: Attempts at a layout with a reachable target (as PickupEnv), then the last one is kept.
MAX_LAYOUT_ATTEMPTS = 200


class PickupState(NamedTuple):
    """One env's state: ``grid`` ``(W, H, 3)`` uint8 (MiniGrid's encoding, walls included),
    ``agent_pos`` ``(2,)``, ``agent_dir``, ``target_pos`` ``(2,)``, ``target`` ``(2,)`` uint8
    (object and colour index), ``carrying`` ``(3,)`` uint8 (the encoding of what was picked up,
    else ``EMPTY``), ``step_count``."""

    grid: jax.Array
    agent_pos: jax.Array
    agent_dir: jax.Array
    target_pos: jax.Array
    target: jax.Array
    carrying: jax.Array
    step_count: jax.Array


@dataclass(frozen=True)
class PickupJax:
    """A suite variant's static settings (hashable, so a jit static argument)."""

    env_id: str
    room_size: int
    view: int
    max_steps: int
    count_range: tuple[int, int]
    targets: tuple[tuple[int, int], ...]
    #: Per target, the distractor kinds allowed beside it.
    pools: tuple[tuple[tuple[int, int], ...], ...]
    num_actions: int = 4

    @property
    def max_distractors(self) -> int:
        return self.count_range[1]

    # --- reset ------------------------------------------------------------------------------

    def reset(self, key: jax.Array) -> tuple[PickupState, dict[str, jax.Array]]:
        """A new episode: ``(state, observation)``."""
        key_target, key_count, key_kinds, key_layout = jax.random.split(key, 4)
        target_index = jax.random.randint(key_target, (), 0, len(self.targets), jnp.int32)
        target = jnp.asarray(self.targets, jnp.uint8)[target_index]
        count = jax.random.randint(key_count, (), self.count_range[0], self.count_range[1] + 1, jnp.int32)
        pool_sizes = jnp.asarray([len(p) for p in self.pools], jnp.int32)
        width = max(len(p) for p in self.pools)
        pools = jnp.asarray([list(p) + [p[0]] * (width - len(p)) for p in self.pools], jnp.uint8)
        picks = jax.random.randint(key_kinds, (self.max_distractors,), 0, pool_sizes[target_index], jnp.int32)
        kinds = pools[target_index][picks]  # (max distractors, 2); the first `count` are used

        def attempt(carry: tuple[jax.Array, jax.Array, PickupState]) -> tuple[jax.Array, jax.Array, PickupState]:
            tries, key, _ = carry
            key, sub = jax.random.split(key)
            return tries + 1, key, self._layout(sub, target, count, kinds)

        def unsolved(carry: tuple[jax.Array, jax.Array, PickupState]) -> jax.Array:
            tries, _, state = carry
            return (tries < MAX_LAYOUT_ATTEMPTS) & ~self.target_reachable(state)

        first = attempt((jnp.zeros((), jnp.int32), key_layout, self._layout(key_layout, target, count, kinds)))
        _, _, state = jax.lax.while_loop(unsolved, attempt, first)
        return state, self.observation(state)

    def _layout(self, key: jax.Array, target: jax.Array, count: jax.Array, kinds: jax.Array) -> PickupState:
        size = self.room_size
        interior = np.array([(x, y) for x in range(1, size - 1) for y in range(1, size - 1)], np.int32)
        key_cells, key_dir = jax.random.split(key)
        cells = jnp.asarray(interior)[jax.random.permutation(key_cells, len(interior))]
        grid = jnp.asarray(self._empty_room())
        target_pos = cells[0]
        grid = grid.at[target_pos[0], target_pos[1]].set(jnp.concatenate([target, jnp.zeros(1, jnp.uint8)]))
        slots = jnp.arange(self.max_distractors)
        positions = cells[1 : 1 + self.max_distractors]
        encodings = jnp.concatenate([kinds, jnp.zeros((self.max_distractors, 1), jnp.uint8)], axis=1)
        current = grid[positions[:, 0], positions[:, 1]]
        grid = grid.at[positions[:, 0], positions[:, 1]].set(jnp.where((slots < count)[:, None], encodings, current))
        agent_pos = cells[1 + count]
        return PickupState(
            grid=grid, agent_pos=agent_pos, agent_dir=jax.random.randint(key_dir, (), 0, 4, jnp.int32),
            target_pos=target_pos, target=target, carrying=jnp.asarray(EMPTY),
            step_count=jnp.zeros((), jnp.int32),
        )

    def _empty_room(self) -> np.ndarray:
        grid = np.broadcast_to(EMPTY, (self.room_size, self.room_size, 3)).copy()
        grid[0, :] = grid[-1, :] = grid[:, 0] = grid[:, -1] = WALL
        return grid

    def target_reachable(self, state: PickupState) -> jax.Array:
        """Whether the agent can walk (through empty cells) to a cell 4-adjacent to the target."""
        free = state.grid[..., 0] == EMPTY[0]
        reach = jnp.zeros(free.shape, bool).at[state.agent_pos[0], state.agent_pos[1]].set(True)

        def grow(_: int, reach: jax.Array) -> jax.Array:
            padded = jnp.pad(reach, 1)
            neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
            return reach | (neighbours & free)

        reach = jax.lax.fori_loop(0, self.room_size * self.room_size, grow, reach)
        around = state.target_pos[None, :] + jnp.asarray(DIR_TO_VEC)
        return reach[around[:, 0], around[:, 1]].any()

    # --- step ---------------------------------------------------------------------------------

    def step(self, state: PickupState, action: jax.Array) -> tuple[PickupState, dict[str, jax.Array], jax.Array,
                                                                     jax.Array, jax.Array, jax.Array]:
        """``(state, observation, reward, terminated, truncated, success)``; no automatic reset."""
        step_count = state.step_count + 1
        agent_dir = jnp.where(action == 0, (state.agent_dir - 1) % 4,
                              jnp.where(action == 1, (state.agent_dir + 1) % 4, state.agent_dir))
        front = state.agent_pos + jnp.asarray(DIR_TO_VEC)[state.agent_dir]
        front_cell = state.grid[front[0], front[1]]
        moves = (action == 2) & (front_cell[0] == EMPTY[0])
        picks = (action == 3) & jnp.isin(front_cell[0], jnp.asarray(PICKABLE)) & (state.carrying[0] == EMPTY[0])
        grid = jnp.where(picks, state.grid.at[front[0], front[1]].set(jnp.asarray(EMPTY)), state.grid)
        success = picks & jnp.all(front == state.target_pos)
        reward = jnp.where(success, 1.0 - 0.9 * step_count / self.max_steps, 0.0).astype(jnp.float32)
        state = PickupState(
            grid=grid, agent_pos=jnp.where(moves, front, state.agent_pos), agent_dir=agent_dir,
            target_pos=state.target_pos, target=state.target,
            carrying=jnp.where(picks, front_cell, state.carrying), step_count=step_count,
        )
        return state, self.observation(state), reward, picks, step_count >= self.max_steps, success

    def observation(self, state: PickupState) -> dict[str, jax.Array]:
        """``{"grid": (view, view, 3) uint8, "direction": (1,) uint8, "target": (2,) uint8}``: the
        egocentric view as MiniGrid cuts and rotates it (cells outside the room read as walls)."""
        view, half = self.view, self.view // 2
        x, y, d = state.agent_pos[0], state.agent_pos[1], state.agent_dir
        top_x = jnp.select([d == 0, d == 1, d == 2], [x, x - half, x - view + 1], x - half)
        top_y = jnp.select([d == 0, d == 1, d == 2], [y - half, y, y - half], y - view + 1)
        padded = jnp.pad(state.grid, ((view, view), (view, view), (0, 0)))
        outside = jnp.pad(jnp.zeros(state.grid.shape[:2], bool), view, constant_values=True)
        padded = jnp.where(outside[..., None], jnp.asarray(WALL), padded)
        start = [jnp.asarray(i, jnp.int32) for i in (top_x + view, top_y + view, 0)]  # one index dtype, also with x64
        window = jax.lax.dynamic_slice(padded, start, (view, view, 3))
        rotations = jnp.stack([jnp.rot90(window, k=-(k + 1), axes=(0, 1)) for k in range(4)])
        image = rotations[d].at[half, view - 1].set(state.carrying)
        return {"grid": image, "direction": d.astype(jnp.uint8)[None], "target": state.target}

    def step_autoreset(self, key: jax.Array, state: PickupState, action: jax.Array) -> tuple[
            PickupState, dict[str, jax.Array], jax.Array, jax.Array, jax.Array, jax.Array, dict[str, jax.Array]]:
        """:meth:`step`, then a new episode where it ended (SB3's convention: the returned state and
        observation are the next episode's first). Returns ``(state, obs, reward, done,
        truncated, success, terminal_obs)``: ``truncated`` only for a time limit that cut an
        episode (not one that ended it with a pick-up), ``terminal_obs`` the step's own observation."""
        state, obs, reward, terminated, truncated, success = self.step(state, action)
        done = terminated | truncated
        fresh, fresh_obs = self.reset(key)
        state = jax.tree_util.tree_map(lambda new, old: jnp.where(done, new, old), fresh, state)
        next_obs = jax.tree_util.tree_map(lambda new, old: jnp.where(done, new, old), fresh_obs, obs)
        return state, next_obs, reward, done, truncated & ~terminated, success, obs


def make_pickup(env_id: str) -> PickupJax:
    """The JAX version of a registered suite id (``rimrl/Pickup-Train-v0``, ...)."""
    if env_id not in VARIANT_SPECS:
        raise ValueError(f"rimrl.jax has the distractor suites only; got {env_id!r}, choose from {sorted(VARIANT_SPECS)}")
    spec: VariantSpec = VARIANT_SPECS[env_id]
    targets = tuple(desc.encode() for desc in spec.targets)
    pools = tuple(tuple(sorted(kind.encode() for kind in spec.distractor_kinds(desc))) for desc in spec.targets)
    return PickupJax(env_id=env_id, room_size=spec.room_size, view=spec.agent_view_size, max_steps=spec.max_steps,
                     count_range=spec.num_distractors, targets=targets, pools=pools)


def state_from_gym(env: Any) -> PickupState:
    """The :class:`PickupState` of a gymnasium suite env (after ``reset``), to step both alike."""
    inner = env.unwrapped
    return PickupState(
        grid=jnp.asarray(inner.grid.encode(), jnp.uint8),
        agent_pos=jnp.asarray(inner.agent_pos, jnp.int32),
        agent_dir=jnp.asarray(inner.agent_dir, jnp.int32),
        target_pos=jnp.asarray(inner.target_obj.cur_pos, jnp.int32),
        target=jnp.asarray(inner.target_encoding(), jnp.uint8),
        carrying=jnp.asarray(EMPTY if inner.carrying is None else inner.carrying.encode(), jnp.uint8),
        step_count=jnp.asarray(inner.step_count, jnp.int32),
    )
