"""Atari behind SB3's ``VecEnv`` interface.

Main path: :class:`AleVecEnv`, an adapter over ``ale_py.vector_env.AtariVectorEnv`` (C++ envs
stepped by a thread pool, DeepMind preprocessing done in C++: up to 30 no-op starts, frame-skip 4
with max-pooling over the last two frames, 84x84 greyscale, FIRE on reset). The adapter adds what
SB3 expects on top:

- SB3 "same-step" autoreset: at a done step the returned observation is the first of the next
  episode and ``infos[i]["terminal_observation"]`` is the last one of the finished episode
  (ALE runs in its ``SameStep`` mode and hands over its ``final_obs``);
- ``infos[i]["episode"] = {"r", "l", "t"}`` only when the *game* ends, with ``r`` the raw
  (unclipped) score over all lives, ``l`` the length in agent steps and ``t`` the seconds since
  the VecEnv was created (SB3 ``Monitor`` conventions);
- reward clipping to the sign (``clip_reward=True``), done in Python so the raw score stays known;
- optional episodic life (``episodic_life=True``): a life loss is reported as a done (so value
  targets stop there) but the game goes on; ALE's own ``episodic_life`` option would restart the
  whole game at each life loss, so the adapter derives life losses from ``info["lives"]`` instead;
- seeding via ``seed()`` / the constructor's ``seed``: env ``i`` gets ``seed + i`` at the next reset;
- optional FIRE after a life loss (``fire_on_life_loss=True``, for evaluation on whole games): in
  games such as Breakout a new life waits for FIRE, and a greedy policy that never presses it
  would play on to the frame cap. The step after a life loss presses FIRE in place of the
  agent's action, what SB3's ``FireResetEnv`` does at the reset that follows a life loss under
  episodic life. ALE's ``use_fire_reset`` presses FIRE only when a game starts.

Fallback path: :func:`make_sb3_atari_vec_env` (SB3 ``make_atari_env`` with ``SubprocVecEnv``),
with the same observation layout ``(frame_stack, 84, 84)`` uint8.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import time
from collections.abc import Sequence
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
from ale_py import roms
from ale_py.vector_env import AtariVectorEnv
from gymnasium import spaces
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecFrameStack,
    VecTransposeImage,
)
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

gym.register_envs(ale_py)

FRAME_SIZE = 84
_VERSION_SUFFIX = re.compile(r"-v\d+$")
_MODE_SUFFIXES = ("NoFrameskip", "Deterministic")
_SEED_MODULUS = 2**31  # ALE seeds are non-negative C ints


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def resolve_atari_game(name: str) -> str:
    """ALE ROM id (snake case) of a game name or Atari env id.

    Accepts ``"Breakout"``, ``"breakout"``, ``"ALE/Breakout-v5"``, ``"BreakoutNoFrameskip-v4"``,
    ``"MsPacman"``, ``"ms_pacman"``, ... Raises ``ValueError`` for anything else.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(
            f"game must be a non-empty string such as 'Breakout' or 'ALE/Breakout-v5', got {name!r}"
        )
    stem = name.strip()
    stem = stem.removeprefix("ALE/")
    stem = _VERSION_SUFFIX.sub("", stem)
    for suffix in _MODE_SUFFIXES:
        stem = stem.removesuffix(suffix)
    rom_ids = set(roms.get_all_rom_ids())
    for candidate in (stem, _camel_to_snake(stem), stem.lower()):
        if candidate in rom_ids:
            return candidate
    # Names whose snake case is not a plain camel-case split ("UpNDown" -> "up_n_down"): ask the
    # ids ale-py registers ("ALE/UpNDown-v5" carries game="up_n_down").
    rom = _roms_by_v5_name().get(stem.lower())
    if rom is not None:
        return rom
    raise ValueError(
        f"{name!r} is not an Atari game known to ale-py {ale_py.__version__}; use a game name like "
        f"'Breakout' / 'breakout' or an id like 'ALE/Breakout-v5' or 'BreakoutNoFrameskip-v4'"
    )


def is_atari_game(name: str) -> bool:
    """Whether :func:`resolve_atari_game` accepts ``name``."""
    try:
        resolve_atari_game(name)
    except ValueError:
        return False
    return True


@functools.cache
def _v5_ids() -> dict[str, str]:
    """``{"ALE/Breakout-v5": "breakout", ...}``: the ids ale-py registers and their ROMs."""
    return {
        env_id: spec.kwargs["game"]
        for env_id, spec in gym.registry.items()
        if env_id.startswith("ALE/") and env_id.endswith("-v5") and "game" in spec.kwargs
    }


@functools.cache
def _roms_by_v5_name() -> dict[str, str]:
    """``{"upndown": "up_n_down", ...}``: lower-cased game names of the ``ALE/<Name>-v5`` ids."""
    return {_VERSION_SUFFIX.sub("", env_id.removeprefix("ALE/")).lower(): rom for env_id, rom in _v5_ids().items()}


@functools.cache
def _v5_ids_by_rom() -> dict[str, str]:
    return {rom: env_id for env_id, rom in reversed(_v5_ids().items())}  # first id per ROM wins


def atari_gym_id(game: str) -> str:
    """Registered gymnasium id (``"ALE/<Game>-v5"``) of a game name."""
    rom = resolve_atari_game(game)
    try:
        return _v5_ids_by_rom()[rom]
    except KeyError:
        raise ValueError(f"ale-py has ROM {rom!r} but registers no ALE/*-v5 id for it") from None


def _check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class AleVecEnv(VecEnv):
    """SB3 ``VecEnv`` over ale-py's C++ ``AtariVectorEnv`` (see the module docstring).

    Observations: ``(n_envs, frame_stack, 84, 84)`` uint8, space ``Box(0, 255, (frame_stack, 84, 84))``.
    Actions: ``(n_envs,)`` ints in the game's minimal action set.

    Args:
        game: game name or Atari id (see :func:`resolve_atari_game`).
        n_envs: number of emulators.
        seed: base seed for the first reset (env ``i`` gets ``seed + i``); None draws fresh seeds.
        frame_stack: frames per observation (channel axis).
        clip_reward: return ``sign(reward)``; ``infos[i]["episode"]["r"]`` is always the raw score.
        episodic_life: report a life loss as a done (the game itself continues).
        noop_max: maximum number of no-op frames after a reset.
        frame_skip: emulator frames per agent step (max-pooled over the last two).
        repeat_action_probability: sticky-action probability (0 = DeepMind setting).
        max_frames_per_episode: emulator frames before truncation (108k = 30 minutes).
        full_action_space: use all 18 actions instead of the game's minimal set.
        use_fire_reset: press FIRE after each reset in games that need it.
        fire_on_life_loss: press FIRE (instead of the agent's action) at the step after a life is
            lost, in games that have FIRE; meant for evaluation on whole games.
        num_threads: worker threads (0: one per env, capped at the CPU count).
    """

    def __init__(
        self,
        game: str,
        n_envs: int,
        seed: int | None = 0,
        frame_stack: int = 1,
        clip_reward: bool = True,
        episodic_life: bool = False,
        noop_max: int = 30,
        frame_skip: int = 4,
        repeat_action_probability: float = 0.0,
        max_frames_per_episode: int = 108_000,
        full_action_space: bool = False,
        use_fire_reset: bool = True,
        fire_on_life_loss: bool = False,
        num_threads: int = 0,
    ) -> None:
        self.game = resolve_atari_game(game)
        n_envs = _check_positive_int(n_envs, "n_envs")
        frame_stack = _check_positive_int(frame_stack, "frame_stack")
        noop_max = _check_positive_int(noop_max, "noop_max", minimum=0)
        frame_skip = _check_positive_int(frame_skip, "frame_skip")
        max_frames_per_episode = _check_positive_int(max_frames_per_episode, "max_frames_per_episode")
        num_threads = _check_positive_int(num_threads, "num_threads", minimum=0)
        if not 0.0 <= float(repeat_action_probability) <= 1.0:
            raise ValueError(
                f"repeat_action_probability must be in [0, 1], got {repeat_action_probability!r}"
            )

        self.clip_reward = bool(clip_reward)
        self.episodic_life = bool(episodic_life)
        self.frame_stack = frame_stack
        self._ale: AtariVectorEnv | None = AtariVectorEnv(
            self.game,
            n_envs,
            num_threads=num_threads,
            max_num_frames_per_episode=max_frames_per_episode,
            repeat_action_probability=float(repeat_action_probability),
            full_action_space=full_action_space,
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
            img_height=FRAME_SIZE,
            img_width=FRAME_SIZE,
            grayscale=True,
            stack_num=frame_stack,
            frameskip=frame_skip,
            maxpool=True,
            noop_max=noop_max,
            # Life losses are derived here from info["lives"]; see the module docstring.
            episodic_life=False,
            life_loss_info=False,
            # Raw rewards come back so the adapter can both clip and report the raw score.
            reward_clipping=False,
            use_fire_reset=use_fire_reset,
        )
        observation_space = spaces.Box(0, 255, (frame_stack, FRAME_SIZE, FRAME_SIZE), dtype=np.uint8)
        action_space = spaces.Discrete(int(self._ale.single_action_space.n))
        super().__init__(n_envs, observation_space, action_space)

        self._t_start = time.time()
        self._episode_return = np.zeros(n_envs, dtype=np.float64)
        # Episode lengths without a per-step array update: steps since reset() minus the step at
        # which each env's episode began.
        self._steps_since_reset = 0
        self._episode_first_step = [0] * n_envs
        self._lives = np.zeros(n_envs, dtype=np.int32)
        self._was_reset = False
        # Env id of each row of the last batch ALE returned, when not 0..n-1: ALE maps the rows of
        # the next send() onto envs in that same order.
        self._received_env_ids: np.ndarray | None = None
        self._env_ids_in_order = np.arange(n_envs, dtype=np.int32).tobytes()
        self._paddle_strength = np.ones(n_envs, dtype=np.float32)  # full strength (paddle games)
        meanings = self.get_action_meanings()
        # FIRE's index in this action set; None where the game has no FIRE (nothing to press).
        self._fire_action = meanings.index("FIRE") if fire_on_life_loss and "FIRE" in meanings else None
        self._fire_next: np.ndarray | None = None  # envs whose next action is FIRE (lost a life)
        if seed is not None:
            self.seed(seed)

    # --- core VecEnv API -------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        seeds = np.array(
            [-1 if s is None else int(s) % _SEED_MODULUS for s in self._seeds], dtype=np.int64
        )  # -1: keep the env's own RNG stream
        obs, info = self._require_ale().reset(seed=seeds)
        obs, info = self._in_env_order(obs, info)
        self._lives = np.array(info["lives"], dtype=np.int32)
        self._fire_next = None
        self._episode_return[:] = 0.0
        self._steps_since_reset = 0
        self._episode_first_step = [0] * self.num_envs
        self.reset_infos = [{"lives": int(lives)} for lives in self._lives]
        self._reset_seeds()
        self._reset_options()
        self._was_reset = True
        return obs

    # The step path makes as few numpy calls as it can. Between two batches the emulator threads
    # have just run on both cores, so the interpreter and numpy run with cold caches and each
    # small array operation costs several times what it costs warm; the env threads wait on it.
    def step_async(self, actions: np.ndarray) -> None:
        if not self._was_reset:
            raise RuntimeError("AleVecEnv.step called before reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            actions = actions.reshape(self.num_envs)
        if actions.dtype != np.int32:
            actions = actions.astype(np.int32)
        if self._fire_next is not None:  # a new array: the caller's actions stay as they were
            actions = np.where(self._fire_next, np.int32(self._fire_action), actions).astype(np.int32)
            self._fire_next = None
        if self._received_env_ids is not None:
            actions = actions[self._received_env_ids]
        # ale-py's C++ vector env directly: its Python send() re-checks the actions and builds
        # the paddle strengths anew at every step.
        self._require_ale().ale.send(actions, self._paddle_strength)

    def step_wait(self) -> VecEnvStepReturn:
        obs, raw_rewards, terminated, truncated, info = self._require_ale().recv()
        obs, info, raw_rewards, terminated, truncated = self._in_env_order(
            obs, info, raw_rewards, terminated, truncated
        )
        self._steps_since_reset += 1
        self._episode_return += raw_rewards
        rewards = np.sign(raw_rewards, dtype=np.float32) if self.clip_reward else raw_rewards.astype(np.float32)
        game_over = terminated | truncated  # ALE has already reset these games (same-step mode)
        dones = game_over
        if self.episodic_life or self._fire_action is not None:
            lives = np.asarray(info["lives"], dtype=np.int32)
            lost = lives < self._lives
            self._lives = lives
            if self.episodic_life:
                dones = game_over | lost
            if self._fire_action is not None:
                lost &= ~game_over  # a new game starts with ALE's own FIRE (use_fire_reset)
                if lost.any():
                    self._fire_next = lost

        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in dones.nonzero()[0].tolist():
            env_info = infos[i]
            if game_over[i]:
                env_info["terminal_observation"] = info["final_obs"][i].copy()
                env_info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                env_info["episode"] = {
                    "r": float(self._episode_return[i]),
                    "l": self._steps_since_reset - self._episode_first_step[i],
                    "t": round(time.time() - self._t_start, 6),
                }
                self._episode_return[i] = 0.0
                self._episode_first_step[i] = self._steps_since_reset
            else:  # life lost, game continues: the current frame ends this "life episode"
                env_info["terminal_observation"] = obs[i].copy()
                env_info["TimeLimit.truncated"] = False
        return obs, rewards, dones, infos

    def close(self) -> None:
        if self._ale is not None:
            self._ale.close()
            self._ale = None  # drops the C++ vectorizer, which joins its threads

    @property
    def ale_vector_env(self) -> AtariVectorEnv:
        """The ale-py ``AtariVectorEnv`` underneath (e.g. to time it alone or use its XLA functions).

        Stepping it directly bypasses the adapter's bookkeeping (scores, life losses, env order).
        """
        return self._require_ale()

    # --- attribute access: there are no per-env Python objects ----------------------------------

    def get_action_meanings(self) -> list[str]:
        """Names of the actions, e.g. ``["NOOP", "FIRE", "RIGHT", "LEFT"]`` for Breakout."""
        return [action.name for action in self._require_ale().ale.get_action_set()]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        count = len(list(self._get_indices(indices)))
        if attr_name == "render_mode":
            return [None] * count
        if attr_name in ("game", "frame_stack", "clip_reward", "episodic_life"):
            return [getattr(self, attr_name)] * count
        raise AttributeError(f"AleVecEnv has no per-env attribute {attr_name!r}")

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        raise AttributeError(f"AleVecEnv cannot set per-env attribute {attr_name!r} (envs live in C++)")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        count = len(list(self._get_indices(indices)))
        if method_name == "get_action_meanings":
            return [self.get_action_meanings()] * count
        raise AttributeError(f"AleVecEnv does not support env_method({method_name!r})")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))

    # --- helpers ---------------------------------------------------------------------------------

    def _require_ale(self) -> AtariVectorEnv:
        if self._ale is None:
            raise RuntimeError("AleVecEnv is closed")
        return self._ale

    def _in_env_order(self, obs: np.ndarray, info: dict[str, Any], *arrays: np.ndarray) -> tuple[Any, ...]:
        """Reorder a batch by ``info["env_id"]`` (ALE may return envs in completion order)."""
        env_ids = info["env_id"]
        if env_ids.tobytes() == self._env_ids_in_order:  # one cheap call on the usual path
            self._received_env_ids = None
            return (obs, info, *arrays)
        self._received_env_ids = env_ids.copy()
        order = np.argsort(env_ids)
        info = {
            k: (v[order] if isinstance(v, np.ndarray) and len(v) == len(order) else v)
            for k, v in info.items()
        }
        return (obs[order], info, *(a[order] for a in arrays))


def make_atari_vec_env(
    game: str,
    n_envs: int = 8,
    seed: int | None = 0,
    frame_stack: int = 1,
    clip_reward: bool = True,
    episodic_life: bool = False,
    **kwargs: Any,
) -> AleVecEnv:
    """Atari ``VecEnv`` on ale-py's C++ vector env; ``kwargs`` go to :class:`AleVecEnv`."""
    return AleVecEnv(
        game,
        n_envs,
        seed=seed,
        frame_stack=frame_stack,
        clip_reward=clip_reward,
        episodic_life=episodic_life,
        **kwargs,
    )


class FireOnLifeLoss(gym.Wrapper):
    """Press FIRE, in place of the agent's action, at the step after a life is lost.

    The Python counterpart of :class:`AleVecEnv`'s ``fire_on_life_loss`` for the SB3 fallback
    path: outside episodic life, SB3's ``FireResetEnv`` presses FIRE only when a game starts, so a
    policy that never presses it stalls at the second life of Breakout until the frame cap.
    Games without FIRE pass through unchanged.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        meanings = env.unwrapped.get_action_meanings()
        self._fire_action = meanings.index("FIRE") if "FIRE" in meanings else None
        self._lives = 0
        self._fire_next = False

    def _ale_lives(self) -> int:
        return int(self.env.unwrapped.ale.lives())

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self._lives, self._fire_next = self._ale_lives(), False
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self._fire_next and self._fire_action is not None:
            action = self._fire_action
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self._ale_lives()
        self._fire_next = lives < self._lives and not (terminated or truncated)
        self._lives = lives
        return obs, reward, terminated, truncated, info


def _atari_wrapper(env: gym.Env, fire_on_life_loss: bool = False, **wrapper_kwargs: Any) -> gym.Env:
    """SB3's ``AtariWrapper``, with :class:`FireOnLifeLoss` on top when asked (module-level: the
    ``SubprocVecEnv`` workers pickle it)."""
    wrapped: gym.Env = AtariWrapper(env, **wrapper_kwargs)
    return FireOnLifeLoss(wrapped) if fire_on_life_loss else wrapped


def _make_gym_atari_env(env_id: str, **kwargs: Any) -> gym.Env:
    # Module-level so SubprocVecEnv workers import this module (which registers ALE ids) to build it.
    gym.register_envs(ale_py)
    return gym.make(env_id, **kwargs)


def make_sb3_atari_vec_env(
    game: str,
    n_envs: int = 8,
    seed: int | None = 0,
    frame_stack: int = 1,
    clip_reward: bool = True,
    episodic_life: bool = False,
    noop_max: int = 30,
    frame_skip: int = 4,
    repeat_action_probability: float = 0.0,
    max_frames_per_episode: int = 108_000,
    fire_on_life_loss: bool = False,
    vec_env_cls: type[DummyVecEnv] | type[SubprocVecEnv] = SubprocVecEnv,
    monitor_dir: str | None = None,
    vec_env_kwargs: dict[str, Any] | None = None,
) -> VecEnv:
    """Fallback Atari ``VecEnv``: SB3's ``make_atari_env`` (Python ``AtariWrapper`` per env).

    Same preprocessing and observation layout as :func:`make_atari_vec_env`:
    ``(n_envs, frame_stack, 84, 84)`` uint8 (``VecFrameStack`` then ``VecTransposeImage``).
    ``infos[i]["episode"]`` comes from SB3's ``Monitor`` under the ``AtariWrapper``: the raw score
    of the whole game. ``fire_on_life_loss`` adds :class:`FireOnLifeLoss`.
    """
    n_envs = _check_positive_int(n_envs, "n_envs")
    frame_stack = _check_positive_int(frame_stack, "frame_stack")
    if importlib.util.find_spec("cv2") is None:
        # SB3's AtariWrapper resizes frames with OpenCV; fail here rather than inside a worker.
        raise ImportError("make_sb3_atari_vec_env needs OpenCV: pip install opencv-python-headless")
    env_kwargs = dict(
        env_id=atari_gym_id(game),
        frameskip=1,  # AtariWrapper does the frame skipping (with max-pooling)
        repeat_action_probability=float(repeat_action_probability),
        full_action_space=False,
        max_num_frames_per_episode=int(max_frames_per_episode),
    )
    wrapper_kwargs = dict(
        noop_max=int(noop_max),
        frame_skip=int(frame_skip),
        screen_size=FRAME_SIZE,
        terminal_on_life_loss=bool(episodic_life),
        clip_reward=bool(clip_reward),
        fire_on_life_loss=bool(fire_on_life_loss),
    )
    # make_atari_env with our wrapper function (AtariWrapper, then FireOnLifeLoss if asked).
    venv = make_vec_env(
        _make_gym_atari_env,
        n_envs=n_envs,
        seed=seed,
        monitor_dir=monitor_dir,
        wrapper_class=_atari_wrapper,
        wrapper_kwargs=wrapper_kwargs,
        env_kwargs=env_kwargs,
        vec_env_cls=vec_env_cls,
        vec_env_kwargs=vec_env_kwargs,
    )
    if frame_stack > 1:
        venv = VecFrameStack(venv, n_stack=frame_stack)
    return VecTransposeImage(venv)


__all__: Sequence[str] = (
    "AleVecEnv",
    "FireOnLifeLoss",
    "atari_gym_id",
    "is_atari_game",
    "make_atari_vec_env",
    "make_sb3_atari_vec_env",
    "resolve_atari_game",
)
