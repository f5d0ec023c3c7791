"""Observation encoders that emit a *set of tokens with positions*.

Every encoder here is an SB3 ``BaseFeaturesExtractor``; it returns features of shape
``(B, num_tokens * token_dim)`` (tokens flattened token-major, i.e. token 0's ``token_dim`` values
first), so SB3's flat ``features`` plumbing and sb3-contrib's buffers work unchanged. On top of
that each encoder exposes:

- ``num_tokens``: N, the number of tokens per observation;
- ``token_dim``: D, the size of one token;
- ``token_positions``: an ``(N, 3)`` float buffer. Columns are ``(x, y, kind)``: ``x, y`` are
  spatial coordinates scaled to ``[-1, 1]`` and ``kind`` is 0 for spatial tokens and a distinct
  non-zero value for non-spatial extras (direction, target), so every token has a distinct
  position. SRM maps these onto its sphere; RIM ignores them (it attends over the set, and each
  token already carries a learned positional term in its value); LSTM/GRU read the tokens
  flattened.

``make_encoder(observation_space)`` picks the encoder for a space; the policies call it when no
``features_extractor_class`` is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = [
    "TokenEncoder",
    "MiniGridTokenEncoder",
    "AtariTokenEncoder",
    "VectorTokenEncoder",
    "make_encoder",
    "encoder_spec",
    "is_minigrid_space",
]

# MiniGrid's index tables (minigrid.core.constants): 11 object types, 6 colours, 3 door states.
# Used when the grid arrives as a 0..255 "image" Box (ImgObsWrapper), whose bounds say nothing
# about the real index ranges. Kept literal so the encoder does not import minigrid.
_MINIGRID_NUM_OBJECTS = 11
_MINIGRID_NUM_COLORS = 6
_MINIGRID_NUM_STATES = 3
_MINIGRID_NUM_DIRECTIONS = 4
# minigrid.core.constants.OBJECT_TO_IDX, for naming the cells an encoder may mark absent.
_MINIGRID_OBJECTS = ("unseen", "empty", "wall", "floor", "door", "key", "ball", "box", "goal", "lava", "agent")
# Largest egocentric view we treat as a MiniGrid grid (agent_view_size is odd, default 7).
_MAX_MINIGRID_VIEW = 31

# `kind` column of token_positions for the non-spatial extra tokens.
_KIND_DIRECTION = 1.0
_KIND_TARGET = -1.0


class TokenEncoder(BaseFeaturesExtractor):
    """Base class: a features extractor whose output is ``num_tokens`` tokens of ``token_dim``.

    Subclasses implement :meth:`tokens` returning ``(B, N, D)``; :meth:`forward` flattens it to
    ``(B, N * D)``.
    """

    token_positions: th.Tensor

    def __init__(self, observation_space: spaces.Space, num_tokens: int, token_dim: int, positions: th.Tensor):
        super().__init__(observation_space, features_dim=num_tokens * token_dim)
        if positions.shape[0] != num_tokens:
            raise ValueError(f"positions has {positions.shape[0]} rows, expected num_tokens={num_tokens}")
        self.num_tokens = int(num_tokens)
        self.token_dim = int(token_dim)
        # A buffer, so it follows .to(device) and is part of the state dict (saved with the model).
        self.register_buffer("token_positions", positions.float().clone())

    def tokens(self, observations: Any) -> th.Tensor:  # pragma: no cover - abstract
        """Return tokens ``(B, num_tokens, token_dim)`` for preprocessed observations."""
        raise NotImplementedError

    def forward(self, observations: Any) -> th.Tensor:
        """Return ``(B, num_tokens * token_dim)``, token-major."""
        return self.tokens(observations).flatten(start_dim=1)


# ----------------------------------------------------------------------------------------------
# MiniGrid
# ----------------------------------------------------------------------------------------------


def _is_minigrid_grid_box(space: spaces.Space) -> bool:
    """A uint8 ``(V, V, 3)`` or ``(3, V, V)`` box with a small odd V: a MiniGrid egocentric view."""
    if not isinstance(space, spaces.Box) or len(space.shape) != 3:
        return False
    shape = space.shape
    if shape[2] == 3 and shape[0] == shape[1]:
        view = shape[0]
    elif shape[0] == 3 and shape[1] == shape[2]:
        view = shape[1]
    else:
        return False
    return view % 2 == 1 and view <= _MAX_MINIGRID_VIEW


def _grid_key(space: spaces.Dict) -> str | None:
    for key in ("grid", "image"):
        if key in space.spaces and _is_minigrid_grid_box(space.spaces[key]):
            return key
    return None


def is_minigrid_space(observation_space: spaces.Space) -> bool:
    """True for rimrl's MiniGrid Dict (``grid`` [+ ``direction``, ``target``]) or an ImgObsWrapper box."""
    if isinstance(observation_space, spaces.Dict):
        return _grid_key(observation_space) is not None
    return _is_minigrid_grid_box(observation_space)


def minigrid_positions(view: int, extras: list[float]) -> th.Tensor:
    """Positions for ``view * view`` cells (index ``x * view + y``) followed by extra tokens.

    MiniGrid's egocentric view puts the agent at ``(x, y) = (view // 2, view - 1)`` (bottom centre,
    facing "up"), so a cell's offset from the agent is ``dx = x - view // 2`` (right is positive)
    and ``dy = view - 1 - y`` (distance ahead). Both are scaled to ``[-1, 1]``.

    :return: ``(view * view + len(extras), 3)`` float tensor of ``(dx, dy, kind)``.
    """
    half = view // 2
    xs, ys = np.meshgrid(np.arange(view), np.arange(view), indexing="ij")
    dx = (xs - half) / max(half, 1)
    dy = 2.0 * (view - 1 - ys) / max(view - 1, 1) - 1.0
    cells = np.stack([dx.ravel(), dy.ravel(), np.zeros(view * view)], axis=1)
    extra = np.array([[0.0, 0.0, kind] for kind in extras]).reshape(len(extras), 3)
    return th.as_tensor(np.concatenate([cells, extra], axis=0), dtype=th.float32)


class MiniGridTokenEncoder(TokenEncoder):
    """MiniGrid egocentric view -> one token per cell, plus direction and target tokens.

    A cell token is ``E_obj[object] + E_col[colour] + E_state[state] + P[cell]`` (three learned
    index embeddings and a learned per-cell positional term). The direction token is
    ``E_dir[heading] + P[dir]``; the target token (present when the observation has ``"target"``)
    is ``E_obj[target_obj] + E_col[target_colour] + P[target]``, reusing the cell tables so "this
    cell holds the target" is a simple match, while its own learned term ``P[target]`` tells it
    apart from a cell.

    All tables are stacked in one matrix with per-table row offsets and the three lookups are
    done as one multi-hot matmul: the encoder runs on every padded minibatch, and on CPU a
    matmul's backward was measured ~4x faster than the index-sorting backward of
    ``nn.Embedding`` (and one call instead of three at every rollout step).

    Accepted observation spaces:

    - rimrl's Dict: ``"grid"`` uint8 ``(V, V, 3)`` with ``high`` = per-channel max index,
      ``"direction"`` ``(1,)`` in 0..3, optional ``"target"`` ``(2,)``. SB3 hands these over as
      floats holding the integer indices.
    - MiniGrid's ``ImgObsWrapper`` box ``(V, V, 3)`` 0..255, which SB3 treats as an image: it is
      transposed to ``(3, V, V)`` by ``VecTransposeImage`` and divided by 255 when
      ``normalize_images=True``; the indices are recovered as ``round(x * 255)``.

    Tokens: ``V * V`` cells (index ``x * V + y``), then direction (if present), then target
    (if present). Out-of-range indices are clamped to the table, so a test variant with an unseen
    index cannot crash the lookup.

    :param observation_space: one of the spaces above.
    :param token_dim: D, the embedding size of each token.
    :param normalized_images: for the 0..255 box only: whether SB3 divided the input by 255
        (the policy sets it from its ``normalize_images``).
    :param absent_objects: MiniGrid object names (e.g. ``["unseen", "empty"]``) whose cells are
        *absent*: their tokens are exactly zero (no content, no positional term), which SRM with
        ``zero_tokens_absent`` reads as "nothing observed there" (S2RMs' sparse inputs). The
        direction and target tokens are always present. Default: none (every cell is a token).
    :param position_std: initial standard deviation of the learned per-cell positional term
        ``P`` (the content sum has unit variance). 0.1 keeps tokens mostly content; a larger value
        (e.g. 1.0) makes cells of equal content distinguishable by the attention from the start.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        token_dim: int = 32,
        normalized_images: bool = True,
        position_std: float = 0.1,
        absent_objects: tuple[str, ...] | list[str] = (),
    ):
        unknown = [name for name in absent_objects if name not in _MINIGRID_OBJECTS]
        if isinstance(absent_objects, str) or unknown:
            raise ValueError(f"absent_objects must be a list of MiniGrid object names from {list(_MINIGRID_OBJECTS)}, "
                             f"got {absent_objects!r}")
        if not (isinstance(position_std, (int, float)) and not isinstance(position_std, bool) and position_std >= 0):
            raise ValueError(f"position_std must be a number >= 0, got {position_std!r}")
        self._dict_obs = isinstance(observation_space, spaces.Dict)
        if self._dict_obs:
            grid_key = _grid_key(observation_space)  # type: ignore[arg-type]
            if grid_key is None:
                raise ValueError("MiniGridTokenEncoder needs a Dict with a (V, V, 3) 'grid' entry")
            grid_space = observation_space[grid_key]
            self._has_direction = "direction" in observation_space.spaces
            self._has_target = "target" in observation_space.spaces
        else:
            if not _is_minigrid_grid_box(observation_space):
                raise ValueError(f"MiniGridTokenEncoder: unsupported observation space {observation_space}")
            grid_key, grid_space = None, observation_space
            self._has_direction = self._has_target = False
        assert isinstance(grid_space, spaces.Box)
        self._grid_key = grid_key
        self._channels_first = grid_space.shape[0] == 3 and grid_space.shape[2] != 3
        self.view = grid_space.shape[1] if self._channels_first else grid_space.shape[0]
        # An image box (0..255) comes divided by 255 when SB3 normalises images.
        self._scale = 255.0 if (is_image_space(grid_space) and normalized_images) else 1.0
        self.normalized_images = normalized_images

        extras = ([_KIND_DIRECTION] if self._has_direction else []) + ([_KIND_TARGET] if self._has_target else [])
        num_cells = self.view * self.view
        super().__init__(observation_space, num_cells + len(extras), token_dim, minigrid_positions(self.view, extras))

        n_obj, n_col, n_state = self._table_sizes(grid_space)
        if self._has_target:
            # The target's indices share the cell tables: make them large enough for both.
            t_high = np.asarray(observation_space["target"].high).ravel()
            if t_high.max() < 255:
                n_obj, n_col = max(n_obj, int(t_high[0]) + 1), max(n_col, int(t_high[1]) + 1)
        self.table_sizes = {"object": n_obj, "colour": n_col, "state": n_state, "direction": _MINIGRID_NUM_DIRECTIONS}
        obj_off, col_off, state_off = 0, n_obj, n_obj + n_col
        dir_off = state_off + n_state
        pad = dir_off + _MINIGRID_NUM_DIRECTIONS
        # Per token and per slot of its bag of 3 indices: the table offset and the largest index
        # (for clamping). Unused slots point at the padding row (offset = pad, max = 0).
        offsets = [[obj_off, col_off, state_off]] * num_cells
        maxima = [[n_obj - 1, n_col - 1, n_state - 1]] * num_cells
        if self._has_direction:
            offsets, maxima = offsets + [[dir_off, pad, pad]], maxima + [[_MINIGRID_NUM_DIRECTIONS - 1, 0, 0]]
        if self._has_target:
            offsets, maxima = offsets + [[obj_off, col_off, pad]], maxima + [[n_obj - 1, n_col - 1, 0]]
        self.register_buffer("_offsets", th.tensor(offsets, dtype=th.long), persistent=False)
        self.register_buffer("_maxima", th.tensor(maxima, dtype=th.long), persistent=False)
        # All tables stacked in one matrix; row `pad` is a constant slot for the unused entries of
        # the direction and target bags (a learned bias for those tokens, absorbed by their
        # positional terms).
        table = th.randn(pad + 1, token_dim) / np.sqrt(3.0)  # unit-variance sum of three rows at init
        table[pad] = 0.0
        self.table = nn.Parameter(table)
        self.token_pos = nn.Parameter(th.randn(self.num_tokens, token_dim) * float(position_std))
        self.absent_objects = tuple(absent_objects)
        absent = th.zeros(_MINIGRID_NUM_OBJECTS + 1, dtype=th.bool)  # by object index (+1: clamped overflow)
        absent[[_MINIGRID_OBJECTS.index(name) for name in self.absent_objects]] = True
        self.register_buffer("_absent_object", absent, persistent=False)

    @staticmethod
    def _table_sizes(grid_space: spaces.Box) -> tuple[int, int, int]:
        if is_image_space(grid_space):
            return _MINIGRID_NUM_OBJECTS, _MINIGRID_NUM_COLORS, _MINIGRID_NUM_STATES
        channel_axis = 0 if (grid_space.shape[0] == 3 and grid_space.shape[2] != 3) else 2
        high = np.asarray(grid_space.high)
        per_channel = high.max(axis=tuple(a for a in range(3) if a != channel_axis))
        return tuple(int(h) + 1 for h in per_channel)  # type: ignore[return-value]

    def raw_indices(self, observations: Any) -> th.Tensor:
        """``(B, N, 3)`` float indices per token: (object, colour, state) for cells,
        (heading, 0, 0) for direction and (object, colour, 0) for the target."""
        grid = observations[self._grid_key] if self._dict_obs else observations
        if self._scale != 1.0:
            grid = grid * self._scale
        if self._channels_first:  # (B, 3, V, V) -> (B, V, V, 3)
            grid = grid.permute(0, 2, 3, 1)
        batch = grid.shape[0]
        parts = [grid.reshape(batch, self.view * self.view, 3)]  # cell index x * V + y
        if self._has_direction:
            direction = observations["direction"].reshape(batch, -1)
            if direction.shape[1] > 1:  # a Discrete(4) direction arrives one-hot
                direction = direction.argmax(dim=1, keepdim=True).to(grid.dtype)
            parts.append(nn.functional.pad(direction[:, :1], (0, 2)).unsqueeze(1))
        if self._has_target:
            parts.append(nn.functional.pad(observations["target"].reshape(batch, 2), (0, 1)).unsqueeze(1))
        return th.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def tokens(self, observations: Any) -> th.Tensor:
        """``(B, N, D)`` tokens from preprocessed observations (see class docstring)."""
        raw = self.raw_indices(observations)
        index = th.minimum(raw.round().long().clamp_(min=0), self._maxima) + self._offsets  # (B, N, 3)
        # Sum of 3 embedding rows per token == multi-hot (B, N, rows) @ table (rows, D).
        hot = raw.new_zeros(*index.shape[:2], self.table.shape[0]).scatter_(2, index, 1.0)
        tokens = hot @ self.table + self.token_pos
        if self.absent_objects:
            cells = self.view * self.view  # the extras after the cells are always present
            objects = raw[:, :cells, 0].round().long().clamp(0, _MINIGRID_NUM_OBJECTS)
            present = ~self._absent_object[objects]  # (B, cells)
            tokens = th.cat([tokens[:, :cells] * present.unsqueeze(-1).to(tokens.dtype), tokens[:, cells:]], dim=1)
        return tokens


# ----------------------------------------------------------------------------------------------
# Atari / generic images
# ----------------------------------------------------------------------------------------------


class AtariTokenEncoder(TokenEncoder):
    """Nature-CNN trunk; each cell of the final feature map is a token.

    For 84x84 input the trunk (8x8/4, 4x4/2, 3x3/1 convolutions, as in Mnih et al. 2015) yields a
    ``64 x 7 x 7`` map: 49 tokens of 64 channels, plus a learned per-cell positional term. Without
    the trunk's final dense layer the flattened tokens are exactly NatureCNN's 3136-d flatten.

    With ``features_dim=N`` it is NatureCNN exactly as SB3 builds it for ``CnnLstmPolicy``
    (``features_extractor_kwargs=dict(features_dim=N)``): the flattened map goes through
    ``Linear(rows * cols * token_dim, N) + ReLU`` and the core reads that one vector of size N
    (one token, at the origin, for cores that read tokens).

    :param observation_space: a channel-first image box ``(C, H, W)`` (SB3 transposes
        channel-last images before the policy sees them).
    :param token_dim: channels of the last conv layer (= token size); 64 as in NatureCNN.
    :param features_dim: ``None`` (default): one token per cell; an integer: NatureCNN's dense
        layer to a vector of this size.
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        token_dim: int = 64,
        normalized_images: bool = True,
        features_dim: int | None = None,
    ):
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 3:
            raise ValueError(f"AtariTokenEncoder needs a (C, H, W) image box, got {observation_space}")
        if features_dim is not None and (isinstance(features_dim, bool) or not isinstance(features_dim, int) or features_dim < 1):
            raise ValueError(f"features_dim must be a positive integer or None, got {features_dim!r}")
        n_channels = observation_space.shape[0]
        cnn = nn.Sequential(
            nn.Conv2d(n_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, token_dim, kernel_size=3, stride=1),
            nn.ReLU(),
        )
        with th.no_grad():
            fmap = cnn(th.zeros(1, *observation_space.shape))
        rows, cols = fmap.shape[2], fmap.shape[3]
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")  # token index r * cols + c
        pos = np.stack(
            [
                2.0 * c.ravel() / max(cols - 1, 1) - 1.0,  # x: left -> right
                1.0 - 2.0 * r.ravel() / max(rows - 1, 1),  # y: bottom -> top
                np.zeros(rows * cols),
            ],
            axis=1,
        )
        if features_dim is None:
            super().__init__(observation_space, rows * cols, token_dim, th.as_tensor(pos, dtype=th.float32))
            self.cell_pos = nn.Parameter(th.zeros(rows * cols, token_dim))
            self.head = None
        else:
            # NatureCNN's dense layer sees every cell at a fixed place: no positional term needed.
            super().__init__(observation_space, 1, features_dim, th.zeros(1, 3))
            self.cell_pos = None
            self.head = nn.Sequential(nn.Linear(rows * cols * token_dim, features_dim), nn.ReLU())
        self.fmap_shape = (rows, cols)
        self.normalized_images = normalized_images
        self.cnn = cnn

    def tokens(self, observations: th.Tensor) -> th.Tensor:
        """``(B, rows * cols, token_dim)`` from ``(B, C, H, W)`` images (``(B, 1, features_dim)`` with a head)."""
        fmap = self.cnn(observations)  # (B, D, rows, cols)
        if self.head is not None:
            return self.head(fmap.flatten(start_dim=1)).unsqueeze(1)
        return fmap.flatten(start_dim=2).transpose(1, 2) + self.cell_pos


# ----------------------------------------------------------------------------------------------
# Vectors (and anything else): one token
# ----------------------------------------------------------------------------------------------


class VectorTokenEncoder(TokenEncoder):
    """The whole (flattened) observation as one token.

    With ``token_dim=None`` the token is the raw flattened observation (like SB3's
    ``FlattenExtractor``); otherwise a ``Linear + Tanh`` maps it to ``token_dim``. Dict spaces are
    flattened key by key (sorted keys, as SB3 orders them).
    """

    def __init__(self, observation_space: spaces.Space, token_dim: int | None = None, normalized_images: bool = True):
        if isinstance(observation_space, spaces.Dict):
            in_dim = sum(get_flattened_obs_dim(s) for s in observation_space.spaces.values())
        else:
            in_dim = get_flattened_obs_dim(observation_space)
        out_dim = in_dim if token_dim is None else int(token_dim)
        super().__init__(observation_space, 1, out_dim, th.zeros(1, 3))
        self.normalized_images = normalized_images
        self.proj = None if token_dim is None else nn.Sequential(nn.Linear(in_dim, out_dim), nn.Tanh())

    def tokens(self, observations: Any) -> th.Tensor:
        """``(B, 1, token_dim)``."""
        if isinstance(observations, dict):
            flat = th.cat([observations[k].flatten(start_dim=1) for k in sorted(observations)], dim=1)
        else:
            flat = observations.flatten(start_dim=1)
        if self.proj is not None:
            flat = self.proj(flat)
        return flat.unsqueeze(1)


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------


def encoder_spec(observation_space: spaces.Space, normalize_images: bool = True) -> tuple[type[TokenEncoder], dict]:
    """The encoder class and kwargs the policies use by default for ``observation_space``.

    MiniGrid views (rimrl's Dict or an ImgObsWrapper box) -> :class:`MiniGridTokenEncoder`;
    other images (e.g. Atari ``(C, 84, 84)``) -> :class:`AtariTokenEncoder`; everything else ->
    :class:`VectorTokenEncoder`.
    """
    if is_minigrid_space(observation_space):
        return MiniGridTokenEncoder, {"normalized_images": normalize_images}
    if isinstance(observation_space, spaces.Box) and is_image_space(observation_space):
        return AtariTokenEncoder, {"normalized_images": normalize_images}
    return VectorTokenEncoder, {}


def make_encoder(observation_space: spaces.Space, normalize_images: bool = True, **kwargs: Any) -> TokenEncoder:
    """Build the default encoder for a space (see :func:`encoder_spec`); ``kwargs`` override its defaults.

    Note: SB3 transposes channel-last image spaces before building the policy, so pass the space
    the policy sees (``model.observation_space``), not the raw env's.
    """
    cls, default_kwargs = encoder_spec(observation_space, normalize_images)
    return cls(observation_space, **{**default_kwargs, **kwargs})

