"""Recurrent-aware evaluation rollouts: exactly N episodes per env variant, fairly counted and seeded.

Fairness: with a vector env, the first N episodes to *finish* over-represent short episodes (in
the pick-up task, failing by picking a distractor is faster than succeeding). So every env gets a
fixed quota (``N // n_envs``, the first ``N % n_envs`` envs one more) and only its first quota
episodes are recorded; an env that has met its quota keeps stepping (a ``VecEnv`` steps all envs)
but is ignored. Each env carries its own recurrent state and ``episode_start`` flag, exactly as
``RecurrentPPO`` collects rollouts.

Repeatability: the env is seeded (env ``i`` gets ``seed + i`` at the first reset, later resets
continue that env's RNG) and torch's RNG is seeded before the loop, so stochastic actions repeat
too: the same model, seed and ``n_envs`` give the same episodes, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch as th
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.vec_env import VecEnv

__all__ = [
    "EpisodeRecord",
    "EpisodeTrace",
    "active_mask",
    "episode_quotas",
    "run_episodes",
    "trace_episode",
]

#: Hard cap on vector-env steps per rollout: a guard against an env that never reports a finished
#: episode (e.g. a VecEnv without episode statistics), not a limit any real evaluation reaches.
MAX_ROLLOUT_STEPS = 5_000_000


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode.

    Attributes:
        episode: index within the evaluation, ``0..N-1``: env 0's episodes first, then env 1's, ...
            (so it does not depend on which env happened to finish first).
        env_index: which of the vector env's envs played it.
        env_episode: its rank among that env's recorded episodes.
        episode_return: undiscounted return (Atari: the raw, unclipped game score over all lives).
        length: steps in the episode.
        success: the env's ``info["success"]`` at the end (None where the env has no success notion).
    """

    episode: int
    env_index: int
    env_episode: int
    episode_return: float
    length: int
    success: bool | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict."""
        return asdict(self)


def episode_quotas(n_episodes: int, n_envs: int) -> list[int]:
    """Episodes per env: ``n_episodes // n_envs`` each, the first ``n_episodes % n_envs`` one more."""
    if n_episodes < 1 or n_envs < 1:
        raise ValueError(f"need n_episodes >= 1 and n_envs >= 1, got {n_episodes} and {n_envs}")
    base, extra = divmod(n_episodes, n_envs)
    return [base + (1 if i < extra else 0) for i in range(n_envs)]


def _success_of(info: dict[str, Any]) -> bool | None:
    if "success" in info:
        return bool(info["success"])
    episode = info.get("episode") or {}
    return bool(episode["success"]) if "success" in episode else None


def run_episodes(
    model: RecurrentPPO,
    env: VecEnv,
    n_episodes: int,
    deterministic: bool = True,
    seed: int | None = None,
    expect_episode_info: bool = True,
    on_episode: Callable[[EpisodeRecord], None] | None = None,
) -> list[EpisodeRecord]:
    """Play exactly ``n_episodes`` episodes of ``model`` on ``env``; return them ordered by ``episode``.

    Args:
        model: a (loaded) ``RecurrentPPO``.
        env: the vector env to play on (its spaces must match the model's).
        n_episodes: episodes to record, split over the envs by :func:`episode_quotas`.
        deterministic: greedy actions (True) or sampled ones.
        seed: re-seed ``env`` and torch before the first reset (None: use them as they are).
        expect_episode_info: an episode ends where a done comes with SB3 Monitor's
            ``info["episode"]`` (the statistics are read from it). A done without it is not an
            episode end: this is how a life loss with ``episodic_life`` looks in Atari. With
            ``False`` every done ends an episode and returns are summed from the rewards.
        on_episode: called with each recorded episode as it finishes (e.g. to advance a progress
            bar; this function prints nothing itself).
    """
    quotas = episode_quotas(n_episodes, env.num_envs)
    offsets = np.concatenate([[0], np.cumsum(quotas)[:-1]])
    if seed is not None:
        th.manual_seed(seed)
        env.seed(seed)
    obs = env.reset()
    state: tuple[np.ndarray, ...] | None = None
    episode_start = np.ones(env.num_envs, dtype=bool)
    returns = np.zeros(env.num_envs, dtype=np.float64)
    lengths = np.zeros(env.num_envs, dtype=np.int64)
    done_count = [0] * env.num_envs
    records: list[EpisodeRecord] = []

    for _ in range(MAX_ROLLOUT_STEPS):
        if all(done_count[i] >= quotas[i] for i in range(env.num_envs)):
            break
        actions, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic)
        obs, rewards, dones, infos = env.step(actions)
        returns += rewards
        lengths += 1
        for i in np.flatnonzero(dones):
            info = infos[i]
            monitor = info.get("episode")
            if expect_episode_info and monitor is None:
                continue  # a life lost, not a game over: the state carries on (episode_start below)
            if done_count[i] < quotas[i]:
                record = EpisodeRecord(
                    episode=int(offsets[i]) + done_count[i],
                    env_index=int(i),
                    env_episode=done_count[i],
                    episode_return=float(monitor["r"]) if monitor else float(returns[i]),
                    length=int(monitor["l"]) if monitor else int(lengths[i]),
                    success=_success_of(info),
                )
                records.append(record)
                if on_episode is not None:
                    on_episode(record)
            done_count[i] += 1
            returns[i], lengths[i] = 0.0, 0
        # Only episode ends reset the recurrent state: a life loss is not one in a full-game evaluation.
        episode_start = np.array(
            [bool(d) and (not expect_episode_info or "episode" in info) for d, info in zip(dones, infos, strict=True)]
        )
    else:
        raise RuntimeError(
            f"no {n_episodes} finished episodes after {MAX_ROLLOUT_STEPS} steps: does the env report info['episode']?"
        )
    return sorted(records, key=lambda record: record.episode)


# ----------------------------------------------------------------------------------------------
# Single-episode traces (frames and active units) for GIFs and activation maps
# ----------------------------------------------------------------------------------------------


@dataclass
class EpisodeTrace:
    """One episode played step by step, with what was asked to be recorded.

    Attributes:
        frames: RGB frames ``(H, W, 3)`` uint8: the first observation, then one after each step
            (the terminal one included). Empty unless rendering was asked for.
        active: ``(T, units)`` bool: which units/modules of a RIM/SRM core were active at each
            step; None for cores without ``last_active_mask`` (LSTM, GRU).
        actions, rewards: the action taken and the reward received at each step (GIF captions).
        episode_return, length, success: as in :class:`EpisodeRecord`.
        truncated_by_trace: the trace stopped at ``max_steps`` before the episode ended.
    """

    frames: list[np.ndarray] = field(default_factory=list)
    active: np.ndarray | None = None
    actions: list[Any] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    episode_return: float = 0.0
    length: int = 0
    success: bool | None = None
    truncated_by_trace: bool = False


def active_mask(model: RecurrentPPO) -> np.ndarray | None:
    """The actor core's last ``(T, B, units)`` active mask as numpy bool, or None if it has none."""
    policy = model.policy
    core = getattr(policy, "core", None) or getattr(policy, "lstm_actor", None)
    mask = getattr(core, "last_active_mask", None)
    return None if mask is None else mask.detach().cpu().numpy().astype(bool)


def trace_episode(
    model: RecurrentPPO,
    reset: Callable[[], Any],
    step: Callable[[Any], tuple[Any, float, bool, dict[str, Any]]],
    render: Callable[[], np.ndarray] | None = None,
    deterministic: bool = True,
    seed: int | None = None,
    max_steps: int = 10_000,
) -> EpisodeTrace:
    """Play one episode on a single (non-vector) env through ``reset``/``step`` callables.

    Args:
        model: the agent.
        reset: ``() -> obs``: starts the episode.
        step: ``action -> (obs, reward, done, info)``; ``done`` ends the episode.
        render: ``() -> RGB frame`` of the current state, or None for no frames.
        deterministic, seed: as in :func:`run_episodes` (``seed`` seeds torch; the env is seeded
            by ``reset``).
        max_steps: stop the trace there (a GIF of a 30-minute Atari game is of no use).
    """
    if seed is not None:
        th.manual_seed(seed)
    trace = EpisodeTrace()
    obs = reset()
    if render is not None:
        trace.frames.append(np.asarray(render(), dtype=np.uint8))
    state = None
    episode_start = np.ones(1, dtype=bool)
    masks: list[np.ndarray] = []
    for _ in range(max_steps):
        action, state = model.predict(obs, state=state, episode_start=episode_start, deterministic=deterministic)
        mask = active_mask(model)
        if mask is not None:
            masks.append(mask[-1, 0])
        obs, reward, done, info = step(action)
        episode_start = np.zeros(1, dtype=bool)
        trace.episode_return += float(reward)
        trace.actions.append(np.asarray(action).ravel().copy())
        trace.rewards.append(float(reward))
        trace.length += 1
        if render is not None:
            trace.frames.append(np.asarray(render(), dtype=np.uint8))
        if done:
            trace.success = _success_of(info)
            break
    else:
        trace.truncated_by_trace = True
    trace.active = np.stack(masks) if masks else None
    return trace

