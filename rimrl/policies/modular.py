"""A recurrent actor-critic policy for sb3-contrib's ``RecurrentPPO`` that holds a rimrl core.

``ModularRecurrentPolicy`` subclasses sb3-contrib's ``RecurrentActorCriticPolicy`` and changes
three things, so the unmodified ``RecurrentPPO``, its rollout buffers and ``predict(obs, state,
episode_start)`` keep working:

1. ``lstm_actor`` (and ``lstm_critic`` when the critic has its own core) is a rimrl core built by
   ``rimrl.cores.make_core`` instead of ``nn.LSTM``. Cores follow ``nn.LSTM``'s contract
   (``(T, B, F)`` in, ``(T, B, H)`` out, ``(h, c)`` each ``(num_layers, B, H)``), so
   sb3-contrib sizes its state buffers from ``lstm_actor.hidden_size`` as before.
2. ``_process_sequence`` hands every padded minibatch sequence to the core in *one* call with its
   ``episode_starts`` (the core resets rows inside its own loop). sb3-contrib's version falls
   back to a Python loop over time steps whenever any sequence starts an episode.
3. The default features extractor is a token encoder chosen from the observation space
   (:func:`rimrl.policies.encoders.encoder_spec`). What the core reads of it is ``core_input``:
   ``"vector"`` (LSTM, GRU and RIM by default: the tokens flattened into one vector, optionally
   projected, which RIM reads as one element beside its null element, as in the paper and its
   released RL code) or ``"tokens"`` (SRM by default, RIM optionally: the token set, with
   positions for SRM).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from rimrl.cores.recurrent import TORCH_RNN_CORES
from rimrl.cores.registry import BUILTIN_CORES, core_factory_parameters, core_spec
from rimrl.policies.encoders import AtariTokenEncoder, encoder_spec

__all__ = [
    "CORE_INPUTS",
    "CORE_NAMES",
    "DEFAULT_CORE_INPUT",
    "DEFAULT_CORE_KWARGS",
    "DEFAULT_HIDDEN_SIZE",
    "GRUPolicy",
    "LSTMPolicy",
    "ModularRecurrentPolicy",
    "ProjectedCore",
    "RIMPolicy",
    "SRMPolicy",
]

#: rimrl's own cores. Every name :func:`rimrl.cores.core_names` lists is accepted (see
#: :func:`rimrl.cores.register_core` for your own); this tuple is the built-in ones only.
CORE_NAMES = BUILTIN_CORES

#: What a core may read of the encoder's tokens (``core_input``), per built-in core; the first is
#: the default. ``"vector"``: the tokens flattened into one vector (``core_input_projection``
#: projects it); ``"tokens"``: the set of ``num_tokens`` tokens (RIM attends over it, SRM also
#: uses positions). The registry (:func:`rimrl.cores.core_spec`) holds these for every core.
CORE_INPUTS: dict[str, tuple[str, ...]] = {name: core_spec(name).inputs for name in BUILTIN_CORES}
DEFAULT_CORE_INPUT: dict[str, str] = {core: inputs[0] for core, inputs in CORE_INPUTS.items()}

#: ``lstm_hidden_size`` when none is given, per built-in core: 192 = 6 units x 32 for the modular
#: cores (the RIM paper's 6 units); the flat cores use 128 (see docs/policies.md).
DEFAULT_HIDDEN_SIZE: dict[str, int] = {name: core_spec(name).hidden_size for name in BUILTIN_CORES}

#: Policy-level defaults merged *under* the user's ``core_kwargs``, per built-in core (dropout is
#: off for RL, see :mod:`rimrl.cores`).
DEFAULT_CORE_KWARGS: dict[str, dict[str, Any]] = {
    name: dict(core_spec(name).default_kwargs) for name in BUILTIN_CORES
}

# Default sharing of the core between actor and critic, chosen by measurement (docs/policies.md):
# a shared core whose value gradient flows into it.
_DEFAULT_SHARED = True


#: ``core_input_activation``: what follows the ``Linear`` of :class:`ProjectedCore`.
PROJECTION_ACTIVATIONS = ("relu", "layernorm-relu", "tanh")


def _projection(input_size: int, projection_size: int, activation: str) -> nn.Sequential:
    """``Linear`` then ``activation`` (one of :data:`PROJECTION_ACTIVATIONS`)."""
    layers: list[nn.Module] = [nn.Linear(input_size, projection_size)]
    if activation == "layernorm-relu":
        layers.append(nn.LayerNorm(projection_size))
    layers.append(nn.Tanh() if activation == "tanh" else nn.ReLU())
    return nn.Sequential(*layers)


class ProjectedCore(nn.Module):
    """``Linear -> activation`` projection of the flattened tokens in front of a core that reads one
    vector (LSTM, GRU, RIM with ``core_input="vector"``).

    Exposes the wrapped core's contract with ``input_size`` = the features size, so sb3-contrib's
    reshapes (``features.reshape(n_seq, -1, lstm.input_size)``) stay correct.
    """

    def __init__(self, input_size: int, projection_size: int, core: nn.Module, activation: str = "relu") -> None:
        super().__init__()
        if activation not in PROJECTION_ACTIVATIONS:
            raise ValueError(f"core_input_activation must be one of {list(PROJECTION_ACTIVATIONS)}, got {activation!r}")
        self.proj = _projection(input_size, projection_size, activation)
        self.core = core
        self.input_size = input_size
        self.hidden_size = core.hidden_size
        self.num_layers = core.num_layers

    def forward(
        self,
        x: th.Tensor,
        state: tuple[th.Tensor, th.Tensor] | None = None,
        episode_starts: th.Tensor | None = None,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """``x`` ``(T, B, input_size)`` -> ``out`` ``(T, B, H)`` and ``(h, c)`` each ``(n_layers, B, H)``."""
        return self.core(self.proj(x), state, episode_starts=episode_starts)


class ModularRecurrentPolicy(RecurrentActorCriticPolicy):
    """sb3-contrib recurrent actor-critic policy with a rimrl core (``"lstm" | "gru" | "rim" | "srm"`` or
    a name given to :func:`rimrl.cores.register_core`).

    All of ``RecurrentActorCriticPolicy``'s arguments keep their meaning; the LSTM-named ones
    configure the core:

    :param lstm_hidden_size: the core's ``hidden_size`` (``None``: :data:`DEFAULT_HIDDEN_SIZE`).
        For RIM/SRM it must be divisible by the number of units/modules.
    :param n_lstm_layers: layers of the core; the state is ``(n_lstm_layers, B, H)`` as in
        sb3-contrib. LSTM/GRU: torch's ``num_layers``. Other cores: a
        :class:`rimrl.cores.stack.StackedCore`, layer l a full core reading layer l - 1's output.
    :param shared_lstm: one core for actor and critic. Unlike sb3-contrib (which detaches the
        critic's input so only the actor's gradient trains the LSTM), the value loss also trains
        the shared core unless ``shared_core_value_grad=False``. ``None`` (default) -> shared,
        the measured choice (docs/policies.md).
    :param enable_critic_lstm: a separate core of the same kind and kwargs for the critic.
        With both flags False the critic is feed-forward (sb3-contrib's ``nn.Linear``).
    :param lstm_kwargs: LSTM/GRU only: passed to ``nn.LSTM``/``nn.GRU`` (``dropout``, ``bias``,
        ...); for any other core a ``ValueError`` names ``core_kwargs``.
    :param core: core name, built-in or registered; ``None`` -> the class's ``default_core``.
        An unregistered name raises :class:`rimrl.cores.UnknownCoreError` (a ``ValueError``).
    :param core_kwargs: keyword arguments for ``rimrl.cores.make_core`` (e.g. ``num_units``,
        ``k``, ``cell``); ``num_tokens`` (RIM, SRM) and ``token_positions`` (SRM) come from the
        encoder and must not be given. Invalid values raise ``ValueError`` here.
    :param core_input: ``"vector"`` or ``"tokens"`` (see :data:`CORE_INPUTS`); ``None`` -> the
        core's default (:data:`DEFAULT_CORE_INPUT`: ``"tokens"`` for SRM, ``"vector"`` else).
    :param core_input_projection: with ``core_input="vector"`` only: project the flattened tokens
        to this size (``Linear`` + ``core_input_activation``) before the core; ``None`` feeds them
        directly.
    :param core_input_activation: what follows that ``Linear``: ``"relu"`` (default),
        ``"layernorm-relu"`` (a ``LayerNorm`` first, so its units cannot all die) or ``"tanh"``.
    :param shared_core_value_grad: with a shared core, let the value loss back-propagate into
        the core and encoder (default) rather than detaching as sb3-contrib does.

    Features extractor: ``None`` (default) picks a token encoder from the observation space
    (MiniGrid cells, Atari CNN cells, or one vector token); any ``BaseFeaturesExtractor`` works,
    a non-token one being read as a single token.
    """

    default_core: ClassVar[str] = "lstm"

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] | None = None,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        lstm_hidden_size: int | None = None,
        n_lstm_layers: int = 1,
        shared_lstm: bool | None = None,
        enable_critic_lstm: bool | None = None,
        lstm_kwargs: dict[str, Any] | None = None,
        core: str | None = None,
        core_kwargs: dict[str, Any] | None = None,
        core_input: str | None = None,
        core_input_projection: int | None = None,
        core_input_activation: str = "relu",
        shared_core_value_grad: bool = True,
    ) -> None:
        core = self.default_core if core is None else core
        spec = core_spec(core)  # UnknownCoreError (a ValueError) names register_core
        if isinstance(n_lstm_layers, bool) or not isinstance(n_lstm_layers, int) or n_lstm_layers < 1:
            raise ValueError(f"n_lstm_layers must be an integer >= 1, got {n_lstm_layers!r}")
        if lstm_kwargs and not (isinstance(spec.factory, type) and issubclass(spec.factory, TORCH_RNN_CORES)):
            raise ValueError(
                f"lstm_kwargs go to torch's nn.LSTM/nn.GRU and core {core!r} is neither: give its options in core_kwargs"
            )
        if lstm_kwargs and core_kwargs and set(lstm_kwargs) & set(core_kwargs):
            raise ValueError(f"{sorted(set(lstm_kwargs) & set(core_kwargs))[0]!r} is set in both lstm_kwargs and core_kwargs")
        core_input = spec.inputs[0] if core_input is None else core_input
        if core_input not in spec.inputs:
            raise ValueError(f"core_input for core {core!r} must be one of {list(spec.inputs)}, got {core_input!r}")
        if core_input_projection is not None:
            if core_input != "vector":
                raise ValueError(f"core_input_projection needs core_input='vector', got core_input={core_input!r}")
            if isinstance(core_input_projection, bool) or not isinstance(core_input_projection, int) or core_input_projection < 1:
                raise ValueError(f"core_input_projection must be a positive integer or None, got {core_input_projection!r}")
        if core_input_activation not in PROJECTION_ACTIVATIONS:
            raise ValueError(
                f"core_input_activation must be one of {list(PROJECTION_ACTIVATIONS)}, got {core_input_activation!r}"
            )
        for reserved in ("num_tokens", "token_positions"):
            if core_kwargs and reserved in core_kwargs:
                raise ValueError(f"core_kwargs must not set {reserved!r}: it comes from the features extractor")
        shared_lstm, enable_critic_lstm = self._resolve_critic(shared_lstm, enable_critic_lstm)

        hidden_size = spec.hidden_size if lstm_hidden_size is None else int(lstm_hidden_size)
        features_extractor_kwargs = dict(features_extractor_kwargs or {})
        if features_extractor_class is None:
            features_extractor_class, default_kwargs = encoder_spec(observation_space, normalize_images)
            features_extractor_kwargs = {**default_kwargs, **features_extractor_kwargs}
        if net_arch is None:
            # As sb3-contrib's CnnLstmPolicy: no hidden layers after a CNN + recurrent core.
            net_arch = [] if issubclass(features_extractor_class, AtariTokenEncoder) else dict(pi=[64, 64], vf=[64, 64])

        self.core_name = core
        self.core_kwargs = dict(core_kwargs or {})
        self.core_input = core_input
        self.core_input_projection = core_input_projection
        self.core_input_activation = core_input_activation
        self.shared_core_value_grad = shared_core_value_grad
        self.n_lstm_layers = n_lstm_layers
        # The parent builds throw-away nn.LSTMs (and an optimizer over them); they are replaced
        # below. Building them costs a few milliseconds, and keeping the parent's __init__
        # untouched is what keeps us compatible with sb3-contrib.
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=use_sde,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            squash_output=squash_output,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            lstm_hidden_size=hidden_size,
            n_lstm_layers=n_lstm_layers,  # sizes lstm_hidden_state_shape (n_layers, 1, H) for predict()
            shared_lstm=shared_lstm,
            enable_critic_lstm=enable_critic_lstm,
            lstm_kwargs=None,  # ours go to the core below, not to the throw-away nn.LSTM
        )
        self.lstm_kwargs = dict(lstm_kwargs or {})
        self.lstm_actor = self._make_core(self.pi_features_extractor, hidden_size)
        if self.lstm_critic is not None:
            self.lstm_critic = self._make_core(self.vf_features_extractor, hidden_size)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _resolve_critic(shared_lstm: bool | None, enable_critic_lstm: bool | None) -> tuple[bool, bool]:
        """Fill in the unset critic flag(s); reject the contradictory combination."""
        if shared_lstm is None and enable_critic_lstm is None:
            return _DEFAULT_SHARED, not _DEFAULT_SHARED
        if shared_lstm is None:
            return False, bool(enable_critic_lstm)
        if enable_critic_lstm is None:
            return bool(shared_lstm), not shared_lstm
        if shared_lstm and enable_critic_lstm:
            raise ValueError("shared_lstm and enable_critic_lstm are exclusive: choose a shared or a separate critic core")
        return bool(shared_lstm), bool(enable_critic_lstm)

    def _make_core(self, extractor: BaseFeaturesExtractor, hidden_size: int) -> nn.Module:
        """Build one core for the features of ``extractor``: ``(T, B, features_dim) -> (T, B, H)``."""
        spec = core_spec(self.core_name)
        # A vector input is one token of all the features (null slot aside, for RIM).
        num_tokens = int(getattr(extractor, "num_tokens", 1)) if self.core_input == "tokens" else 1
        features_dim = int(extractor.features_dim)
        kwargs = {**spec.default_kwargs, **self.core_kwargs, **self.lstm_kwargs}
        # The encoder's arguments go to cores that name them (RIM: num_tokens; SRM: both; a
        # registered factory: whichever its signature has).
        accepted = core_factory_parameters(spec.factory)
        if "num_tokens" in accepted:
            kwargs["num_tokens"] = num_tokens
        if "token_positions" in accepted:
            positions = getattr(extractor, "token_positions", None)
            kwargs["token_positions"] = th.zeros(num_tokens, 3) if positions is None else positions.detach().clone().cpu()
        if self.core_input_projection is not None:
            inner = spec.build_layers(int(self.core_input_projection), hidden_size, self.n_lstm_layers, **kwargs)
            return ProjectedCore(features_dim, int(self.core_input_projection), inner, self.core_input_activation)
        return spec.build_layers(features_dim, hidden_size, self.n_lstm_layers, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            lstm_hidden_size=self.lstm_output_dim,
            n_lstm_layers=self.n_lstm_layers,
            lstm_kwargs=self.lstm_kwargs,
            shared_lstm=self.shared_lstm,
            enable_critic_lstm=self.enable_critic_lstm,
            share_features_extractor=self.share_features_extractor,
            core=self.core_name,
            core_kwargs=self.core_kwargs,
            core_input=self.core_input,
            core_input_projection=self.core_input_projection,
            core_input_activation=self.core_input_activation,
            shared_core_value_grad=self.shared_core_value_grad,
        )
        return data

    # ------------------------------------------------------------------ sequence processing

    @staticmethod
    def _process_sequence(
        features: th.Tensor,
        lstm_states: tuple[th.Tensor, th.Tensor],
        episode_starts: th.Tensor,
        lstm: nn.Module,
    ) -> tuple[th.Tensor, tuple[th.Tensor, th.Tensor]]:
        """Run padded sequences through the core in one call.

        :param features: ``(n_seq * T, F)``: sb3-contrib's padded minibatch, sequence-major
            (``T = 1`` and ``n_seq = n_envs`` during rollouts).
        :param lstm_states: ``(h, c)`` each ``(n_layers, n_seq, H)``: the state before each sequence.
        :param episode_starts: ``(n_seq * T,)`` in {0, 1}.
        :param lstm: the core.
        :return: output ``(n_seq * T, H)`` in the same order as ``features``, and the final state.
        """
        n_seq = lstm_states[0].shape[1]
        # Exactly sb3-contrib's reshapes: (n_seq * T, F) -> (n_seq, T, F) -> (T, n_seq, F).
        features_sequence = features.reshape((n_seq, -1, lstm.input_size)).swapaxes(0, 1)
        starts = episode_starts.reshape((n_seq, -1)).swapaxes(0, 1)
        output, states = lstm(features_sequence, lstm_states, episode_starts=starts)
        # (T, n_seq, H) -> (n_seq, T, H) -> (n_seq * T, H)
        return th.flatten(output.transpose(0, 1), start_dim=0, end_dim=1), states

    def evaluate_actions(
        self, obs: th.Tensor, actions: th.Tensor, lstm_states: RNNStates, episode_starts: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Values ``(N, 1)``, log-probs ``(N,)`` and entropy ``(N,)`` for a padded minibatch.

        Same as sb3-contrib's except that a shared core passes the value gradient through
        (``shared_core_value_grad``), as in standard shared-trunk PPO.
        """
        if not (self.shared_lstm and self.shared_core_value_grad):
            return super().evaluate_actions(obs, actions, lstm_states, episode_starts)
        features = self.extract_features(obs)
        latent, _ = self._process_sequence(features, lstm_states.pi, episode_starts, self.lstm_actor)
        latent_pi = self.mlp_extractor.forward_actor(latent)
        latent_vf = self.mlp_extractor.forward_critic(latent)
        distribution = self._get_action_dist_from_latent(latent_pi)
        return self.value_net(latent_vf), distribution.log_prob(actions), distribution.entropy()

    @property
    def core(self) -> nn.Module:
        """The actor's core (unwrapped from a :class:`ProjectedCore`), e.g. for ``last_active_mask``."""
        return self.lstm_actor.core if isinstance(self.lstm_actor, ProjectedCore) else self.lstm_actor


class LSTMPolicy(ModularRecurrentPolicy):
    """:class:`ModularRecurrentPolicy` with ``core="lstm"``."""

    default_core = "lstm"


class GRUPolicy(ModularRecurrentPolicy):
    """:class:`ModularRecurrentPolicy` with ``core="gru"`` (its ``c`` state is all zeros)."""

    default_core = "gru"


class RIMPolicy(ModularRecurrentPolicy):
    """:class:`ModularRecurrentPolicy` with ``core="rim"`` (hidden 192 = 6 units x 32, k = 4)."""

    default_core = "rim"


class SRMPolicy(ModularRecurrentPolicy):
    """:class:`ModularRecurrentPolicy` with ``core="srm"`` (needs ``rimrl.cores`` to provide SRM)."""

    default_core = "srm"
