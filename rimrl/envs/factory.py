"""One entry point, :func:`make_env`, from an env id to an SB3 ``VecEnv``.

Accepted ids, and their *family* (which decides the preset, ``configs/<family>.yml``):

- ``minigrid``: the distractor-suite ids (``rimrl/Pickup-Train-v0``, ... see
  :data:`DISTRACTOR_SUITES`) and any registered MiniGrid/BabyAI id (``MiniGrid-Fetch-8x8-N3-v0``,
  ``BabyAI-GoToLocal-v0``, ...), given the rimrl dict observation by
  :class:`~rimrl.envs.wrappers.GridDictObsWrapper`;
- ``atari``: ``ALE/<Game>-v5``, ``<Game>NoFrameskip-v4`` or a bare game name (``Breakout``, ``breakout``);
- any other id registered with gymnasium (import the package that registers it first:
  ``train.py --gym-packages``): ``vector`` (``CartPole-v1``, ``Pendulum-v1``, ...), or ``image``
  when its observation (after the user's wrappers) is an image (the Atari preset is used).

An id that is none of these raises ``ValueError`` with the closest registered ids ("did you mean").
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid/BabyAI ids)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rimrl.envs.atari import is_atari_game, make_atari_vec_env, make_sb3_atari_vec_env
from rimrl.envs.custom import WrapperSpec, apply_wrappers, resolve_wrappers
from rimrl.envs.variants import VARIANT_SPECS, register_suites
from rimrl.envs.wrappers import GridDictObsWrapper, SuccessInfoWrapper, has_grid_dict_obs

EnvFamily = Literal["minigrid", "atari", "vector", "image"]
VecEnvKind = Literal["dummy", "subproc", "ale"]
_VEC_ENV_KINDS = ("dummy", "subproc", "ale")


def is_minigrid(env_id: str) -> bool:
    """Whether ``env_id`` is a suite id or a registered MiniGrid/BabyAI id."""
    if env_id in VARIANT_SPECS:
        return True
    spec = gym.registry.get(env_id)
    if spec is None:
        return False
    entry = (
        spec.entry_point if isinstance(spec.entry_point, str) else getattr(spec.entry_point, "__module__", "")
    )
    return str(entry).startswith(("minigrid", "rimrl.envs.variants", "rimrl.envs.pickup"))


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` names an Atari game (``ALE/Breakout-v5``, ``BreakoutNoFrameskip-v4``, ``Breakout``)."""
    return not is_minigrid(env_id) and is_atari_game(env_id)


def unknown_id_message(env_id: str) -> str:
    """``unknown env id 'CartPol-v1'; did you mean CartPole-v1?`` (closest registered ids), one line."""
    register_suites()
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    if close:
        also = f" (also close: {', '.join(close[1:])})" if len(close) > 1 else ""
        return f"unknown env id {env_id!r}; did you mean {close[0]}?{also}"
    return (
        f"unknown env id {env_id!r}: it is not registered with gymnasium (ids look like CartPole-v1, "
        f"rimrl/Pickup-Train-v0, MiniGrid-Fetch-8x8-N3-v0; Atari games like Breakout); a package that registers "
        f"more ids must be imported first (train.py --gym-packages)"
    )


def is_gym_id(env_id: str) -> bool:
    """Whether ``env_id`` is registered with gymnasium (after the imports done so far)."""
    return isinstance(env_id, str) and gym.registry.get(env_id) is not None


def _space_family(space: gym.spaces.Space) -> EnvFamily:
    from stable_baselines3.common.preprocessing import is_image_space

    return "image" if isinstance(space, gym.spaces.Box) and is_image_space(space) else "vector"


def env_family(
    env_id: str, env_kwargs: dict[str, Any] | None = None, wrappers: WrapperSpec = None
) -> EnvFamily:
    """``"minigrid"``, ``"atari"``, ``"vector"`` or ``"image"`` (see the module docstring).

    Suite, MiniGrid and Atari ids are known by name; any other registered gymnasium id is built
    once (with ``env_kwargs`` and ``wrappers``), reset and stepped once to read its observation
    space and surface errors early, then closed.

    :raises ValueError: an id that is not registered (with a "did you mean" suggestion), or one
        that cannot be built with these kwargs and wrappers.
    """
    if is_minigrid(env_id):
        return "minigrid"
    if is_atari_game(env_id):
        return "atari"
    if not is_gym_id(env_id):
        raise ValueError(unknown_id_message(env_id))
    wrapper_list = resolve_wrappers(wrappers)  # its ValueErrors name the wrapper already
    env = None
    try:
        env = _make_gym_env(env_id, dict(env_kwargs or {}), wrapper_list)
        # One reset and step too: some envs take bad kwargs silently and fail only when stepped,
        # which would otherwise surface mid-training as a traceback.
        env.reset(seed=0)
        env.step(env.action_space.sample())
        return _space_family(env.observation_space)
    except Exception as error:  # a missing dependency, bad kwargs: whatever gymnasium or the env raise
        text = " ".join(str(error).split())
        raise ValueError(f"cannot make {env_id!r}: {type(error).__name__}: {text}") from error
    finally:
        if env is not None:
            env.close()


def default_deterministic(env_id: str) -> bool:
    """The default evaluation action mode of ``env_id``: greedy (True) or sampled (False).

    The one rule for every evaluation (train.py's periodic evaluation, the ``best_model.zip`` it
    picks, evaluate.py), as rl-zoo3 has it: MiniGrid/BabyAI (the rimrl suites included) and Atari
    are evaluated with *sampled* actions, anything else greedily. A greedy policy in these envs
    can lock into a loop: turning in place forever in a grid world, never pressing FIRE in
    Breakout. Decided by name (nothing is built); unknown ids count as "anything else": the
    caller reports them where it builds the env.
    """
    return not (is_minigrid(env_id) or is_atari_game(env_id))


def _make_gym_env(env_id: str, env_kwargs: dict[str, Any], wrappers: list[Callable[[gym.Env], gym.Env]]) -> gym.Env:
    return apply_wrappers(gym.make(env_id, **env_kwargs), wrappers)


def make_minigrid_env(env_id: str, wrappers: WrapperSpec = None, **env_kwargs: Any) -> gym.Env:
    """One MiniGrid/BabyAI/suite env with the rimrl dict observation and ``info["success"]``;
    ``wrappers`` (a wrapper spec, see :mod:`rimrl.envs.custom`) wrap that env."""
    env = gym.make(env_id, **env_kwargs)
    if not has_grid_dict_obs(env):
        env = GridDictObsWrapper(env)
    return apply_wrappers(SuccessInfoWrapper(env), resolve_wrappers(wrappers))


def _thunk(
    env_id: str,
    family: EnvFamily,
    rank: int,
    seed: int | None,
    monitor_dir: str | None,
    env_kwargs: dict[str, Any],
    wrappers: WrapperSpec,
) -> Callable[[], gym.Env]:
    def build() -> gym.Env:
        # Wrappers are imported here, in the process that steps the env (a SubprocVecEnv worker too).
        if family == "minigrid":
            env = make_minigrid_env(env_id, wrappers=wrappers, **env_kwargs)
        else:
            env = _make_gym_env(env_id, env_kwargs, resolve_wrappers(wrappers))
        if seed is not None:
            env.action_space.seed(seed + rank)
        filename = os.path.join(monitor_dir, str(rank)) if monitor_dir is not None else None
        # Only the MiniGrid envs promise info["success"] (SuccessInfoWrapper) at every episode end.
        keywords = ("success",) if family == "minigrid" else ()
        return Monitor(env, filename=filename, info_keywords=keywords)

    return build


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = 0,
    vec_env: VecEnvKind | None = None,
    wrappers: WrapperSpec = None,
    **kwargs: Any,
) -> VecEnv:
    """Build ``n_envs`` copies of ``env_id`` as an SB3 ``VecEnv``; env ``i`` is seeded ``seed + i``.

    Args:
        env_id: a suite id, a MiniGrid/BabyAI id, an Atari game or any registered gymnasium id
            (see the module docstring).
        n_envs: number of parallel envs.
        seed: base seed (None: random).
        vec_env: ``"dummy"`` / ``"subproc"`` (SB3 ``DummyVecEnv`` / ``SubprocVecEnv``) or ``"ale"``
            (Atari only: ale-py's C++ vector env). Default: ``"ale"`` for Atari, ``"dummy"`` for MiniGrid.
            For Atari, ``"dummy"``/``"subproc"`` select the SB3 ``AtariWrapper`` fallback.
        wrappers: a wrapper spec (:mod:`rimrl.envs.custom`: ``"pkg.mod:Class"``, a mapping to
            its kwargs, a class, or a list), applied to each env in order, innermost first
            (MiniGrid: over the rimrl dict observation). Strings are imported without an
            allow-list: the caller vouches for them. Not for Atari.
        **kwargs: MiniGrid and other gymnasium ids: ``monitor_dir`` (folder for SB3 monitor
            CSVs) and anything else is passed to ``gym.make`` (e.g. ``render_mode``). Atari: passed to
            :func:`~rimrl.envs.atari.make_atari_vec_env` (``"ale"``) or
            :func:`~rimrl.envs.atari.make_sb3_atari_vec_env` (``frame_stack``, ``clip_reward``,
            ``episodic_life``, ...).

    Observations: MiniGrid -> dict (``"grid"`` (7, 7, 3), ``"direction"`` (1,), and ``"target"`` (2,)
    for suite ids); Atari -> ``(frame_stack, 84, 84)`` uint8; other ids -> the env's own (after
    ``wrappers``). Envs are wrapped in SB3's ``Monitor`` so ``infos[i]["episode"]`` carries ``r``,
    ``l``, ``t``, and for MiniGrid ``success``.

    :raises ValueError: an unknown id ("did you mean"), bad arguments, or wrappers for Atari.
    """
    register_suites()
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an int >= 1, got {n_envs!r}")
    if vec_env is not None and vec_env not in _VEC_ENV_KINDS:
        raise ValueError(f"vec_env must be one of {_VEC_ENV_KINDS} or None, got {vec_env!r}")
    if is_minigrid(env_id):
        family: EnvFamily = "minigrid"
    elif is_atari_game(env_id):
        family = "atari"
    elif is_gym_id(env_id):
        family = "vector"  # vector or image: built the same way
    else:
        raise ValueError(unknown_id_message(env_id))

    if family == "atari":
        if wrappers:
            raise ValueError(f"env wrappers are not supported for Atari games ({env_id!r}): rimrl builds their "
                             "preprocessing itself")
        if vec_env in (None, "ale"):
            return make_atari_vec_env(env_id, n_envs=n_envs, seed=seed, **kwargs)
        vec_env_cls = DummyVecEnv if vec_env == "dummy" else SubprocVecEnv
        return make_sb3_atari_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls, **kwargs)

    if vec_env == "ale":
        raise ValueError(f"vec_env='ale' is only for Atari games, not {env_id!r}; use 'dummy' or 'subproc'")
    monitor_dir = kwargs.pop("monitor_dir", None)
    if monitor_dir is not None:
        os.makedirs(monitor_dir, exist_ok=True)
    resolve_wrappers(wrappers)  # fail here, once, rather than in every (sub)process
    thunks = [_thunk(env_id, family, rank, seed, monitor_dir, kwargs, wrappers) for rank in range(n_envs)]
    venv: VecEnv = SubprocVecEnv(thunks) if vec_env == "subproc" else DummyVecEnv(thunks)
    venv.seed(seed)  # consumed by the first reset: env i gets seed + i
    return venv
