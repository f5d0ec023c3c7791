"""One entry point, :func:`make_env`, from an env id to an SB3 ``VecEnv``.

Accepted ids:

- the distractor-suite ids (``rimrl/Pickup-Train-v0``, ... see :data:`DISTRACTOR_SUITES`);
- any registered MiniGrid/BabyAI id (``MiniGrid-Fetch-8x8-N3-v0``, ``BabyAI-GoToLocal-v0``, ...),
  given the rimrl dict observation by :class:`~rimrl.envs.wrappers.GridDictObsWrapper`;
- Atari: ``ALE/<Game>-v5``, ``<Game>NoFrameskip-v4`` or a bare game name (``Breakout``, ``breakout``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid/BabyAI ids)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from rimrl.envs.atari import is_atari_game, make_atari_vec_env, make_sb3_atari_vec_env
from rimrl.envs.variants import VARIANT_SPECS, register_suites
from rimrl.envs.wrappers import GridDictObsWrapper, SuccessInfoWrapper, has_grid_dict_obs

EnvFamily = Literal["minigrid", "atari"]
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
    return str(entry).startswith(("minigrid", "rimrl.envs"))


def is_atari(env_id: str) -> bool:
    """Whether ``env_id`` names an Atari game (``ALE/Breakout-v5``, ``BreakoutNoFrameskip-v4``, ``Breakout``)."""
    return not is_minigrid(env_id) and is_atari_game(env_id)


def _unknown_id_message(env_id: str) -> str:
    suite_ids = ", ".join(VARIANT_SPECS)
    return (
        f"Unknown env id {env_id!r}. rimrl.envs.make_env accepts the distractor-suite ids ({suite_ids}), "
        f"any registered MiniGrid/BabyAI id (e.g. 'MiniGrid-Fetch-8x8-N3-v0'), or an Atari game given "
        f"as a bare name ('Breakout', 'breakout', 'MsPacman') or an id ('ALE/Breakout-v5', "
        f"'BreakoutNoFrameskip-v4')."
    )


def env_family(env_id: str) -> EnvFamily:
    """``"minigrid"`` or ``"atari"``; ``ValueError`` for ids :func:`make_env` does not know."""
    if is_minigrid(env_id):
        return "minigrid"
    if is_atari_game(env_id):
        return "atari"
    raise ValueError(_unknown_id_message(env_id))


def default_deterministic(env_id: str) -> bool:
    """The default evaluation action mode of ``env_id``: greedy (True) or sampled (False).

    The one rule for every evaluation (train.py's periodic evaluation, the ``best_model.zip`` it
    picks, evaluate.py), as rl-zoo3 has it: MiniGrid/BabyAI (the rimrl suites included) and Atari
    are evaluated with *sampled* actions, anything else greedily. A greedy policy in these envs
    can lock into a loop: turning in place forever in a grid world, never pressing FIRE in
    Breakout. Ids :func:`env_family` does not know count as "anything else" rather than failing
    here: the caller reports unknown ids where it builds the env.
    """
    try:
        family = env_family(env_id)
    except ValueError:
        return True
    return family not in ("minigrid", "atari")


def make_minigrid_env(env_id: str, **env_kwargs: Any) -> gym.Env:
    """One MiniGrid/BabyAI/suite env with the rimrl dict observation and ``info["success"]``."""
    env = gym.make(env_id, **env_kwargs)
    if not has_grid_dict_obs(env):
        env = GridDictObsWrapper(env)
    return SuccessInfoWrapper(env)


def _minigrid_thunk(
    env_id: str, rank: int, seed: int | None, monitor_dir: str | None, env_kwargs: dict[str, Any]
) -> Callable[[], gym.Env]:
    def build() -> gym.Env:
        env = make_minigrid_env(env_id, **env_kwargs)
        if seed is not None:
            env.action_space.seed(seed + rank)
        filename = os.path.join(monitor_dir, str(rank)) if monitor_dir is not None else None
        return Monitor(env, filename=filename, info_keywords=("success",))

    return build


def make_env(
    env_id: str,
    n_envs: int = 1,
    seed: int | None = 0,
    vec_env: VecEnvKind | None = None,
    **kwargs: Any,
) -> VecEnv:
    """Build ``n_envs`` copies of ``env_id`` as an SB3 ``VecEnv``; env ``i`` is seeded ``seed + i``.

    Args:
        env_id: a suite id, a MiniGrid/BabyAI id or an Atari game (see the module docstring).
        n_envs: number of parallel envs.
        seed: base seed (None: random).
        vec_env: ``"dummy"`` / ``"subproc"`` (SB3 ``DummyVecEnv`` / ``SubprocVecEnv``) or ``"ale"``
            (Atari only: ale-py's C++ vector env). Default: ``"ale"`` for Atari, ``"dummy"`` for MiniGrid.
            For Atari, ``"dummy"``/``"subproc"`` select the SB3 ``AtariWrapper`` fallback.
        **kwargs: MiniGrid: ``monitor_dir`` (folder for SB3 monitor CSVs) and anything else is passed
            to ``gym.make`` (e.g. ``render_mode``). Atari: passed to
            :func:`~rimrl.envs.atari.make_atari_vec_env` (``"ale"``) or
            :func:`~rimrl.envs.atari.make_sb3_atari_vec_env` (``frame_stack``, ``clip_reward``,
            ``episodic_life``, ...).

    Observations: MiniGrid -> dict (``"grid"`` (7, 7, 3), ``"direction"`` (1,), and ``"target"`` (2,)
    for suite ids); Atari -> ``(frame_stack, 84, 84)`` uint8. MiniGrid envs are wrapped in SB3's
    ``Monitor(info_keywords=("success",))`` so ``infos[i]["episode"]`` carries ``r``, ``l``, ``t``
    and ``success``.
    """
    register_suites()
    if isinstance(n_envs, bool) or not isinstance(n_envs, int) or n_envs < 1:
        raise ValueError(f"n_envs must be an int >= 1, got {n_envs!r}")
    if vec_env is not None and vec_env not in _VEC_ENV_KINDS:
        raise ValueError(f"vec_env must be one of {_VEC_ENV_KINDS} or None, got {vec_env!r}")
    family = env_family(env_id)

    if family == "atari":
        if vec_env in (None, "ale"):
            return make_atari_vec_env(env_id, n_envs=n_envs, seed=seed, **kwargs)
        vec_env_cls = DummyVecEnv if vec_env == "dummy" else SubprocVecEnv
        return make_sb3_atari_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls, **kwargs)

    if vec_env == "ale":
        raise ValueError(f"vec_env='ale' is only for Atari games, not {env_id!r}; use 'dummy' or 'subproc'")
    monitor_dir = kwargs.pop("monitor_dir", None)
    if monitor_dir is not None:
        os.makedirs(monitor_dir, exist_ok=True)
    thunks = [_minigrid_thunk(env_id, rank, seed, monitor_dir, kwargs) for rank in range(n_envs)]
    venv: VecEnv = SubprocVecEnv(thunks) if vec_env == "subproc" else DummyVecEnv(thunks)
    venv.seed(seed)  # consumed by the first reset: env i gets seed + i
    return venv
