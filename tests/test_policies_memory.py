"""A memory task a feed-forward policy cannot solve: recall a cue bit shown only at step 0.

``CueMemoryEnv``: at step 0 the observation shows a cue (one of two bits); then ``delay`` blank
steps; then a query flag. The action taken at the query step earns reward 1 if it equals the cue,
and ends the episode; actions before it do nothing. Without memory the best policy is a coin flip
(50%); the recurrent policies must reach (near) 100%.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from rimrl.policies import LSTMPolicy, RIMPolicy


class CueMemoryEnv(gym.Env):
    """Observation ``[cue == 0, cue == 1, query]`` (float); actions ``Discrete(2)``."""

    def __init__(self, delay: int = 4) -> None:
        self.delay = delay
        self.observation_space = spaces.Box(0.0, 1.0, (3,), np.float32)
        self.action_space = spaces.Discrete(2)
        self.t, self.cue = 0, 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(3, np.float32)
        if self.t == 0:
            obs[self.cue] = 1.0
        if self.t == self.delay + 1:
            obs[2] = 1.0
        return obs

    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(2))
        return self._obs(), {}

    def step(self, action):
        if self.t == self.delay + 1:
            return self._obs(), float(int(action) == self.cue), True, False, {}
        self.t += 1
        return self._obs(), 0.0, False, False, {}


def success_rate(model, delay: int, episodes: int = 200, recurrent: bool = True) -> float:
    """Deterministic success rate over fixed evaluation seeds."""
    env = CueMemoryEnv(delay)
    wins = 0.0
    for episode in range(episodes):
        obs, _ = env.reset(seed=10_000 + episode)
        state, start, done = None, np.ones(1, dtype=bool), False
        while not done:
            if recurrent:
                action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
            else:
                action, _ = model.predict(obs, deterministic=True)
            start = np.zeros(1, dtype=bool)
            obs, reward, done, _, _ = env.step(action)
        wins += reward
    return wins / episodes


# Tuned for reliability and speed: 8192 steps solved the delay-4 task on every seed tried (0-6)
# for both cores; 4096 did not.
PPO_KWARGS = dict(n_steps=32, batch_size=128, n_epochs=4, learning_rate=3e-3, gamma=0.9, ent_coef=0.01)
POLICY_KWARGS = {"lstm": (LSTMPolicy, dict(lstm_hidden_size=32, net_arch=[])),
                 "rim": (RIMPolicy, dict(lstm_hidden_size=48, net_arch=[]))}



def train_recurrent(core: str, delay: int, steps: int, seed: int = 0) -> RecurrentPPO:
    policy, policy_kwargs = POLICY_KWARGS[core]
    env = make_vec_env(lambda: CueMemoryEnv(delay), n_envs=8, seed=seed)
    model = RecurrentPPO(policy, env, seed=seed, policy_kwargs=policy_kwargs, **PPO_KWARGS)
    return model.learn(steps)


@pytest.mark.parametrize("core", ["lstm", "rim"])
def test_recurrent_policies_solve_memory_task(core):
    model = train_recurrent(core, delay=4, steps=8192)
    assert success_rate(model, delay=4) >= 0.95


def test_feed_forward_baseline_cannot_solve_memory_task():
    env = make_vec_env(lambda: CueMemoryEnv(4), n_envs=8, seed=0)
    model = PPO("MlpPolicy", env, seed=0, **PPO_KWARGS).learn(8192)
    assert 0.35 <= success_rate(model, delay=4, recurrent=False) <= 0.65


@pytest.mark.slow
@pytest.mark.parametrize("core", ["lstm", "rim"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recurrent_policies_solve_long_memory_task(core, seed):
    """A 12-step delay, three seeds."""
    model = train_recurrent(core, delay=12, steps=60_000, seed=seed)
    assert success_rate(model, delay=12) >= 0.95
