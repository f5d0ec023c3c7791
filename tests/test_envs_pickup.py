"""The MiniGrid distractor pick-up task and its registered variants."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from minigrid.core.constants import COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX
from stable_baselines3.common.preprocessing import is_image_space

import rimrl.envs as envs
from rimrl.envs import (
    DISTRACTOR_SUITES,
    SUITE_SPECS,
    VARIANT_SPECS,
    GridDictObsWrapper,
    ObjectDesc,
    PickupEnv,
    plan_path_to_face,
    plan_pickup,
    run_oracle_episode,
    suite_of,
)
from rimrl.envs.pickup import PICKABLE_TYPES, reachable_cells

ALL_IDS = sorted(VARIANT_SPECS)
RESETS_PER_VARIANT = 300
ORACLE_EPISODES = 200


def grid_objects(env: gym.Env) -> list[tuple[ObjectDesc, tuple[int, int]]]:
    """Every pickable object on the full grid with its position."""
    grid = env.unwrapped.grid
    found = []
    for x in range(grid.width):
        for y in range(grid.height):
            cell = grid.get(x, y)
            if cell is not None and cell.type in PICKABLE_TYPES:
                found.append((ObjectDesc(cell.type, cell.color), (x, y)))
    return found


def training_kinds(suite: str) -> frozenset[ObjectDesc]:
    train = SUITE_SPECS[suite]["train"]
    return train.distractor_kinds() | frozenset(train.targets)


# --- registration and specs ----------------------------------------------------------------------


def test_suites_cover_both_families_and_all_variants() -> None:
    assert set(DISTRACTOR_SUITES) == {"pickup", "pickup-instructed"}
    for suite, variants in DISTRACTOR_SUITES.items():
        assert set(variants) == {"train", "more", "novel", "more+novel"}
        for variant, env_id in variants.items():
            assert env_id in gym.registry
            assert suite_of(env_id) == (suite, variant)
    assert DISTRACTOR_SUITES["pickup"]["train"] == "rimrl/Pickup-Train-v0"
    assert DISTRACTOR_SUITES["pickup-instructed"]["more+novel"] == "rimrl/PickupInstructed-MoreNovel-v0"
    assert suite_of("MiniGrid-Fetch-8x8-N3-v0") is None


@pytest.mark.parametrize("suite", sorted(SUITE_SPECS))
def test_variant_specs_are_consistent(suite: str) -> None:
    specs = SUITE_SPECS[suite]
    train, more, novel, more_novel = (specs[v] for v in ("train", "more", "novel", "more+novel"))
    # Variants differ only in distractors.
    for spec in specs.values():
        assert (spec.room_size, spec.agent_view_size, spec.max_steps) == (8, 7, 128)
        assert spec.targets == train.targets and spec.instructed == train.instructed
    assert more.num_distractors[0] >= 2 * train.num_distractors[1]
    assert more_novel.num_distractors == more.num_distractors
    assert novel.num_distractors == train.num_distractors
    assert novel.distractor_kinds() == more_novel.distractor_kinds()
    assert more.distractor_kinds() == train.distractor_kinds()
    # Novel colours were never seen in training, neither on a distractor nor on a target.
    seen_colors = {k.color for k in training_kinds(suite)}
    assert not seen_colors & set(novel.distractor_colors)
    assert not training_kinds(suite) & novel.distractor_kinds()
    for target in train.targets:
        assert target not in novel.distractor_kinds(target)
        assert target not in train.distractor_kinds(target)


# --- generated episodes are within spec -------------------------------------------------------


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_generated_episodes_match_variant_spec(env_id: str) -> None:
    spec = VARIANT_SPECS[env_id]
    env = gym.make(env_id)
    train_kinds = training_kinds(spec.suite)
    novel_kinds = SUITE_SPECS[spec.suite]["novel"].distractor_kinds()
    counts = set()
    for seed in range(RESETS_PER_VARIANT):
        _, info = env.reset(seed=seed)
        target, distractors = info["target"], info["distractors"]
        low, high = spec.num_distractors
        assert low <= info["num_distractors"] == len(distractors) <= high
        counts.add(len(distractors))
        assert target in spec.targets
        assert set(distractors) <= spec.distractor_kinds(target)
        assert target not in distractors
        if spec.variant in ("novel", "more+novel"):
            assert not set(distractors) & train_kinds
            assert not {d.color for d in distractors} & {k.color for k in train_kinds}
        else:
            assert not set(distractors) & novel_kinds

        on_grid = grid_objects(env)
        assert sorted(kind for kind, _ in on_grid) == sorted([target, *distractors])
        target_cells = [pos for kind, pos in on_grid if kind == target]
        assert target_cells == [info["target_pos"]], "the target must be unique"
        reachable = reachable_cells(env.unwrapped.grid, tuple(env.unwrapped.agent_pos))
        tx, ty = info["target_pos"]
        assert any((tx + int(dx), ty + int(dy)) in reachable for dx, dy in DIR_TO_VEC)
    assert counts == set(range(spec.num_distractors[0], spec.num_distractors[1] + 1))


def test_instructed_targets_vary_and_fixed_target_does_not() -> None:
    fixed = gym.make(DISTRACTOR_SUITES["pickup"]["train"])
    instructed = gym.make(DISTRACTOR_SUITES["pickup-instructed"]["train"])
    fixed_targets = {fixed.reset(seed=s)[1]["target"] for s in range(100)}
    instructed_targets = {instructed.reset(seed=s)[1]["target"] for s in range(200)}
    assert fixed_targets == {ObjectDesc("ball", "red")}
    assert instructed_targets == set(SUITE_SPECS["pickup-instructed"]["train"].targets)


# --- solvability and rewards ----------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_shortest_path_oracle_solves_every_variant(env_id: str) -> None:
    env = gym.make(env_id)
    results = [run_oracle_episode(env, seed=10_000 + s) for s in range(ORACLE_EPISODES)]
    success_rate = np.mean([success for _, success, _ in results])
    assert success_rate >= 0.99
    max_steps = VARIANT_SPECS[env_id].max_steps
    for ret, success, steps in results:
        if success:
            assert ret == pytest.approx(1 - 0.9 * steps / max_steps)


def test_wrong_pickup_ends_episode_without_reward() -> None:
    env = gym.make(DISTRACTOR_SUITES["pickup"]["more"])
    checked = 0
    for seed in range(50):
        _, info = env.reset(seed=seed)
        base = env.unwrapped
        for kind, pos in grid_objects(env):
            if kind == info["target"]:
                continue
            path = plan_path_to_face(env, pos)
            if path is None:
                continue
            for action in path:
                _, reward, terminated, truncated, step_info = env.step(action)
                assert reward == 0 and not terminated and not step_info["success"]
            _, reward, terminated, truncated, step_info = env.step(3)  # pick up the distractor
            assert terminated and reward == 0.0
            assert step_info["success"] is False and step_info["picked"] == kind
            assert base.carrying is not None
            checked += 1
            break
    assert checked >= 45


def test_success_flag_only_on_target_pickup() -> None:
    env = gym.make(DISTRACTOR_SUITES["pickup-instructed"]["train"])
    env.reset(seed=7)
    plan = plan_pickup(env)
    assert plan is not None and plan[-1] == 3
    flags = []
    for action in plan:
        _, reward, terminated, _, info = env.step(action)
        flags.append(info["success"])
    assert flags == [False] * (len(plan) - 1) + [True]
    assert terminated and reward > 0


def test_time_limit_truncates() -> None:
    env = gym.make(DISTRACTOR_SUITES["pickup"]["train"])
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, reward, terminated, truncated, info = env.step(0)  # spin in place forever
        steps += 1
        assert not terminated and reward == 0 and not info["success"]
    assert steps == VARIANT_SPECS[DISTRACTOR_SUITES["pickup"]["train"]].max_steps


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id", [DISTRACTOR_SUITES["pickup"]["train"], DISTRACTOR_SUITES["pickup-instructed"]["more+novel"]]
)
def test_same_seed_same_episode(env_id: str) -> None:
    def rollout(seed: int) -> list[np.ndarray]:
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        frames = [env.unwrapped.grid.encode(), obs["grid"], obs["target"]]
        actions = np.random.default_rng(seed).integers(0, 4, 40)
        for action in actions:
            obs, reward, terminated, truncated, _ = env.step(int(action))
            frames += [obs["grid"], obs["direction"], np.array([reward])]
            if terminated or truncated:
                break
        return frames

    first, again, other = rollout(3), rollout(3), rollout(4)
    assert len(first) == len(again) and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


# --- observation format -------------------------------------------------------------------------


def test_observation_space_contract() -> None:
    spaces_seen = [gym.make(env_id).observation_space for env_id in ALL_IDS]
    assert all(space == spaces_seen[0] for space in spaces_seen)
    space = spaces_seen[0]
    assert isinstance(space, gym.spaces.Dict) and set(space.spaces) == {"grid", "direction", "target"}
    grid, direction, target = space["grid"], space["direction"], space["target"]
    assert grid.shape == (7, 7, 3) and grid.dtype == np.uint8
    assert np.all(grid.low == 0)
    assert np.all(grid.high == np.array([max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values()), 2]))
    assert direction.shape == (1,) and direction.dtype == np.uint8 and direction.high[0] == 3
    assert target.shape == (2,) and target.dtype == np.uint8
    assert list(target.high) == [max(OBJECT_TO_IDX.values()), max(COLOR_TO_IDX.values())]
    # SB3 must not treat the grid as an image (no transpose, no /255).
    assert not is_image_space(grid)
    assert not is_image_space(grid, check_channels=False)


@pytest.mark.parametrize(
    "env_id", [DISTRACTOR_SUITES["pickup"]["novel"], DISTRACTOR_SUITES["pickup-instructed"]["train"]]
)
def test_observations_stay_in_space_and_encode_target(env_id: str) -> None:
    env = gym.make(env_id)
    rng = np.random.default_rng(0)
    for seed in range(20):
        obs, info = env.reset(seed=seed)
        expected_target = [OBJECT_TO_IDX[info["target"].type], COLOR_TO_IDX[info["target"].color]]
        for _ in range(30):
            assert env.observation_space.contains(obs)
            assert list(obs["target"]) == expected_target
            assert obs["direction"][0] == env.unwrapped.agent_dir
            obs, _, terminated, truncated, _ = env.step(int(rng.integers(0, 4)))
            if terminated or truncated:
                break


def test_wrapper_on_plain_minigrid_env_omits_target() -> None:
    env = GridDictObsWrapper(gym.make("MiniGrid-Fetch-8x8-N3-v0"))
    assert set(env.observation_space.spaces) == {"grid", "direction"}
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["grid"].shape == (7, 7, 3)
    with pytest.raises(ValueError, match="target_encoding"):
        GridDictObsWrapper(gym.make("MiniGrid-Fetch-8x8-N3-v0"), include_target=True)
    babyai = GridDictObsWrapper(gym.make("BabyAI-GoToRedBall-v0"))
    obs, _ = babyai.reset(seed=0)
    assert babyai.observation_space.contains(obs)


def test_wrapper_rejects_non_minigrid_observation() -> None:
    with pytest.raises(ValueError, match="image"):
        GridDictObsWrapper(gym.make("CartPole-v1"))


# --- constructor validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        (dict(room_size=3), "room_size"),
        (dict(agent_view_size=4), "agent_view_size"),
        (dict(num_distractors=(5, 2)), "num_distractors"),
        (dict(num_distractors=(2, 40)), "num_distractors"),
        (dict(distractor_colors=("red", "pink")), "distractor_colors"),
        (dict(distractor_types=("door",)), "distractor_types"),
        (dict(target=("ball", "pink")), "target"),
        (dict(target=("ball", "red"), instructed_targets=[("key", "red")]), "instructed_targets"),
        (dict(distractor_types=("ball",), distractor_colors=("red",)), "distractor"),
        (dict(max_steps=0), "max_steps"),
    ],
)
def test_bad_constructor_arguments_raise(kwargs: dict, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        PickupEnv(**kwargs)


def test_custom_env_and_render_frame() -> None:
    env = GridDictObsWrapper(
        PickupEnv(room_size=6, num_distractors=1, target=("key", "yellow"), render_mode="rgb_array")
    )
    obs, info = env.reset(seed=0)
    assert info["num_distractors"] == 1 and info["target"] == ObjectDesc("key", "yellow")
    assert list(obs["target"]) == [OBJECT_TO_IDX["key"], COLOR_TO_IDX["yellow"]]
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
    assert env.action_space == gym.spaces.Discrete(4)


def test_package_exports() -> None:
    for name in envs.__all__:
        assert hasattr(envs, name), name


def test_docs_cover_every_variant() -> None:
    from pathlib import Path

    from rimrl.envs.render_docs import frame_filename

    docs = Path(__file__).resolve().parents[1] / "docs"
    text = (docs / "envs.md").read_text()
    for spec in VARIANT_SPECS.values():
        assert f"`{spec.env_id}`" in text
        png = frame_filename(spec.suite, spec.variant)
        assert png in text and (docs / png).is_file()
    assert "python -m rimrl.envs.render_docs" in text


@pytest.mark.parametrize(
    "env_id", [DISTRACTOR_SUITES["pickup"]["train"], DISTRACTOR_SUITES["pickup-instructed"]["more+novel"]]
)
def test_fast_egocentric_view_matches_minigrid(env_id: str) -> None:
    """PickupEnv.gen_obs (numpy) must equal MiniGrid's reference per-cell implementation."""
    from minigrid.minigrid_env import MiniGridEnv

    env = gym.make(env_id)
    base = env.unwrapped
    rng = np.random.default_rng(0)
    compared = pickups = 0
    for seed in range(60):
        obs, _ = env.reset(seed=seed)
        for _ in range(60):
            reference = MiniGridEnv.gen_obs(base)
            np.testing.assert_array_equal(obs["grid"], reference["image"])
            assert obs["direction"][0] == reference["direction"]
            compared += 1
            # Mostly walk and turn, sometimes pick up (which ends the episode).
            action = int(rng.choice(4, p=[0.25, 0.25, 0.4, 0.1]))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                pickups += int(terminated)
                np.testing.assert_array_equal(obs["grid"], MiniGridEnv.gen_obs(base)["image"])
                break
    assert compared > 1000 and pickups > 10
