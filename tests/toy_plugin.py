"""A user's plugin module, as ``train.py --gym-packages toy_plugin`` imports it: it registers a
core of its own (``"toy"``: an Elman RNN written without rimrl's base class) and an env id
(``toy/CartPoleNoVel-v0``: CartPole with the velocities hidden, so memory matters).

Kept importable from ``tests/`` (pytest puts that folder on ``sys.path``); fresh processes in the
tests add it themselves.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from rimrl.cores import register_core

TOY_CORE = "toy"
TOY_ENV = "toy/CartPoleNoVel-v0"


class ToyRNN(nn.Module):
    """``h_t = tanh(W x_t + U h_{t-1})`` with the core contract (``c`` is always zeros).

    ``x`` ``(T, B, input_size)`` -> ``out`` ``(T, B, hidden_size)``; ``state`` ``(h, c)`` each
    ``(1, B, hidden_size)``; ``episode_starts`` ``(T, B)`` zeroes a row's state before step t.
    """

    num_layers = 1

    def __init__(self, input_size: int, hidden_size: int, scale: float = 1.0) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.scale = input_size, hidden_size, float(scale)
        self.w = nn.Linear(input_size, hidden_size)
        self.u = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        episode_starts: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x must have shape (T, B, {self.input_size}), got {tuple(x.shape)}")
        h = x.new_zeros(x.shape[1], self.hidden_size) if state is None else state[0][0]
        outs = []
        for t in range(x.shape[0]):
            if episode_starts is not None:
                h = h * (1.0 - episode_starts[t].to(x.dtype)).unsqueeze(-1)
            h = torch.tanh(self.scale * self.w(x[t]) + self.u(h))
            outs.append(h)
        h_out = h.unsqueeze(0)
        return torch.stack(outs), (h_out, torch.zeros_like(h_out))


def make_toy(input_size: int, hidden_size: int, scale: float = 1.0) -> ToyRNN:
    """The registered factory: a plain function (keyword ``scale`` settable as ``core_kwargs``)."""
    return ToyRNN(input_size, hidden_size, scale=scale)


class NoVelocity(gym.ObservationWrapper):
    """CartPole's observation without the two velocities: ``(x, theta)``."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        high = np.array([4.8, 0.42], dtype=np.float32)
        self.observation_space = spaces.Box(-high, high, dtype=np.float32)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return observation[[0, 2]].astype(np.float32)


def make_cartpole_novel(**kwargs: object) -> gym.Env:
    return NoVelocity(gym.make("CartPole-v1", **kwargs))


register_core(TOY_CORE, make_toy, hidden_size=16)
if TOY_ENV not in gym.registry:
    gym.register(TOY_ENV, entry_point=make_cartpole_novel)
