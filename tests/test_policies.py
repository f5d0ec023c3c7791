"""rimrl.policies: encoders, the one-call sequence path, training, and save/load across processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import toy_plugin
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.env_util import make_vec_env

from rimrl.cores import CORES
from rimrl.policies import (
    POLICIES,
    AtariTokenEncoder,
    LSTMPolicy,
    MiniGridTokenEncoder,
    ModularRecurrentPolicy,
    ProjectedCore,
    RIMPolicy,
    VectorTokenEncoder,
    make_encoder,
    policy_for_core,
)

REPO = Path(__file__).resolve().parents[1]
AVAILABLE_CORES = [name for name in ("lstm", "gru", "rim", "srm") if name in CORES]
#: The built-in cores and a registered one of the user's (tests/toy_plugin.py).
WITH_TOY = [*AVAILABLE_CORES, toy_plugin.TOY_CORE]
# Small, fast PPO settings for smoke training.
FAST = dict(n_steps=64, batch_size=128, n_epochs=2, learning_rate=3e-4)



def suite_env(n_envs: int = 4, seed: int = 0):
    from rimrl.envs import make_env

    return make_env("rimrl/Pickup-Train-v0", n_envs=n_envs, seed=seed)


def imgobs_env(n_envs: int = 4, seed: int = 0):
    import minigrid  # noqa: F401
    from minigrid.wrappers import ImgObsWrapper

    return make_vec_env("MiniGrid-Fetch-8x8-N3-v0", n_envs=n_envs, seed=seed, wrapper_class=ImgObsWrapper)


def small_policy_kwargs(core: str) -> dict:
    extra = policy_for_core(core)[1]  # {"core": name} for a registered core
    if core in ("rim", "srm"):
        return dict(lstm_hidden_size=48, **extra)
    return dict(lstm_hidden_size=32, **extra)


# ------------------------------------------------------------------------------------------ encoders


def test_minigrid_encoder_dict_space_tokens_and_positions():
    from rimrl.envs import grid_dict_space

    space = grid_dict_space(include_target=True)
    encoder = make_encoder(space, token_dim=8)
    assert isinstance(encoder, MiniGridTokenEncoder)
    assert (encoder.num_tokens, encoder.token_dim, encoder.features_dim) == (51, 8, 51 * 8)
    pos = encoder.token_positions
    assert pos.shape == (51, 3)
    # Agent cell (x=3, y=6): straight ahead offset 0, nearest row; the far-left-ahead corner (0, 0).
    assert pos[3 * 7 + 6].tolist() == [0.0, -1.0, 0.0]
    assert pos[0].tolist() == [-1.0, 1.0, 0.0]
    # Every token has a distinct position; extras are off the cell plane.
    assert len({tuple(p) for p in pos.tolist()}) == 51
    assert pos[49, 2] != 0 and pos[50, 2] != 0 and pos[49, 2] != pos[50, 2]
    assert "token_positions" in dict(encoder.named_buffers())

    obs = {k: th.as_tensor(np.stack([s.sample() for _ in range(5)])).float() for k, s in space.spaces.items()}
    features = encoder(obs)
    assert features.shape == (5, 51 * 8)
    # Token-major flattening: token i occupies features[:, i*D:(i+1)*D].
    assert th.equal(features.view(5, 51, 8), encoder.tokens(obs))
    # Without a target entry: 49 cells + direction.
    assert make_encoder(grid_dict_space(include_target=False)).num_tokens == 50


def test_minigrid_encoder_recovers_indices_from_normalized_image():
    """ImgObsWrapper's 0..255 box, transposed to (3, 7, 7) and divided by 255 by SB3, gives the
    same tokens as the raw (7, 7, 3) indices."""
    img_first = spaces.Box(0, 255, (3, 7, 7), np.uint8)
    img_last = spaces.Box(0, 255, (7, 7, 3), np.uint8)
    normalized = make_encoder(img_first)
    raw = MiniGridTokenEncoder(img_last, normalized_images=False)
    raw.load_state_dict(normalized.state_dict())
    grid = th.stack([th.randint(0, 11, (4, 7, 7)), th.randint(0, 6, (4, 7, 7)), th.randint(0, 3, (4, 7, 7))], -1)
    grid = grid.float()
    out_norm = normalized(grid.permute(0, 3, 1, 2) / 255.0)
    assert th.equal(out_norm, raw(grid))
    # Indices are what matter: a different object index changes exactly that cell's token.
    bumped = grid.clone()
    bumped[0, 2, 5, 0] = (bumped[0, 2, 5, 0] + 1) % 11
    diff = (raw.tokens(bumped) - raw.tokens(grid)).abs().sum(-1)
    assert diff[0].nonzero().flatten().tolist() == [2 * 7 + 5] and diff[1:].sum() == 0


def test_atari_and_vector_encoders():
    atari = make_encoder(spaces.Box(0, 255, (4, 84, 84), np.uint8))
    assert isinstance(atari, AtariTokenEncoder)
    assert (atari.num_tokens, atari.token_dim, atari.token_positions.shape) == (49, 64, (49, 3))
    assert atari(th.rand(2, 4, 84, 84)).shape == (2, 49 * 64)
    vector = make_encoder(spaces.Box(-1, 1, (4,), np.float32))
    assert isinstance(vector, VectorTokenEncoder)
    assert (vector.num_tokens, vector.token_dim) == (1, 4)
    x = th.randn(3, 4)
    assert th.equal(vector(x), x)  # the raw vector is the token


# ----------------------------------------------------------------------------------- construction


def test_policy_classes_and_defaults():
    env = suite_env(n_envs=2)
    for core in AVAILABLE_CORES:
        model = RecurrentPPO(POLICIES[core], env, n_steps=8, batch_size=16)
        policy = model.policy
        assert isinstance(policy, ModularRecurrentPolicy) and policy.core_name == core
        assert isinstance(policy.features_extractor, MiniGridTokenEncoder)
        assert type(policy.lstm_actor) is CORES[core]
        assert policy.lstm_actor.num_layers == 1
        # Default: one shared core (value gradient flows into it), no separate critic core.
        assert policy.shared_lstm and policy.lstm_critic is None
        assert model._last_lstm_states.pi[0].shape == (1, 2, policy.lstm_actor.hidden_size)
    if "rim" in AVAILABLE_CORES:
        # RIM reads one vector (the flattened tokens) beside its null slot by default ...
        rim = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=16).policy.lstm_actor
        assert rim.num_tokens == 1 and rim.input_size == 51 * 32 and rim.hidden_size % rim.num_units == 0
        # ... or, projected, a Linear + ReLU of them; or the token set, as an option.
        projected = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=16, policy_kwargs=dict(core_input_projection=40))
        assert isinstance(projected.policy.lstm_actor, ProjectedCore)
        assert projected.policy.core.num_tokens == 1 and projected.policy.core.input_size == 40
        tokens = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=16, policy_kwargs=dict(core_input="tokens"))
        assert tokens.policy.core.num_tokens == 51 and tokens.policy.core.token_dim == 32
        for model in (projected, tokens):
            model.learn(16)
            assert model._last_lstm_states.pi[0].shape == (1, 2, 192)
    if "srm" in AVAILABLE_CORES:
        srm = RecurrentPPO(POLICIES["srm"], env, n_steps=8, batch_size=16).policy
        assert srm.core_input == "tokens" and srm.core.num_tokens == 51
    env.close()


def test_separate_critic_and_projection():
    env = suite_env(n_envs=2)
    model = RecurrentPPO(
        LSTMPolicy, env, n_steps=8, batch_size=16, policy_kwargs=dict(enable_critic_lstm=True, core_input_projection=24)
    )
    policy = model.policy
    assert not policy.shared_lstm and policy.lstm_critic is not None
    assert isinstance(policy.lstm_actor, ProjectedCore) and policy.lstm_actor.input_size == policy.features_dim
    assert policy.core.input_size == 24
    model.learn(16)
    # sb3-contrib's feed-forward critic (both flags off) still works.
    ff = RecurrentPPO(LSTMPolicy, env, n_steps=8, batch_size=16, policy_kwargs=dict(shared_lstm=False, enable_critic_lstm=False))
    assert ff.policy.lstm_critic is None and ff.policy.critic is not None
    ff.learn(16)
    env.close()


@pytest.mark.parametrize(
    "policy_kwargs, match",
    [
        (dict(core_kwargs=dict(num_units=6, k=7)), "k"),
        (dict(lstm_hidden_size=100), "hidden_size"),  # not divisible by 6 units
        (dict(core_kwargs=dict(cell="rnn")), "cell"),
        (dict(core_kwargs=dict(num_tokens=3)), "num_tokens"),
        (dict(core_input="tokens", core_input_projection=32), "core_input_projection"),
        (dict(core_input_projection=0), "core_input_projection"),
        (dict(core_input_projection=8, core_input_activation="gelu"), "core_input_activation"),
        (dict(core_input="grid"), "core_input"),
        (dict(core="srm", core_input="vector"), "core_input"),
        (dict(core="lstm", core_input="tokens"), "core_input"),
        (dict(n_lstm_layers=0), "n_lstm_layers"),
        (dict(lstm_kwargs=dict(dropout=0.5)), "core_kwargs"),
        (dict(shared_lstm=True, enable_critic_lstm=True), "exclusive"),
        (dict(core="transformer"), "core"),
    ],
)
def test_invalid_hyperparameters_raise_value_error(policy_kwargs, match):
    env = make_vec_env("CartPole-v1", n_envs=1)
    with pytest.raises(ValueError, match=match):
        RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=8, policy_kwargs=policy_kwargs)


def test_projection_activations():
    env = make_vec_env("CartPole-v1", n_envs=1)
    for activation, layers in (("relu", ["Linear", "ReLU"]), ("layernorm-relu", ["Linear", "LayerNorm", "ReLU"]),
                               ("tanh", ["Linear", "Tanh"])):
        kwargs = dict(core_input_projection=8, core_input_activation=activation)
        policy = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=8, policy_kwargs=kwargs).policy
        assert [type(m).__name__ for m in policy.lstm_actor.proj] == layers
    env.close()


# ------------------------------------------------------------------------------ one-call sequences


def _random_sequences(n_seq: int, seq_len: int, features: int, hidden: int, seed: int = 0):
    gen = th.Generator().manual_seed(seed)
    x = th.randn(n_seq * seq_len, features, generator=gen)
    starts = (th.rand(n_seq * seq_len, generator=gen) < 0.15).float()  # starts anywhere, t > 0 included
    states = (th.randn(1, n_seq, hidden, generator=gen), th.randn(1, n_seq, hidden, generator=gen))
    return x, starts, states


@pytest.mark.parametrize("core", WITH_TOY)
def test_one_call_sequence_matches_per_step_loop(core):
    """Our _process_sequence (one core call) == sb3-contrib's per-step loop, resets mid-sequence included."""
    env = suite_env(n_envs=1)
    policy = RecurrentPPO(policy_for_core(core)[0], env, n_steps=8, batch_size=8, policy_kwargs=small_policy_kwargs(core)).policy
    policy.set_training_mode(False)
    core_module = policy.lstm_actor
    x, starts, states = _random_sequences(5, 17, core_module.input_size, core_module.hidden_size)
    with th.no_grad():
        ours, ours_state = policy._process_sequence(x, states, starts, core_module)
        theirs, theirs_state = RecurrentActorCriticPolicy._process_sequence(x, states, starts, core_module)
    assert ours.shape == (5 * 17, core_module.hidden_size)
    th.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    th.testing.assert_close(ours_state[0], theirs_state[0], rtol=0, atol=1e-5)
    env.close()


@pytest.mark.parametrize("critic", ["shared", "separate"])
def test_lstm_one_call_matches_sb3_contrib_on_rollout_minibatch(critic):
    """On a real rollout-buffer minibatch, log-probs and values of the one-call path equal
    sb3-contrib's own per-step path (max abs diff < 1e-5)."""
    env = make_vec_env("CartPole-v1", n_envs=4, seed=0)  # short random episodes: many resets
    kwargs = dict(enable_critic_lstm=True) if critic == "separate" else {}
    model = RecurrentPPO(LSTMPolicy, env, n_steps=64, batch_size=128, n_epochs=1, seed=0, policy_kwargs=kwargs)
    model.learn(256)
    policy = model.policy
    policy.set_training_mode(False)
    batches = list(model.rollout_buffer.get(128))
    assert any(float(b.episode_starts.sum()) > 0 for b in batches), "minibatches must contain episode starts"
    for batch in batches:
        actions = batch.actions.long().flatten()
        with th.no_grad():
            ours = policy.evaluate_actions(batch.observations, actions, batch.lstm_states, batch.episode_starts)
            with mock.patch.object(policy, "_process_sequence", RecurrentActorCriticPolicy._process_sequence):
                theirs = policy.evaluate_actions(batch.observations, actions, batch.lstm_states, batch.episode_starts)
        mask = batch.mask > 0
        for a, b in zip(ours[:2], theirs[:2], strict=True):
            assert (a.flatten()[mask] - b.flatten()[mask]).abs().max().item() < 1e-5
    env.close()


def test_shared_core_value_gradient_reaches_core():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    for grad, expect in ((True, True), (False, False)):
        model = RecurrentPPO(LSTMPolicy, env, n_steps=16, batch_size=32, policy_kwargs=dict(shared_core_value_grad=grad))
        model.learn(32)
        batch = next(model.rollout_buffer.get(32))
        policy = model.policy
        policy.zero_grad()
        values, _, _ = policy.evaluate_actions(
            batch.observations, batch.actions.long().flatten(), batch.lstm_states, batch.episode_starts
        )
        values.sum().backward()
        core_grad = sum(p.grad.abs().sum().item() for p in policy.lstm_actor.parameters() if p.grad is not None)
        assert (core_grad > 0) is expect
    env.close()


# ------------------------------------------------------------------------------------------ training


@pytest.mark.parametrize("core", WITH_TOY)
@pytest.mark.parametrize("env_kind", ["minigrid", "cartpole"])
def test_each_core_trains(core, env_kind):
    env = suite_env(n_envs=4) if env_kind == "minigrid" else make_vec_env("CartPole-v1", n_envs=4, seed=0)
    model = RecurrentPPO(policy_for_core(core)[0], env, seed=0, policy_kwargs=small_policy_kwargs(core), **FAST)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(1024)
    assert model.num_timesteps >= 1024
    after = list(model.policy.parameters())
    assert all(th.isfinite(p).all() for p in after)
    assert any(not th.equal(a, b) for a, b in zip(before, after, strict=True))
    env.close()


def test_imgobs_env_trains():
    env = imgobs_env(n_envs=4)
    model = RecurrentPPO(LSTMPolicy, env, seed=0, **FAST)
    assert model.observation_space.shape == (3, 7, 7)  # VecTransposeImage
    assert isinstance(model.policy.features_extractor, MiniGridTokenEncoder)
    model.learn(512)
    env.close()


# -------------------------------------------------------------------------------- save / fresh load

_LOADER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch as th
    from sb3_contrib import RecurrentPPO  # rimrl is NOT imported here: unpickling must find it

    th.set_num_threads(1)
    data = dict(np.load(sys.argv[2]))
    obs_keys = [k for k in data if k.startswith("obs.")]
    out = {}
    for path in sys.argv[3:]:
        model = RecurrentPPO.load(path, device="cpu")
        state, actions, hs, cs = None, [], [], []
        for t in range(len(data["starts"])):
            obs = {k[4:]: data[k][t] for k in obs_keys}
            action, state = model.predict(obs, state=state, episode_start=data["starts"][t], deterministic=True)
            actions.append(action); hs.append(state[0]); cs.append(state[1])
        name = path.rsplit("/", 1)[-1]
        out[name + ".actions"], out[name + ".h"], out[name + ".c"] = np.stack(actions), np.stack(hs), np.stack(cs)
    np.savez(sys.argv[1], **out)
    """
)


def _predict_sequence(model: RecurrentPPO, data: dict[str, np.ndarray]):
    obs_keys = [k for k in data if k.startswith("obs.")]
    state, actions, hs, cs = None, [], [], []
    for t in range(len(data["starts"])):
        obs = {k[4:]: data[k][t] for k in obs_keys}
        action, state = model.predict(obs, state=state, episode_start=data["starts"][t], deterministic=True)
        actions.append(action)
        hs.append(state[0])
        cs.append(state[1])
    return np.stack(actions), np.stack(hs), np.stack(cs)


def test_save_then_load_in_fresh_process_gives_identical_predictions(tmp_path):
    env = suite_env(n_envs=2, seed=3)
    # A fixed observation sequence with episode starts, from random play.
    obs = env.reset()
    rng = np.random.default_rng(0)
    record: dict[str, list] = {f"obs.{k}": [] for k in obs}
    record["starts"] = []
    starts = np.ones(2, dtype=bool)
    for _ in range(40):
        for k in obs:
            record[f"obs.{k}"].append(obs[k])
        record["starts"].append(starts)
        obs, _, dones, _ = env.step(rng.integers(0, env.action_space.n, size=2))
        starts = dones
    data = {k: np.stack(v) for k, v in record.items()}
    assert data["starts"][1:].any(), "the sequence should contain episode resets"
    np.savez(tmp_path / "seq.npz", **data)

    # Every core, and RIM with each observation interface (vector, projected vector, token set).
    variants = {core: (core, {}) for core in AVAILABLE_CORES}
    if "rim" in AVAILABLE_CORES:
        variants["rim-proj"] = ("rim", dict(core_input_projection=24))
        variants["rim-tokens"] = ("rim", dict(core_input="tokens"))
        # The token-set options measured in docs/policies.md: heads with a strong positional term,
        # per-position competition; and a learned initial state.
        variants["rim-tokens-heads"] = ("rim", dict(core_input="tokens", core_kwargs=dict(num_input_heads=4),
                                                    features_extractor_kwargs=dict(position_std=1.0)))
        variants["rim-tokens-position-k"] = ("rim", dict(core_input="tokens", core_kwargs=dict(position_k=2)))
        variants["rim-learned-init"] = ("rim", dict(core_kwargs=dict(learn_initial_state=True)))
    if "srm" in AVAILABLE_CORES:
        variants["srm-k-learned-init"] = ("srm", dict(core_kwargs=dict(k=4, learn_initial_state=True)))
    models, paths = {}, []
    for name, (core, extra) in variants.items():
        kwargs = {**small_policy_kwargs(core), **extra}
        model = RecurrentPPO(POLICIES[core], env, seed=0, policy_kwargs=kwargs, **FAST)
        model.learn(128)
        path = str(tmp_path / name)
        model.save(path)
        models[name], paths = model, [*paths, path + ".zip"]
    script = tmp_path / "load.py"
    script.write_text(_LOADER)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.npz"), str(tmp_path / "seq.npz"), *paths],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = np.load(tmp_path / "out.npz")
    for core, model in models.items():
        actions, h, c = _predict_sequence(model, data)
        name = f"{core}.zip"
        np.testing.assert_array_equal(loaded[f"{name}.actions"], actions)
        np.testing.assert_array_equal(loaded[f"{name}.h"], h)
        np.testing.assert_array_equal(loaded[f"{name}.c"], c)
        # The fresh process rebuilt the same policy class, core and encoder buffers.
        reloaded = RecurrentPPO.load(paths[list(models).index(core)], device="cpu")
        assert type(reloaded.policy) is type(model.policy)
        assert reloaded.policy.core_input == model.policy.core_input
        assert type(reloaded.policy.lstm_actor) is type(model.policy.lstm_actor)
        th.testing.assert_close(
            reloaded.policy.features_extractor.token_positions, model.policy.features_extractor.token_positions
        )
    env.close()


def test_gym_env_spaces_unchanged_by_policy():
    """The policy must not need anything from the env beyond its spaces (works on a plain gym env)."""
    env = gym.make("CartPole-v1")
    model = RecurrentPPO(LSTMPolicy, env, n_steps=16, batch_size=16)
    action, state = model.predict(env.reset(seed=0)[0], episode_start=np.ones(1, dtype=bool))
    assert env.action_space.contains(int(action)) and state[0].shape == (1, 1, model.policy.lstm_output_dim)


class _FakeAtari(gym.Env):
    """A (4, 84, 84) uint8 frame stack with random pixels; 4 actions; 20-step episodes."""

    observation_space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = spaces.Discrete(4)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self.t += 1
        return self.observation_space.sample(), float(action == 0), self.t >= 20, False, {}


def test_atari_shaped_env_uses_cnn_tokens():
    env = make_vec_env(_FakeAtari, n_envs=2, seed=0)
    model = RecurrentPPO(RIMPolicy, env, n_steps=16, batch_size=32, n_epochs=1)
    policy = model.policy
    assert isinstance(policy.features_extractor, AtariTokenEncoder)
    assert policy.lstm_actor.num_tokens == 1 and policy.net_arch == []  # default: one vector token
    model.learn(32)
    tokens = RecurrentPPO(RIMPolicy, env, n_steps=16, batch_size=32, n_epochs=1,
                          policy_kwargs=dict(core_input="tokens")).policy
    assert tokens.lstm_actor.num_tokens == 49  # the 7x7 CNN grid as a set
    env.close()


def test_features_extractor_override():
    from stable_baselines3.common.torch_layers import FlattenExtractor

    env = make_vec_env("CartPole-v1", n_envs=1)
    policy = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=8,
                          policy_kwargs=dict(features_extractor_class=FlattenExtractor)).policy
    assert type(policy.features_extractor) is FlattenExtractor and policy.lstm_actor.num_tokens == 1
    policy = RecurrentPPO(LSTMPolicy, env, n_steps=8, batch_size=8,
                          policy_kwargs=dict(features_extractor_kwargs=dict(token_dim=8))).policy
    assert isinstance(policy.features_extractor, VectorTokenEncoder) and policy.features_extractor.token_dim == 8


# ------------------------------------------------------------------------- what RIM reads at step 1


def _moved_target_pair(env) -> tuple[dict, dict]:
    """Two observations that differ only in the target's cell (the red ball moved to an empty cell)."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    ball = (OBJECT_TO_IDX["ball"], COLOR_TO_IDX["red"])
    for _ in range(50):
        obs, _, _, _ = env.step(np.zeros(env.num_envs, dtype=np.int64))  # turn left until the ball is in view
        grid = obs["grid"][0]
        at_ball = np.argwhere((grid[..., 0] == ball[0]) & (grid[..., 1] == ball[1]))
        empty = np.argwhere(grid[..., 0] == OBJECT_TO_IDX["empty"])
        if len(at_ball) and len(empty):
            break
    else:
        raise AssertionError("the target never came into view")
    first = {k: v[:1].copy() for k, v in obs.items()}
    second = {k: v.copy() for k, v in first.items()}
    (bx, by), (ex, ey) = at_ball[0], empty[0]
    second["grid"][0, bx, by], second["grid"][0, ex, ey] = first["grid"][0, ex, ey], first["grid"][0, bx, by]
    return first, second


def _first_step_change(policy_kwargs: dict) -> float:
    """Relative change of a fresh RIM's first-step output when only the target moves."""
    env = suite_env(n_envs=1, seed=5)
    env.reset()
    model = RecurrentPPO(RIMPolicy, env, n_steps=8, batch_size=8, seed=0, policy_kwargs=policy_kwargs)
    outputs = []
    for obs in _moved_target_pair(env):
        obs_tensor, _ = model.policy.obs_to_tensor(obs)
        with th.no_grad():
            features = model.policy.extract_features(obs_tensor, model.policy.pi_features_extractor)
            out, _ = model.policy.lstm_actor(features.unsqueeze(0))
        outputs.append(out[0, 0])
    env.close()
    return float((outputs[0] - outputs[1]).norm() / outputs[0].norm())


def test_default_rim_reads_the_target_from_the_first_step():
    """The default (vector) interface makes a fresh RIM's first read depend on where the target is;
    over the 51-token set, one head's attention starts uniform and dilutes the target to 1/52."""
    vector = _first_step_change(dict(core_input_projection=128))
    token_set = _first_step_change(dict(core_input="tokens"))
    assert vector > 0.05, vector
    assert vector > 5 * token_set, (vector, token_set)
