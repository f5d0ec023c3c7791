"""The envs an evaluation plays on: which variants a run is tested on, and how to build them.

Variants: a run trained on a distractor-suite id (``rimrl/Pickup-Train-v0``) is evaluated on its
suite's variants (``train``, ``more``, ``novel``, ``more+novel``); any other env (a MiniGrid id,
an Atari game) has a single variant, ``default``, which is the env itself.

Atari is evaluated on full games: all lives (no episodic life), FIRE pressed after each life
loss (a policy that never presses it cannot stall a game), raw unclipped rewards, a game cap of
``max_frames_per_episode`` emulator frames (:data:`ATARI_FRAME_CAP` unless the run or
``--env-kwarg`` says otherwise), and the model's own frame stack (read from its observation space
when the run does not say).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

from rimrl.envs import DISTRACTOR_SUITES, env_family, make_env, make_minigrid_env, suite_of

__all__ = [
    "ATARI_FRAME_CAP",
    "DEFAULT_VARIANT",
    "EvaluationInputError",
    "SingleEnv",
    "VariantEnv",
    "eval_env_kwargs",
    "make_eval_env",
    "make_single_env",
    "resolve_variants",
]

#: Emulator frames after which an Atari game is cut off (ALE's default; 30 minutes at 60 fps,
#: 27,000 agent steps at frame skip 4).
ATARI_FRAME_CAP = 108_000
#: Variant name of an env that is not part of a distractor suite.
DEFAULT_VARIANT = "default"
# Spellings accepted for "more+novel" on the command line (a "+" is awkward in some shells/tools).
_VARIANT_ALIASES = {"more_novel": "more+novel", "morenovel": "more+novel", "more-novel": "more+novel"}
# Keys a run's env kwargs may hold that only make sense for training and must not reach eval envs.
_TRAINING_ONLY_KWARGS = ("monitor_dir", "clip_reward", "episodic_life", "vec_env")


class EvaluationInputError(ValueError):
    """Bad evaluation input (path, env, variant, option); the message is one line for the CLI."""


@dataclass(frozen=True)
class VariantEnv:
    """One variant to evaluate: its name (``"novel"``, ``"default"``) and registered env id."""

    variant: str
    env_id: str


def resolve_variants(train_env: str, requested: Sequence[str] | None = None) -> list[VariantEnv]:
    """The variants to evaluate a run trained on ``train_env`` on.

    Args:
        train_env: the run's env id.
        requested: variant names of the run's suite (``"train"``, ``"more+novel"``, ...) or env ids;
            None: all of the suite's variants (or the env itself outside a suite).
    """
    family = _family_or_error(train_env)
    located = suite_of(train_env)
    suite = DISTRACTOR_SUITES[located[0]] if located else {DEFAULT_VARIANT: train_env}
    if not requested:
        return [VariantEnv(name, env_id) for name, env_id in suite.items()]
    chosen: list[VariantEnv] = []
    for item in requested:
        name = _VARIANT_ALIASES.get(item.lower(), item)
        if name in suite:
            variant = VariantEnv(name, suite[name])
        elif name in gym.registry or _is_known_env(name):
            if _family_or_error(name) != family:
                raise EvaluationInputError(f"variant {item!r} is a {_family_or_error(name)} env but the run's env {train_env!r} is {family}")
            other = suite_of(name)
            variant = VariantEnv(other[1] if other else name, name)
        else:
            raise EvaluationInputError(
                f"unknown variant {item!r} for env {train_env!r}; choose from {', '.join(suite)} or give an env id"
            )
        if variant not in chosen:
            chosen.append(variant)
    return chosen


def _is_known_env(env_id: str) -> bool:
    try:
        env_family(env_id)
    except ValueError:
        return False
    return True


def _family_or_error(env_id: str) -> str:
    try:
        return env_family(env_id)
    except ValueError as error:  # "unknown env id ...; did you mean ...?"
        raise EvaluationInputError(" ".join(str(error).split())) from None


def eval_env_kwargs(
    env_id: str, observation_space: spaces.Space | None = None, run_env_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``make_env`` keyword arguments for evaluating on ``env_id``.

    Keeps what a run's ``env_kwargs`` say about the observation (e.g. Atari ``frame_stack``) and
    drops what only training wants. Atari: full games (``episodic_life=False``) with FIRE after
    each life loss (``fire_on_life_loss=True``), raw rewards (``clip_reward=False``; the score
    reported comes from ``info["episode"]`` either way), the stated frame cap
    (``max_frames_per_episode``, :data:`ATARI_FRAME_CAP` by default), and the frame stack of the
    model's observation space ``(frame_stack, 84, 84)`` unless the run gives it.
    """
    kwargs = {k: v for k, v in (run_env_kwargs or {}).items() if k not in _TRAINING_ONLY_KWARGS}
    if _family_or_error(env_id) == "atari":
        kwargs.update(clip_reward=False, episodic_life=False, fire_on_life_loss=True)
        kwargs.setdefault("max_frames_per_episode", ATARI_FRAME_CAP)
        shape = getattr(observation_space, "shape", None)
        if "frame_stack" not in kwargs and shape is not None and len(shape) == 3:
            kwargs["frame_stack"] = int(shape[0])
    return kwargs


def make_eval_env(env_id: str, n_envs: int, seed: int, env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """The vector env to evaluate on, wrapped as ``RecurrentPPO`` wraps envs (image transpose if needed)."""
    try:
        venv = make_env(env_id, n_envs=n_envs, seed=seed, **(env_kwargs or {}))
    except (TypeError, ValueError) as error:
        raise EvaluationInputError(f"cannot build env {env_id!r}: {' '.join(str(error).split())}") from None
    return RecurrentPPO._wrap_env(venv, verbose=0)


@dataclass
class SingleEnv:
    """One env behind the callables :func:`~rimrl.evaluation.rollout.trace_episode` wants."""

    reset: Callable[[int], Any]
    step: Callable[[Any], tuple[Any, float, bool, dict[str, Any]]]
    render: Callable[[], np.ndarray]
    close: Callable[[], None]
    action_names: list[str] | None = None  # words for discrete actions (GIF captions); None: numbers


def make_single_env(env_id: str, env_kwargs: dict[str, Any] | None = None) -> SingleEnv:
    """A single env for traces; ``reset(seed)`` starts a seeded episode.

    MiniGrid renders ``rgb_array`` frames (the agent's view highlighted); Atari shows the agent's
    own newest 84x84 frame, enlarged 3x.
    """
    family = env_family(env_id)
    if family == "atari":
        return _single_atari(env_id, env_kwargs or {})
    if family == "minigrid":
        return _single_minigrid(env_id, env_kwargs or {})
    return _single_gym(env_id, env_kwargs or {})


def _single_gym(env_id: str, env_kwargs: dict[str, Any]) -> SingleEnv:
    """Any other gymnasium id: ``gym.make`` (``rgb_array`` frames unless the run set a render mode)
    and the run's wrappers, as :func:`~rimrl.envs.make_env` builds each of its envs."""
    from rimrl.envs.custom import apply_wrappers, resolve_wrappers

    kwargs = {k: v for k, v in env_kwargs.items() if k not in ("monitor_dir", "wrappers")}
    kwargs.setdefault("render_mode", "rgb_array")
    env = apply_wrappers(gym.make(env_id, **kwargs), resolve_wrappers(env_kwargs.get("wrappers")))
    space = env.action_space

    def reset(seed: int) -> Any:
        return env.reset(seed=seed)[0]

    def step(action: Any) -> tuple[Any, float, bool, dict[str, Any]]:
        # predict returns a batch of one: back to the single env's action (an int for Discrete).
        action = np.asarray(action).reshape(space.shape)
        obs, reward, terminated, truncated, info = env.step(int(action) if isinstance(space, spaces.Discrete) else action)
        return obs, float(reward), bool(terminated or truncated), info

    return SingleEnv(reset, step, lambda: env.render(), env.close)


def _single_minigrid(env_id: str, env_kwargs: dict[str, Any]) -> SingleEnv:
    kwargs = {k: v for k, v in env_kwargs.items() if k != "monitor_dir"}
    env = make_minigrid_env(env_id, render_mode="rgb_array", **kwargs)

    def reset(seed: int) -> Any:
        return env.reset(seed=seed)[0]

    def step(action: Any) -> tuple[Any, float, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = env.step(int(np.asarray(action).reshape(())))
        return obs, float(reward), bool(terminated or truncated), info

    actions = getattr(env.unwrapped, "actions", None)  # MiniGrid's Actions enum
    names = [a.name for a in actions] if actions is not None else None
    return SingleEnv(reset, step, lambda: env.render(), env.close, names)


def _single_atari(env_id: str, env_kwargs: dict[str, Any]) -> SingleEnv:
    venv = make_eval_env(env_id, 1, 0, env_kwargs)
    latest: dict[str, np.ndarray] = {}

    def reset(seed: int) -> Any:
        venv.seed(seed)
        obs = venv.reset()
        latest["frame"] = obs[0]
        return obs

    def step(action: Any) -> tuple[Any, float, bool, dict[str, Any]]:
        obs, reward, done, infos = venv.step(np.asarray(action).reshape(1))
        game_over = bool(done[0]) and "episode" in infos[0]
        # After a game over the vector env has already reset: show the game's last frame instead.
        latest["frame"] = infos[0]["terminal_observation"] if game_over else obs[0]
        return obs, float(reward[0]), game_over, infos[0]

    def render() -> np.ndarray:
        grey = np.asarray(latest["frame"])[-1]  # the newest frame of the stack
        return np.repeat(np.repeat(np.stack([grey] * 3, axis=-1), 3, axis=0), 3, axis=1)

    return SingleEnv(reset, step, render, venv.close, _atari_action_names(venv))


def _atari_action_names(venv: Any) -> list[str] | None:
    """The game's action meanings (``NOOP``, ``FIRE``, ...) where the vector env exposes them."""
    try:
        names = venv.env_method("get_action_meanings", indices=[0])[0] if hasattr(venv, "env_method") else None
    except Exception:  # a vector env without per-env methods (the native ALE one): numbers will do
        names = None
    return list(names) if names else None
