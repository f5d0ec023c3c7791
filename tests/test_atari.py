"""The ale-py VecEnv adapter and the SB3 fallback: shapes, rewards, autoreset, episodes, seeding."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rimrl.envs import AleVecEnv, make_atari_vec_env, make_env, make_sb3_atari_vec_env, resolve_atari_game
from rimrl.envs.atari import atari_gym_id


def run_random(venv: VecEnv, steps: int, seed: int = 0) -> dict[str, list]:
    """Step with a fixed random action sequence; keep everything the tests look at."""
    rng = np.random.default_rng(seed)
    record: dict[str, list] = {"obs": [venv.reset()], "rewards": [], "dones": [], "infos": []}
    for _ in range(steps):
        obs, rewards, dones, infos = venv.step(rng.integers(0, venv.action_space.n, venv.num_envs))
        record["obs"].append(obs)
        record["rewards"].append(rewards)
        record["dones"].append(dones)
        record["infos"].append(infos)
    return record


def test_game_name_forms() -> None:
    for name in ("Breakout", "breakout", "ALE/Breakout-v5", "BreakoutNoFrameskip-v4", "Breakout-v5"):
        assert resolve_atari_game(name) == "breakout"
    assert resolve_atari_game("MsPacman") == "ms_pacman"
    assert resolve_atari_game("SpaceInvadersNoFrameskip-v4") == "space_invaders"
    assert atari_gym_id("space_invaders") == "ALE/SpaceInvaders-v5"
    # Names whose ROM id is not their camel-case split.
    for name in ("UpNDown", "ALE/UpNDown-v5", "UpNDownNoFrameskip-v4", "upndown"):
        assert resolve_atari_game(name) == "up_n_down"
    assert atari_gym_id("UpNDown") == "ALE/UpNDown-v5"
    for bad in ("Breakuot", "", "MiniGrid-Empty-5x5-v0"):
        with pytest.raises(ValueError, match="Breakout"):
            resolve_atari_game(bad)


@pytest.mark.parametrize("frame_stack", [1, 4])
def test_shapes_and_dtypes(frame_stack: int) -> None:
    venv = make_atari_vec_env("Breakout", n_envs=3, seed=0, frame_stack=frame_stack)
    assert isinstance(venv, VecEnv)
    assert venv.observation_space.shape == (frame_stack, 84, 84)
    assert venv.observation_space.dtype == np.uint8
    assert is_image_space(venv.observation_space)  # channel-first image: SB3 will not transpose it
    assert venv.action_space.n == 4 and venv.get_action_meanings()[:2] == ["NOOP", "FIRE"]
    obs = venv.reset()
    assert obs.shape == (3, frame_stack, 84, 84) and obs.dtype == np.uint8
    obs, rewards, dones, infos = venv.step(np.array([1, 2, 3]))
    assert obs.shape == (3, frame_stack, 84, 84)
    assert rewards.shape == (3,) and rewards.dtype == np.float32
    assert dones.shape == (3,) and dones.dtype == bool
    assert isinstance(infos, list) and len(infos) == 3
    venv.close()


def test_raw_episode_score_and_clipped_rewards() -> None:
    # Space Invaders pays 5-200 points per alien, so clipping is visible.
    runs = {}
    for clip in (True, False):
        venv = make_atari_vec_env("SpaceInvaders", n_envs=4, seed=11, clip_reward=clip)
        runs[clip] = run_random(venv, 700)
        venv.close()
    clipped, raw = np.array(runs[True]["rewards"]), np.array(runs[False]["rewards"])
    assert set(np.unique(clipped)) <= {-1.0, 0.0, 1.0}
    assert raw.max() > 1.0, "raw rewards must not be clipped"
    np.testing.assert_array_equal(clipped, np.sign(raw))

    episodes = 0
    for env_idx in range(4):
        score, length = 0.0, 0
        for t in range(700):
            score += raw[t, env_idx]
            length += 1
            for clip in (True, False):
                info = runs[clip]["infos"][t][env_idx]
                assert ("episode" in info) == bool(runs[clip]["dones"][t][env_idx])
                if "episode" in info:
                    assert info["episode"]["r"] == pytest.approx(score)  # raw, even with clipping on
                    assert info["episode"]["l"] == length
            if runs[False]["dones"][t][env_idx]:
                episodes += 1
                score, length = 0.0, 0
    assert episodes >= 2


def test_same_step_autoreset_gives_terminal_observation() -> None:
    venv = make_atari_vec_env("Breakout", n_envs=4, seed=3)
    record = run_random(venv, 500)
    venv.close()
    game_ends = 0
    for t, (dones, infos) in enumerate(zip(record["dones"], record["infos"], strict=True)):
        for env_idx, (done, info) in enumerate(zip(dones, infos, strict=True)):
            assert ("terminal_observation" in info) == bool(done)
            if done:
                game_ends += 1
                terminal = info["terminal_observation"]
                assert terminal.shape == (1, 84, 84) and terminal.dtype == np.uint8
                # The returned obs already belongs to the next game (same-step autoreset).
                assert not np.array_equal(terminal, record["obs"][t + 1][env_idx])
                assert info["TimeLimit.truncated"] is False
    assert game_ends >= 4


def test_episodic_life_dones_without_episode_info() -> None:
    runs = {}
    for episodic_life in (False, True):
        venv = make_atari_vec_env("Breakout", n_envs=4, seed=5, episodic_life=episodic_life)
        runs[episodic_life] = run_random(venv, 500)
        venv.close()
    full, per_life = runs[False], runs[True]
    # The game itself is unaffected: same frames, same rewards.
    for a, b in zip(full["obs"], per_life["obs"], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.array(full["rewards"]), np.array(per_life["rewards"]))
    full_dones, life_dones = np.array(full["dones"]), np.array(per_life["dones"])
    assert np.all(life_dones[full_dones]), "every game end is also a done with episodic life"
    assert life_dones.sum() >= 3 * full_dones.sum() > 0, "Breakout has 5 lives"
    for t in range(500):
        for env_idx in range(4):
            info_full, info_life = full["infos"][t][env_idx], per_life["infos"][t][env_idx]
            assert ("episode" in info_life) == ("episode" in info_full) == bool(full_dones[t, env_idx])
            if "episode" in info_life:
                assert info_life["episode"]["r"] == info_full["episode"]["r"]
                assert info_life["episode"]["l"] == info_full["episode"]["l"]
            if life_dones[t, env_idx] and not full_dones[t, env_idx]:
                # Life lost, game goes on: the terminal frame is the current frame.
                np.testing.assert_array_equal(
                    info_life["terminal_observation"], per_life["obs"][t + 1][env_idx]
                )


def test_seeding_is_reproducible() -> None:
    first = run_random(make_atari_vec_env("Pong", n_envs=2, seed=42), 150)
    second = run_random(make_atari_vec_env("Pong", n_envs=2, seed=42), 150)
    other = run_random(make_atari_vec_env("Pong", n_envs=2, seed=43), 150)
    assert all(np.array_equal(a, b) for a, b in zip(first["obs"], second["obs"], strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first["obs"], other["obs"], strict=True))

    venv = make_atari_vec_env("Pong", n_envs=2, seed=None)
    venv.seed(42)  # SB3 contract: applies at the next reset
    again = run_random(venv, 150)
    venv.close()
    assert all(np.array_equal(a, b) for a, b in zip(first["obs"], again["obs"], strict=True))


def test_vec_env_plumbing() -> None:
    venv = AleVecEnv("Breakout", n_envs=2, seed=0)
    assert venv.get_attr("render_mode") == [None, None]
    assert venv.env_is_wrapped(DummyVecEnv) == [False, False]
    assert venv.env_method("get_action_meanings", indices=[0]) == [["NOOP", "FIRE", "RIGHT", "LEFT"]]
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros(2, dtype=np.int64))
    venv.reset()
    venv.step(np.zeros(2, dtype=np.int64))
    obs, rewards, dones, _ = venv.step([[1], [0]])  # any int array-like of n_envs actions
    assert obs.shape == (2, 1, 84, 84) and rewards.dtype == np.float32 and dones.shape == (2,)
    assert venv.ale_vector_env.num_envs == 2
    venv.close()
    for closed_use in (venv.reset, lambda: venv.ale_vector_env):
        with pytest.raises(RuntimeError, match="closed"):
            closed_use()
    for kwargs, param in ((dict(n_envs=0), "n_envs"), (dict(n_envs=1, frame_stack=0), "frame_stack")):
        with pytest.raises(ValueError, match=param):
            AleVecEnv("Breakout", **kwargs)


needs_opencv = pytest.mark.skipif(
    importlib.util.find_spec("cv2") is None, reason="SB3's AtariWrapper needs opencv-python(-headless)"
)


@needs_opencv
@pytest.mark.parametrize("frame_stack", [1, 4])
def test_sb3_fallback_matches_layout(frame_stack: int) -> None:
    venv = make_sb3_atari_vec_env(
        "Breakout", n_envs=2, seed=0, frame_stack=frame_stack, vec_env_cls=DummyVecEnv
    )
    assert venv.observation_space.shape == (frame_stack, 84, 84)
    record = run_random(venv, 400)
    venv.close()
    assert record["obs"][-1].shape == (2, frame_stack, 84, 84)
    assert set(np.unique(np.array(record["rewards"]))) <= {-1.0, 0.0, 1.0}
    episode_ends = [info for infos in record["infos"] for info in infos if "episode" in info]
    assert episode_ends and all(
        info["terminal_observation"].shape == (frame_stack, 84, 84) for info in episode_ends
    )


@needs_opencv
def test_sb3_fallback_subproc_through_make_env() -> None:
    venv = make_env("BreakoutNoFrameskip-v4", n_envs=2, seed=0, vec_env="subproc")
    assert isinstance(venv.unwrapped, SubprocVecEnv)
    obs = venv.reset()
    assert obs.shape == (2, 1, 84, 84)
    venv.step(np.array([1, 1]))
    venv.close()


class PermutingAle:
    """Stand-in for ale-py's vector env that returns rows in a shuffled env order, as async ALE may."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = num_envs
        self.row_env_ids = np.arange(num_envs)
        self.last_actions = np.zeros(num_envs, dtype=np.int32)
        self.ale = self  # the C++ object's send(actions, paddle_strength), which the adapter calls

    def _batch(self) -> tuple[np.ndarray, dict]:
        self.row_env_ids = np.random.default_rng(
            len(self.row_env_ids) + int(self.last_actions.sum())
        ).permutation(self.num_envs)
        obs = np.broadcast_to(self.row_env_ids[:, None, None, None], (self.num_envs, 1, 84, 84)).astype(
            np.uint8
        )
        info = {"env_id": self.row_env_ids.astype(np.int32), "lives": np.zeros(self.num_envs, dtype=np.int32)}
        return obs, info

    def reset(self, seed: np.ndarray) -> tuple[np.ndarray, dict]:
        return self._batch()

    def send(self, actions: np.ndarray, paddle_strength: np.ndarray | None = None) -> None:
        # Row i of the actions goes to the env that was in row i of the last batch (ALE's contract).
        self.last_actions = np.empty(self.num_envs, dtype=np.int32)
        self.last_actions[self.row_env_ids] = actions

    def recv(self) -> tuple:
        obs, info = self._batch()
        rewards = self.last_actions[self.row_env_ids].astype(np.int32)  # each env echoes its action
        done = np.zeros(self.num_envs, dtype=bool)
        return obs, rewards, done, done.copy(), info

    def close(self) -> None:
        pass


def test_out_of_order_batches_are_put_in_env_order() -> None:
    venv = AleVecEnv("Breakout", n_envs=4, seed=0, clip_reward=False)
    venv._ale.close()
    venv._ale = PermutingAle(4)
    obs = venv.reset()
    assert [int(o[0, 0, 0]) for o in obs] == [0, 1, 2, 3]
    for actions in ([3, 1, 0, 2], [0, 0, 1, 3], [2, 3, 1, 0]):
        obs, rewards, _, _ = venv.step(np.array(actions))
        assert [int(o[0, 0, 0]) for o in obs] == [0, 1, 2, 3]
        assert rewards.tolist() == actions


# ----------------------------------------------------------------------------------------------
# FIRE after a life loss (issue 15: a policy that never presses FIRE stalled Breakout to the cap)
# ----------------------------------------------------------------------------------------------

#: A short frame cap (1,250 agent steps): a stalled game reaches it, a game with FIRE after each
#: life loss and a motionless paddle loses its 5 balls in about 120 steps.
SHORT_CAP = 5_000


def play_noop_games(venv: VecEnv, max_steps: int = 2 * SHORT_CAP // 4) -> list[tuple[int, bool]]:
    """Play NOOP until every env finished a game; ``(length, truncated)`` of each env's first game."""
    venv.reset()
    ends: dict[int, tuple[int, bool]] = {}
    for _ in range(max_steps):
        _, _, dones, infos = venv.step(np.zeros(venv.num_envs, dtype=np.int64))  # NOOP is action 0
        for i in np.flatnonzero(dones):
            if "episode" in infos[i] and i not in ends:
                ends[int(i)] = (int(infos[i]["episode"]["l"]), bool(infos[i]["TimeLimit.truncated"]))
        if len(ends) == venv.num_envs:
            break
    venv.close()
    return [ends[i] for i in sorted(ends)]


@pytest.mark.parametrize("fire_on_life_loss", [False, True])
def test_fire_on_life_loss_ends_a_game_the_policy_never_fires_in(fire_on_life_loss: bool) -> None:
    venv = AleVecEnv("Breakout", n_envs=2, seed=0, max_frames_per_episode=SHORT_CAP, fire_on_life_loss=fire_on_life_loss)
    games = play_noop_games(venv)
    assert len(games) == 2
    if fire_on_life_loss:  # all five balls served and lost: a game over long before the cap
        assert all(not truncated and length < SHORT_CAP // 4 // 4 for length, truncated in games), games
    else:  # ALE's use_fire_reset serves the first ball only: the game waits for FIRE until the cap
        assert all(truncated and length == SHORT_CAP // 4 for length, truncated in games), games


def test_fire_on_life_loss_leaves_the_callers_actions_alone() -> None:
    venv = AleVecEnv("Breakout", n_envs=2, seed=0, fire_on_life_loss=True)
    venv.reset()
    actions = np.zeros(2, dtype=np.int32)
    for _ in range(400):
        venv.step(actions)
    venv.close()
    assert actions.tolist() == [0, 0]


@needs_opencv
def test_fire_on_life_loss_on_the_sb3_fallback() -> None:
    venv = make_sb3_atari_vec_env("Breakout", n_envs=2, seed=0, max_frames_per_episode=SHORT_CAP,
                                  fire_on_life_loss=True, vec_env_cls=DummyVecEnv)
    games = play_noop_games(venv)
    assert len(games) == 2 and all(not truncated for _, truncated in games), games


def test_fire_on_life_loss_in_a_game_without_fire_changes_nothing() -> None:
    venv = AleVecEnv("Freeway", n_envs=1, seed=0, fire_on_life_loss=True)  # actions: NOOP, UP, DOWN
    assert "FIRE" not in venv.get_action_meanings() and venv._fire_action is None
    record = run_random(venv, 20)
    venv.close()
    assert len(record["dones"]) == 20
