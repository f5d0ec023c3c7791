"""Every ``RecurrentActorCriticPolicy`` argument with every core (issue 14, item 1).

For each core and argument: learn a few steps, save (zip and weights-only copy), load both in a
fresh process and predict the same actions and states; plus the state shape ``(n_layers, B, H)``,
gradients reaching every layer of a stack, and the errors for arguments a core cannot take.
Models are tiny (a few dozen env steps), one subprocess per test loads all of its models.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.env_util import make_vec_env

from rimrl.agents.safe import save_weights
from rimrl.policies import POLICIES

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CORES = tuple(POLICIES)
TINY = dict(n_steps=16, batch_size=16, n_epochs=1)
# Small widths that every core accepts (RIM: 6 units, SRM: its default modules).
HIDDEN = {"lstm": 16, "gru": 16, "rim": 24, "srm": 24}
STEPS = 6

# Loads each saved model twice (weights-only copy and zip) and replays the observations.
_LOADER = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
from sb3_contrib import RecurrentPPO
from rimrl.agents.safe import load_safe
out = {}
for base in json.loads(sys.argv[1]):
    saved = np.load(base + ".obs.npz")
    if "obs" in saved:
        obs = list(saved["obs"])
    else:  # a Dict space: one array per key
        keys = [k[4:] for k in saved.files]
        obs = [{k: saved["obs." + k][t] for k in keys} for t in range(len(saved[saved.files[0]]))]
    for kind, model in (("safe", load_safe(base)), ("zip", RecurrentPPO.load(base + ".zip", device="cpu"))):
        state, start, actions = None, np.ones(1, dtype=bool), []
        for o in obs:
            action, state = model.predict(o, state=state, episode_start=start, deterministic=True)
            start = np.zeros(1, dtype=bool)
            actions.append(action.tolist())
        out[base + ":" + kind] = {"actions": actions, "h": state[0].tolist(), "c": state[1].tolist()}
print(json.dumps(out))
"""


def _rollout(model: RecurrentPPO, obs: list) -> dict[str, Any]:
    """Deterministic actions over ``obs`` (T observations of one env) and the final ``(h, c)``."""
    state, start, actions = None, np.ones(1, dtype=bool), []
    for o in obs:
        action, state = model.predict(o, state=state, episode_start=start, deterministic=True)
        start = np.zeros(1, dtype=bool)
        actions.append(action.tolist())
    return {"actions": actions, "h": state[0].tolist(), "c": state[1].tolist()}


def _observations(env, steps: int = STEPS) -> list:
    """``steps`` observations of a one-env VecEnv (arrays or dicts of arrays), random actions."""
    obs = [env.reset()]
    for _ in range(steps - 1):
        obs.append(env.step(np.array([env.action_space.sample()]))[0])
    return obs


def _save_observations(path: str, obs: list) -> None:
    """Without pickle: ``obs`` stacked, or one stacked array per key of a Dict space."""
    if isinstance(obs[0], dict):
        np.savez(path, **{f"obs.{k}": np.stack([o[k] for o in obs]) for k in obs[0]})
    else:
        np.savez(path, obs=np.stack(obs))


def _train_and_save(tmp_path: Path, name: str, env, core: str, policy_kwargs: dict[str, Any]) -> tuple[str, dict]:
    """Learn 32 steps, save the zip and the weights-only copy, return the base path and the expected rollout."""
    kwargs = {"lstm_hidden_size": HIDDEN[core], **policy_kwargs}
    model = RecurrentPPO(POLICIES[core], env, policy_kwargs=kwargs, seed=0, device="cpu", **TINY)
    model.learn(32)
    base = str(tmp_path / name)
    model.save(base + ".zip")
    save_weights(model, base)
    obs = _observations(env)
    _save_observations(base + ".obs.npz", obs)
    return base, _rollout(model, obs)


def _check_fresh_process(expected: dict[str, dict]) -> None:
    """Load every saved model in one new interpreter; it must predict the same actions and states."""
    proc = subprocess.run([sys.executable, "-c", _LOADER, json.dumps(list(expected))], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for base, want in expected.items():
        for kind in ("safe", "zip"):
            got = loaded[f"{base}:{kind}"]
            assert got["actions"] == want["actions"], (base, kind)
            np.testing.assert_allclose(got["h"], want["h"], atol=1e-5, err_msg=f"{base} {kind}")
            np.testing.assert_allclose(got["c"], want["c"], atol=1e-5, err_msg=f"{base} {kind}")


def _vector_cases(core: str) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {
        "stack2": dict(n_lstm_layers=2),
        "stack3_critic": dict(n_lstm_layers=3, shared_lstm=False, enable_critic_lstm=True),
    }
    if core in ("lstm", "gru"):
        cases["lstm_kwargs"] = dict(n_lstm_layers=2, lstm_kwargs=dict(dropout=0.5, bias=False))
    return cases


@pytest.mark.parametrize("core", CORES)
def test_arguments_learn_save_load_predict(tmp_path, core):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    expected = {}
    for name, policy_kwargs in _vector_cases(core).items():
        base, rollout = _train_and_save(tmp_path, name, env, core, policy_kwargs)
        layers = policy_kwargs.get("n_lstm_layers", 1)
        assert np.asarray(rollout["h"]).shape == (layers, 1, HIDDEN[core])
        expected[base] = rollout
    env.close()
    _check_fresh_process(expected)


@pytest.mark.parametrize("core", CORES)
def test_stack_on_minigrid_tokens(tmp_path, core):
    """The MiniGrid path: the token encoder, RIM reading the token set, SRM its positioned tokens."""
    from rimrl.envs import make_env

    env = make_env("rimrl/Pickup-Train-v0", n_envs=1)
    policy_kwargs: dict[str, Any] = dict(n_lstm_layers=2)
    if core == "rim":
        policy_kwargs["core_input"] = "tokens"
    base, rollout = _train_and_save(tmp_path, "minigrid_stack2", env, core, policy_kwargs)
    env.close()
    assert np.asarray(rollout["h"]).shape == (2, 1, HIDDEN[core])
    _check_fresh_process({base: rollout})


def test_registered_core_stacks_and_refuses_lstm_kwargs():
    import toy_plugin  # noqa: F401  (registers core "toy")

    from rimrl.cores.stack import StackedCore
    from rimrl.policies import ModularRecurrentPolicy

    env = make_vec_env("CartPole-v1", n_envs=1)
    kwargs = dict(core=toy_plugin.TOY_CORE, lstm_hidden_size=8, n_lstm_layers=2, core_kwargs=dict(scale=0.5))
    policy = RecurrentPPO(ModularRecurrentPolicy, env, policy_kwargs=kwargs, device="cpu", **TINY).policy
    assert isinstance(policy.lstm_actor, StackedCore) and policy.lstm_actor.num_layers == 2
    assert [layer.scale for layer in policy.lstm_actor.layers] == [0.5, 0.5]
    out, (h, _) = policy.lstm_actor(torch.randn(3, 2, policy.lstm_actor.input_size))
    assert out.shape == (3, 2, 8) and h.shape == (2, 2, 8)
    with pytest.raises(ValueError, match="core_kwargs"):
        RecurrentPPO(ModularRecurrentPolicy, env, policy_kwargs=dict(core=toy_plugin.TOY_CORE, lstm_kwargs=dict(bias=False)),
                     device="cpu", **TINY)
    env.close()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_state_shape_and_gradient_reach_every_layer(core, layers):
    env = make_vec_env("CartPole-v1", n_envs=1)
    model = RecurrentPPO(POLICIES[core], env, policy_kwargs=dict(lstm_hidden_size=HIDDEN[core], n_lstm_layers=layers),
                         device="cpu", **TINY)
    env.close()
    policy = model.policy
    assert policy.lstm_hidden_state_shape == (layers, 1, HIDDEN[core])
    assert model._last_lstm_states.pi[0].shape == (layers, 1, HIDDEN[core])
    assert model.rollout_buffer.hidden_states_pi.shape == (TINY["n_steps"], layers, 1, HIDDEN[core])
    core_module = policy.lstm_actor
    seq_len, batch = 5, 3
    x = torch.randn(seq_len, batch, core_module.input_size)
    starts = torch.zeros(seq_len, batch)
    starts[2, 1] = 1.0  # a reset inside the sequence
    out, (h, c) = core_module(x, None, episode_starts=starts)
    assert out.shape == (seq_len, batch, HIDDEN[core])
    assert h.shape == c.shape == (layers, batch, HIDDEN[core])
    out.pow(2).sum().backward()
    if core in ("lstm", "gru"):
        per_layer = [[p for n, p in core_module.rnn.named_parameters() if n.endswith(f"_l{i}")] for i in range(layers)]
    elif layers == 1:
        per_layer = [list(core_module.parameters())]
    else:
        per_layer = [list(layer.parameters()) for layer in core_module.layers]
    for i, params in enumerate(per_layer):
        assert params and any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), f"layer {i} gets no gradient"


@pytest.mark.parametrize("core", ["lstm", "gru"])
def test_lstm_kwargs_reach_torch(core):
    env = make_vec_env("CartPole-v1", n_envs=1)
    kwargs = dict(lstm_hidden_size=16, n_lstm_layers=2, lstm_kwargs=dict(dropout=0.25, bias=False),
                  shared_lstm=False, enable_critic_lstm=True)
    policy = RecurrentPPO(POLICIES[core], env, policy_kwargs=kwargs, device="cpu", **TINY).policy
    env.close()
    for rnn in (policy.lstm_actor.rnn, policy.lstm_critic.rnn):
        assert (rnn.num_layers, rnn.dropout, rnn.bias) == (2, 0.25, False)
    assert policy._get_constructor_parameters()["lstm_kwargs"] == dict(dropout=0.25, bias=False)
    assert policy._get_constructor_parameters()["n_lstm_layers"] == 2


@pytest.mark.parametrize(
    "core, policy_kwargs, match",
    [
        ("rim", dict(lstm_kwargs=dict(dropout=0.5)), "core_kwargs"),
        ("srm", dict(lstm_kwargs=dict(dropout=0.5)), "core_kwargs"),
        ("lstm", dict(lstm_kwargs=dict(batch_first=True)), "batch_first"),
        ("gru", dict(lstm_kwargs=dict(bidirectional=True)), "bidirectional"),
        ("lstm", dict(lstm_kwargs=dict(not_an_arg=1)), "not_an_arg"),
        ("rim", dict(n_lstm_layers=0), "n_lstm_layers"),
        ("lstm", dict(shared_lstm=True, enable_critic_lstm=True), "exclusive"),
    ],
)
def test_arguments_a_core_cannot_take_raise_value_error(core, policy_kwargs, match):
    env = make_vec_env("CartPole-v1", n_envs=1)
    with pytest.raises(ValueError, match=match):
        RecurrentPPO(POLICIES[core], env, device="cpu", policy_kwargs=policy_kwargs, **TINY)
    env.close()


def _image_env():
    """A 44x44 one-channel image env (SB3's FakeImageEnv): NatureCNN's trunk gives a 2x2 map, so it is quick."""
    from stable_baselines3.common.envs import FakeImageEnv

    return make_vec_env(FakeImageEnv, n_envs=1, seed=0, env_kwargs=dict(screen_height=44, screen_width=44, n_channels=1))


@pytest.mark.parametrize("core", CORES)
def test_image_features_dim_and_naturecnn(tmp_path, core):
    from stable_baselines3.common.torch_layers import NatureCNN

    from rimrl.policies import AtariTokenEncoder

    env = _image_env()
    cases = {
        # CnnLstmPolicy-style: features_dim is the size of the vector the core reads.
        "features_dim": dict(features_extractor_kwargs=dict(features_dim=32)),
        "naturecnn": dict(features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=32)),
        "naturecnn_stack2": dict(features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=32),
                                 n_lstm_layers=2),
    }
    expected = {}
    for name, policy_kwargs in cases.items():
        base, rollout = _train_and_save(tmp_path, name, env, core, policy_kwargs)
        model = RecurrentPPO.load(base + ".zip", device="cpu")
        extractor = model.policy.features_extractor
        assert isinstance(extractor, NatureCNN if "naturecnn" in name else AtariTokenEncoder)
        assert model.policy.features_dim == 32 and model.policy.lstm_actor.input_size == 32
        expected[base] = rollout
    env.close()
    _check_fresh_process(expected)


def test_atari_encoder_features_dim_is_one_vector():
    from gymnasium import spaces

    from rimrl.policies import AtariTokenEncoder

    space = spaces.Box(0, 255, (4, 84, 84), dtype=np.uint8)
    encoder = AtariTokenEncoder(space, features_dim=48)
    assert (encoder.features_dim, encoder.num_tokens, encoder.token_dim) == (48, 1, 48)
    assert encoder(torch.rand(2, 4, 84, 84)).shape == (2, 48)
    assert AtariTokenEncoder(space).features_dim == 49 * 64  # default: one token per cell, as before
    with pytest.raises(ValueError, match="features_dim"):
        AtariTokenEncoder(space, features_dim=0)


def test_policy_names_work_as_strings_after_import_rimrl(tmp_path: Path) -> None:
    """``RecurrentPPO("RIMPolicy", env)`` through SB3's ``policy_aliases``; sb3-contrib's names unchanged."""
    import sb3_contrib.ppo_recurrent.policies as contrib_policies

    import rimrl  # noqa: F401  (registers the names)
    from rimrl.policies import POLICY_ALIASES

    assert RecurrentPPO.policy_aliases["MlpLstmPolicy"] is contrib_policies.MlpLstmPolicy
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    for name, policy_class in POLICY_ALIASES.items():
        kwargs = {"core": "gru"} if name == "ModularRecurrentPolicy" else {}
        model = RecurrentPPO(name, env, seed=0, policy_kwargs=dict(lstm_hidden_size=24, **kwargs), **TINY)
        assert type(model.policy) is policy_class
    model.learn(32)
    model.save(tmp_path / "named")
    assert type(RecurrentPPO.load(tmp_path / "named.zip").policy) is policy_class
    env.close()
