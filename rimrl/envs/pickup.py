"""MiniGrid distractor pick-up task.

The agent stands in a single walled room with one *target* object and a number of *distractor*
objects. Picking up the target ends the episode with MiniGrid's time-discounted reward
``1 - 0.9 * step_count / max_steps``; picking up anything else ends it with reward 0. With a 7x7
egocentric view the agent cannot see the whole room at once, so remembering where it has looked
(and, in the instructed mode, what it was asked for) matters.

Two target modes:

- *fixed*: one target for every episode (a red ball by default);
- *instructed*: the target is drawn per episode from ``instructed_targets`` and shown to the agent
  as the ``"target"`` entry of the observation (see :class:`rimrl.envs.wrappers.GridDictObsWrapper`).

No distractor is ever of the same (type, colour) as the episode's target, so "the red ball" is
always unambiguous, and placement is re-drawn until the agent can walk to a cell next to the target.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, NamedTuple, SupportsFloat

import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Ball, Box, Key, Wall, WorldObj
from minigrid.minigrid_env import MiniGridEnv

#: Object types the agent can pick up in MiniGrid.
PICKABLE_TYPES: tuple[str, ...] = ("key", "ball", "box")

_OBJECT_CLASSES: dict[str, type[WorldObj]] = {"key": Key, "ball": Ball, "box": Box}

#: Attempts at drawing a layout whose target is reachable before giving up.
_MAX_LAYOUT_ATTEMPTS = 200

_WALL_ENCODING = np.array(Wall().encode(), dtype=np.uint8)
_EMPTY_ENCODING = np.array([OBJECT_TO_IDX["empty"], 0, 0], dtype=np.uint8)


class ObjectDesc(NamedTuple):
    """An object kind: a MiniGrid pickable type and a colour, e.g. ``ObjectDesc("ball", "red")``."""

    type: str
    color: str

    def encode(self) -> tuple[int, int]:
        """(object index, colour index) as in ``minigrid.core.constants``."""
        return OBJECT_TO_IDX[self.type], COLOR_TO_IDX[self.color]

    def __str__(self) -> str:
        return f"{self.color} {self.type}"


RED_BALL = ObjectDesc("ball", "red")


def as_object_desc(value: ObjectDesc | tuple[str, str], name: str) -> ObjectDesc:
    """Validate a ``(type, colour)`` pair; ``name`` is the parameter named in the error."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a (type, colour) pair such as ('ball', 'red'), got {value!r}")
    desc = ObjectDesc(*value)
    if desc.type not in PICKABLE_TYPES:
        raise ValueError(f"{name}: object type {desc.type!r} is not pickable; choose from {PICKABLE_TYPES}")
    if desc.color not in COLOR_NAMES:
        raise ValueError(f"{name}: colour {desc.color!r} is unknown; choose from {tuple(COLOR_NAMES)}")
    return desc


def _count_range(num_distractors: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(num_distractors, (int, np.integer)):
        low = high = int(num_distractors)
    elif isinstance(num_distractors, (tuple, list)) and len(num_distractors) == 2:
        low, high = (int(v) for v in num_distractors)
    else:
        raise ValueError(f"num_distractors must be an int or a (min, max) pair, got {num_distractors!r}")
    if not 0 <= low <= high:
        raise ValueError(f"num_distractors must satisfy 0 <= min <= max, got {num_distractors!r}")
    return low, high


def reachable_cells(grid: Grid, start: tuple[int, int]) -> set[tuple[int, int]]:
    """Cells the agent can walk to from ``start`` (4-connected, through empty/overlappable cells)."""
    seen = {start}
    frontier = deque([start])
    while frontier:
        x, y = frontier.popleft()
        for dx, dy in DIR_TO_VEC:
            nxt = (int(x + dx), int(y + dy))
            if nxt in seen or not (0 <= nxt[0] < grid.width and 0 <= nxt[1] < grid.height):
                continue
            cell = grid.get(*nxt)
            if cell is None or cell.can_overlap():
                seen.add(nxt)
                frontier.append(nxt)
    return seen


class PickupEnv(MiniGridEnv):
    """Pick up the target object among distractors in one walled room.

    Actions (``Discrete(4)``, MiniGrid's first four): 0 turn left, 1 turn right, 2 forward, 3 pick up.
    MiniGrid's drop/toggle/done are left out: they do nothing useful here and toggling would delete
    a box.

    Raw observations are MiniGrid's usual dict (``"image"``: ``(view, view, 3)`` uint8 egocentric
    encoding, ``"direction"``, ``"mission"``); the registered suite ids wrap this env in
    :class:`~rimrl.envs.wrappers.GridDictObsWrapper`, which reads the target from
    :meth:`target_encoding`.

    Info: every step has ``info["success"]`` (True only on the step the target is picked up) and
    ``info["picked"]`` (the :class:`ObjectDesc` picked up on this step, else None). ``reset`` returns
    ``target``, ``target_pos``, ``distractors`` (list of :class:`ObjectDesc`), ``num_distractors``.

    Args:
        room_size: side of the square room in cells, outer walls included (>= 5).
        agent_view_size: side of the egocentric view (odd, >= 3).
        num_distractors: a count, or an inclusive ``(min, max)`` range drawn uniformly per episode.
        distractor_types: types distractors are drawn from (subset of ``key``, ``ball``, ``box``).
        distractor_colors: colours distractors are drawn from (MiniGrid colour names).
        target: the fixed target (default: red ball). Mutually exclusive with ``instructed_targets``.
        instructed_targets: if given, the target is drawn uniformly from these per episode.
        max_steps: episode step limit (truncation); default ``2 * room_size**2``.
        **kwargs: passed to ``MiniGridEnv`` (e.g. ``render_mode``, ``tile_size``).
    """

    def __init__(
        self,
        room_size: int = 8,
        agent_view_size: int = 7,
        num_distractors: int | tuple[int, int] = (2, 4),
        distractor_types: Sequence[str] = ("key", "box"),
        distractor_colors: Sequence[str] = ("green", "blue", "purple"),
        target: ObjectDesc | tuple[str, str] | None = None,
        instructed_targets: Sequence[ObjectDesc | tuple[str, str]] | None = None,
        max_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(room_size, (int, np.integer)) or room_size < 5:
            raise ValueError(f"room_size must be an int >= 5 (outer walls included), got {room_size!r}")
        if (
            not isinstance(agent_view_size, (int, np.integer))
            or agent_view_size < 3
            or agent_view_size % 2 == 0
        ):
            raise ValueError(f"agent_view_size must be an odd int >= 3, got {agent_view_size!r}")
        if target is not None and instructed_targets is not None:
            raise ValueError(
                "pass either target (fixed mode) or instructed_targets (instructed mode), not both"
            )
        if max_steps is None:
            max_steps = 2 * int(room_size) ** 2
        if not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")

        self.count_range = _count_range(num_distractors)
        self.distractor_types = self._check_names(distractor_types, PICKABLE_TYPES, "distractor_types")
        self.distractor_colors = self._check_names(distractor_colors, tuple(COLOR_NAMES), "distractor_colors")
        if instructed_targets is not None:
            targets = tuple(as_object_desc(t, "instructed_targets") for t in instructed_targets)
            if not targets:
                raise ValueError("instructed_targets must not be empty")
        else:
            targets = (as_object_desc(target, "target") if target is not None else RED_BALL,)
        self.target_choices: tuple[ObjectDesc, ...] = targets
        self.instructed = instructed_targets is not None

        interior_cells = (room_size - 2) ** 2
        # Leave at least half the room free so a reachable layout is found quickly.
        if 2 + self.count_range[1] > interior_cells // 2:
            raise ValueError(
                f"num_distractors max {self.count_range[1]} is too many for room_size {room_size} "
                f"({interior_cells} free cells; agent + target + distractors must fit in half of them)"
            )
        for tgt in self.target_choices:
            if not self._distractor_pool(tgt) and self.count_range[1] > 0:
                raise ValueError(
                    f"no distractor kind differs from target {tgt}: widen distractor_types/distractor_colors"
                )

        self.room_size = int(room_size)
        self.target: ObjectDesc = self.target_choices[0]
        self.target_obj: WorldObj | None = None
        self.distractors: list[ObjectDesc] = []
        # Full-grid encoding padded with walls by one view width, refreshed when the grid changes.
        self._padded_encoding: np.ndarray | None = None
        mission_space = MissionSpace(
            mission_func=self._gen_mission,
            ordered_placeholders=[list(COLOR_NAMES), list(PICKABLE_TYPES)],
        )
        super().__init__(
            mission_space=mission_space,
            width=self.room_size,
            height=self.room_size,
            max_steps=int(max_steps),
            # A single room has no inner walls to occlude; skipping the visibility pass is faster.
            see_through_walls=True,
            agent_view_size=int(agent_view_size),
            **kwargs,
        )
        self.action_space = spaces.Discrete(4)

    @staticmethod
    def _check_names(names: Sequence[str], allowed: tuple[str, ...], param: str) -> tuple[str, ...]:
        if isinstance(names, str) or not names:
            raise ValueError(f"{param} must be a non-empty sequence of names from {allowed}, got {names!r}")
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"{param}: unknown name(s) {unknown}; choose from {allowed}")
        return tuple(dict.fromkeys(names))  # de-duplicated, order kept

    @staticmethod
    def _gen_mission(color: str, obj_type: str) -> str:
        return f"pick up the {color} {obj_type}"

    def _distractor_pool(self, target: ObjectDesc) -> list[ObjectDesc]:
        """Distractor kinds allowed alongside ``target``: every type x colour except the target's."""
        return [
            ObjectDesc(t, c)
            for t in self.distractor_types
            for c in self.distractor_colors
            if (t, c) != (target.type, target.color)
        ]

    def target_encoding(self) -> np.ndarray:
        """Target as ``(object index, colour index)``, shape ``(2,)`` uint8 (the obs ``"target"``)."""
        return np.array(self.target.encode(), dtype=np.uint8)

    def _gen_grid(self, width: int, height: int) -> None:
        self.target = self.target_choices[self._rand_int(0, len(self.target_choices))]
        pool = self._distractor_pool(self.target)
        count = int(self._rand_int(self.count_range[0], self.count_range[1] + 1))
        self.distractors = [pool[self._rand_int(0, len(pool))] for _ in range(count)]
        self.mission = self._gen_mission(self.target.color, self.target.type)

        for _ in range(_MAX_LAYOUT_ATTEMPTS):
            self.grid = Grid(width, height)
            self.grid.wall_rect(0, 0, width, height)
            self.agent_pos = (-1, -1)
            self.target_obj = _OBJECT_CLASSES[self.target.type](self.target.color)
            target_pos = self.place_obj(self.target_obj)
            for desc in self.distractors:
                self.place_obj(_OBJECT_CLASSES[desc.type](desc.color))
            self.place_agent()
            if self._target_reachable(target_pos):
                self._padded_encoding = None
                return
        raise RuntimeError(
            f"could not place {count} distractors with a reachable target in {_MAX_LAYOUT_ATTEMPTS} attempts"
        )

    def _target_reachable(self, target_pos: tuple[int, int]) -> bool:
        """Whether the agent can stand on some cell 4-adjacent to the target."""
        reachable = reachable_cells(self.grid, tuple(int(v) for v in self.agent_pos))
        tx, ty = target_pos
        return any((int(tx + dx), int(ty + dy)) in reachable for dx, dy in DIR_TO_VEC)

    def gen_obs(self) -> dict[str, Any]:
        """MiniGrid's observation, with the egocentric ``"image"`` cut from a cached array.

        Equivalent to ``MiniGridEnv.gen_obs`` for this env (no occlusion: see_through_walls) but
        with numpy slicing and rotation instead of per-cell Python loops, which dominate step
        time otherwise. The grid only changes when an object is picked up, which ends the episode.
        """
        if self._padded_encoding is None or self.carrying is not None:
            self._padded_encoding = self._encode_padded_grid()
        view = self.agent_view_size
        top_x, top_y, _, _ = self.get_view_exts()
        window = self._padded_encoding[top_x + view : top_x + 2 * view, top_y + view : top_y + 2 * view]
        # MiniGrid rotates the window left (agent_dir + 1) times so the agent faces -y.
        image = np.ascontiguousarray(np.rot90(window, k=-(self.agent_dir + 1), axes=(0, 1)))
        image[view // 2, view - 1] = self.carrying.encode() if self.carrying is not None else _EMPTY_ENCODING
        return {"image": image, "direction": self.agent_dir, "mission": self.mission}

    def _encode_padded_grid(self) -> np.ndarray:
        """``(W + 2 view, H + 2 view, 3)`` uint8: the grid encoding inside a border of walls."""
        view = self.agent_view_size
        padded = np.empty((self.width + 2 * view, self.height + 2 * view, 3), dtype=np.uint8)
        padded[...] = _WALL_ENCODING  # MiniGrid shows cells outside the grid as walls
        padded[view : view + self.width, view : view + self.height] = self.grid.encode()
        return padded

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        obs, info = super().reset(seed=seed, options=options)
        info.update(
            target=self.target,
            target_pos=tuple(int(v) for v in self.target_obj.cur_pos),
            distractors=list(self.distractors),
            num_distractors=len(self.distractors),
        )
        return obs, info

    def step(self, action: int) -> tuple[dict[str, Any], SupportsFloat, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be in {self.action_space}, got {action!r}")
        obs, reward, terminated, truncated, info = super().step(action)
        picked: ObjectDesc | None = None
        success = False
        if self.carrying is not None:
            picked = ObjectDesc(self.carrying.type, self.carrying.color)
            # Identity, not kind: only the target object counts (no distractor shares its kind anyway).
            success = self.carrying is self.target_obj
            reward = self._reward() if success else 0.0
            terminated = True
        info["success"] = success
        info["picked"] = picked
        return obs, reward, terminated, truncated, info
