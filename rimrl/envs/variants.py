"""The distractor suites: frozen variant specs and their registered gymnasium ids.

Two families share one room, view, step limit and observation space and differ only in the
target mode:

- ``pickup`` (fixed target): always pick up the red ball.
- ``pickup-instructed``: the target is drawn per episode from {key, ball} x {red, green, blue,
  purple} and given in the observation's ``"target"``; training distractors come from the same
  pool (minus the episode's target), so the agent must read the instruction.

Within a family the four variants differ only in the distractors:

=============  ==================  ============================================================
variant        distractor count    distractor kinds
=============  ==================  ============================================================
train          2-4                 family's training types x training colours
more           8-10 (>= 2 x max)   same kinds as train
novel          2-4                 {key, ball, box} x {yellow, grey}: colours no training
                                   episode ever shows (target or distractor), so no novel
                                   distractor equals any training object
more+novel     8-10                novel kinds
=============  ==================  ============================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from rimrl.envs.pickup import RED_BALL, ObjectDesc, PickupEnv
from rimrl.envs.wrappers import GridDictObsWrapper

ROOM_SIZE = 8  # outer walls included: a 6x6 floor, larger than what a 7x7 view covers from most cells
AGENT_VIEW_SIZE = 7
MAX_STEPS = 2 * ROOM_SIZE**2  # 128; an optimal episode takes at most ~20 steps

TRAIN_COUNTS = (2, 4)
MORE_COUNTS = (8, 10)

NOVEL_TYPES = ("key", "ball", "box")
NOVEL_COLORS = ("yellow", "grey")

FIXED_TRAIN_TYPES = ("key", "box")
FIXED_TRAIN_COLORS = ("green", "blue", "purple")

INSTRUCTED_TYPES = ("key", "ball")
INSTRUCTED_COLORS = ("red", "green", "blue", "purple")
INSTRUCTED_TARGETS: tuple[ObjectDesc, ...] = tuple(
    ObjectDesc(t, c) for t in INSTRUCTED_TYPES for c in INSTRUCTED_COLORS
)

VARIANTS: tuple[str, ...] = ("train", "more", "novel", "more+novel")


@dataclass(frozen=True)
class VariantSpec:
    """Everything that defines one registered suite env.

    Attributes:
        env_id: registered gymnasium id, e.g. ``"rimrl/Pickup-Train-v0"``.
        suite: ``"pickup"`` or ``"pickup-instructed"``.
        variant: one of :data:`VARIANTS`.
        num_distractors: inclusive ``(min, max)`` count, drawn uniformly per episode.
        distractor_types / distractor_colors: distractors are drawn uniformly (with replacement)
            from their product, minus the episode's target kind.
        targets: the target kinds; one for the fixed family, drawn per episode when ``instructed``.
        instructed: whether the target varies per episode.
        room_size: room side in cells, outer walls included.
        agent_view_size: egocentric view side.
        max_steps: step limit (truncation).
    """

    env_id: str
    suite: str
    variant: str
    num_distractors: tuple[int, int]
    distractor_types: tuple[str, ...]
    distractor_colors: tuple[str, ...]
    targets: tuple[ObjectDesc, ...]
    instructed: bool
    room_size: int = ROOM_SIZE
    agent_view_size: int = AGENT_VIEW_SIZE
    max_steps: int = MAX_STEPS

    def distractor_kinds(self, target: ObjectDesc | None = None) -> frozenset[ObjectDesc]:
        """Distractor kinds that may appear next to ``target`` (default: any of the targets)."""
        excluded = {target} if target is not None else set()
        if target is None and not self.instructed:
            excluded = set(self.targets)
        return frozenset(
            ObjectDesc(t, c)
            for t in self.distractor_types
            for c in self.distractor_colors
            if ObjectDesc(t, c) not in excluded
        )

    def env_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of :class:`~rimrl.envs.pickup.PickupEnv` for this variant."""
        kwargs: dict[str, Any] = dict(
            room_size=self.room_size,
            agent_view_size=self.agent_view_size,
            num_distractors=self.num_distractors,
            distractor_types=self.distractor_types,
            distractor_colors=self.distractor_colors,
            max_steps=self.max_steps,
        )
        if self.instructed:
            kwargs["instructed_targets"] = self.targets
        else:
            kwargs["target"] = self.targets[0]
        return kwargs


def _family(
    suite: str,
    id_stem: str,
    train_types: tuple[str, ...],
    train_colors: tuple[str, ...],
    targets: tuple[ObjectDesc, ...],
    instructed: bool,
) -> dict[str, VariantSpec]:
    layouts = {
        "train": (TRAIN_COUNTS, train_types, train_colors, "Train"),
        "more": (MORE_COUNTS, train_types, train_colors, "More"),
        "novel": (TRAIN_COUNTS, NOVEL_TYPES, NOVEL_COLORS, "Novel"),
        "more+novel": (MORE_COUNTS, NOVEL_TYPES, NOVEL_COLORS, "MoreNovel"),
    }
    return {
        variant: VariantSpec(
            env_id=f"rimrl/{id_stem}-{tag}-v0",
            suite=suite,
            variant=variant,
            num_distractors=counts,
            distractor_types=types,
            distractor_colors=colors,
            targets=targets,
            instructed=instructed,
        )
        for variant, (counts, types, colors, tag) in layouts.items()
    }


#: suite name -> variant name -> spec.
SUITE_SPECS: dict[str, dict[str, VariantSpec]] = {
    "pickup": _family("pickup", "Pickup", FIXED_TRAIN_TYPES, FIXED_TRAIN_COLORS, (RED_BALL,), False),
    "pickup-instructed": _family(
        "pickup-instructed", "PickupInstructed", INSTRUCTED_TYPES, INSTRUCTED_COLORS, INSTRUCTED_TARGETS, True
    ),
}

#: env id -> spec, for every registered suite env.
VARIANT_SPECS: dict[str, VariantSpec] = {
    spec.env_id: spec for family in SUITE_SPECS.values() for spec in family.values()
}

#: suite name -> variant name -> registered gymnasium id.
DISTRACTOR_SUITES: dict[str, dict[str, str]] = {
    suite: {variant: spec.env_id for variant, spec in family.items()} for suite, family in SUITE_SPECS.items()
}


def suite_of(env_id: str) -> tuple[str, str] | None:
    """``(suite name, variant)`` of a suite env id, e.g. ``("pickup", "novel")``; None for other ids."""
    spec = VARIANT_SPECS.get(env_id)
    return (spec.suite, spec.variant) if spec is not None else None


def variant_spec(env_id: str) -> VariantSpec:
    """The :class:`VariantSpec` of a suite env id (``ValueError`` for other ids)."""
    try:
        return VARIANT_SPECS[env_id]
    except KeyError:
        raise ValueError(f"env_id {env_id!r} is not a suite id; suite ids: {sorted(VARIANT_SPECS)}") from None


def make_variant_env(env_id: str, **overrides: Any) -> GridDictObsWrapper:
    """Build a suite env: ``PickupEnv`` with the variant's arguments, in ``GridDictObsWrapper``.

    This is the registered entry point; ``overrides`` (e.g. ``render_mode="rgb_array"``) replace or
    extend the spec's constructor arguments.
    """
    kwargs = variant_spec(env_id).env_kwargs()
    if "instructed_targets" in overrides or "target" in overrides:
        kwargs.pop("instructed_targets", None)
        kwargs.pop("target", None)
    kwargs.update(overrides)
    return GridDictObsWrapper(PickupEnv(**kwargs))


def register_suites() -> None:
    """Register every suite id with gymnasium (idempotent)."""
    for env_id in VARIANT_SPECS:
        if env_id not in gym.registry:
            gym.register(
                id=env_id, entry_point="rimrl.envs.variants:make_variant_env", kwargs={"env_id": env_id}
            )
