"""rimrl.jax (issue 17, items 2 and 4): a torch policy run through JAX, and the jitted PPO trainer.

A policy built as train.py builds it (MiniGrid preset, every core) gives the same action logits
and values in JAX on a rollout with episode starts; parameters written back from JAX reproduce
the JAX outputs in torch. ``python -m rimrl.jax.train`` trains a few rollouts, writes train.py's
run layout, and its model.zip loads with rimrl's loader and predicts; its periodic evaluations
(on every variant of the suite) are the files ``evaluate.py --curves`` reads. One small run is
shared by the tests that read it (JAX compile time dominates).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax", reason="rimrl.jax needs the jax extra: pip install 'rimrl[jax]'")
import jax.numpy as jnp  # noqa: E402

from rimrl.agents import load_agent, make_agent  # noqa: E402
from rimrl.envs import make_env  # noqa: E402
from rimrl.evaluation.curves import read_run_evaluations  # noqa: E402
from rimrl.jax.policy import load_policy_into_torch, policy_from_torch  # noqa: E402
from rimrl.jax.train import main  # noqa: E402

ENV = "rimrl/Pickup-Train-v0"
T, B = 24, 4


def _rollout() -> tuple[dict[str, np.ndarray], np.ndarray]:
    env = make_env(ENV, n_envs=B, seed=0)
    rng = np.random.default_rng(0)
    obs, start, steps, starts = env.reset(), np.ones(B), [], []
    for _ in range(T):
        steps.append(obs)
        starts.append(start)
        obs, _, done, _ = env.step(rng.choice(4, size=B, p=[0.2, 0.2, 0.3, 0.3]))  # pick-ups end episodes
        start = done.astype(np.float32)
    env.close()
    assert np.stack(starts)[1:].any()  # an episode start inside the sequence
    return {k: np.stack([o[k] for o in steps]) for k in steps[0]}, np.stack(starts).astype(np.float32)


def _torch_outputs(policy, batch, starts) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        flat = {k: torch.as_tensor(v.reshape(T * B, *v.shape[2:])).float() for k, v in batch.items()}
        features = policy.extract_features(flat).reshape(T, B, -1)
        latent, _ = policy.lstm_actor(features, None, episode_starts=torch.as_tensor(starts))
        logits = policy.action_net(policy.mlp_extractor.forward_actor(latent))
        values = policy.value_net(policy.mlp_extractor.forward_critic(latent))[..., 0]
    return logits.numpy(), values.numpy()


@pytest.mark.parametrize("core", ["lstm", "gru", "rim", "srm"])
def test_a_torch_policy_runs_the_same_in_jax_and_back(core: str) -> None:
    torch.set_num_threads(1)
    batch, starts = _rollout()
    env = make_env(ENV, n_envs=1)
    policy = make_agent(env, core=core, seed=0).policy.eval()
    logits, values = _torch_outputs(policy, batch, starts)
    jax_policy, params = policy_from_torch(policy)
    j_logits, j_values, _ = jax.jit(jax_policy.apply)(params, {k: jnp.asarray(v) for k, v in batch.items()}, None,
                                                      jnp.asarray(starts))
    np.testing.assert_allclose(np.asarray(j_logits), logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(j_values), values, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(j_logits).argmax(-1), logits.argmax(-1))

    changed = jax.tree_util.tree_map(lambda a: a * 0.9 + 0.01 if a.dtype == jnp.float32 else a, params)
    if core == "srm":  # fixed token positions are not parameters to change
        changed["core"]["token_positions"] = params["core"]["token_positions"]
    other = load_policy_into_torch(jax_policy, changed, make_agent(env, core=core, seed=1).policy.eval())
    j_logits, j_values, _ = jax_policy.apply(changed, {k: jnp.asarray(v) for k, v in batch.items()}, None,
                                             jnp.asarray(starts))
    logits, values = _torch_outputs(other, batch, starts)
    np.testing.assert_allclose(np.asarray(j_logits), logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(j_values), values, rtol=0, atol=1e-5)
    env.close()


#: Two rollouts of 2 envs x 128 steps, an evaluation after each (4 episodes per variant).
RUN_ARGV = ["--core", "rim", "--seed", "3", "-n", "512", "--n-envs", "2", "--eval-freq", "256",
            "--eval-episodes", "4", "-q"]
VARIANTS = ["train", "more", "novel", "more+novel"]


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """``(run directory, argv)`` of one small ``python -m rimrl.jax.train`` run."""
    folder = tmp_path_factory.mktemp("jax-run")
    argv = [*RUN_ARGV, "-f", str(folder)]
    assert main(argv) == 0
    return folder / "rimrl-Pickup-Train-v0" / "rim" / "seed3", argv


def test_jax_training_writes_a_run_that_torch_loads(jax_run) -> None:
    run, argv = jax_run
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["num_timesteps"] == 512 and metrics["backend"] == "jax" and metrics["episodes"] > 0
    rows = (run / "monitor" / "session0.monitor.csv").read_text().splitlines()
    assert rows[1] == "r,l,t,success" and len(rows) - 2 == metrics["episodes"]
    model = load_agent(run, device="cpu")
    initial = make_agent(make_env(ENV, n_envs=1), core="rim", seed=3).policy
    moved = [not torch.equal(a, b) for a, b in zip(model.policy.parameters(), initial.parameters(), strict=True)]
    assert any(moved)  # PPO changed the parameters
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())
    env = make_env(ENV, n_envs=2, seed=1)
    action, state = model.predict(env.reset(), state=None, episode_start=np.ones(2), deterministic=True)
    assert action.shape == (2,) and state[0].shape == (1, 2, 192)
    assert main(argv) == 2  # a model is there: refused without --overwrite


def test_jax_training_evaluates_every_variant_periodically(jax_run) -> None:
    """After each update that crosses --eval-freq and at the end, on the training variant
    (evaluations.npz) and by default every other variant (evaluations_<variant>.npz)."""
    from rimrl.agents.training import EvalHistory
    from rimrl.experiments.io import read_yaml

    run, _ = jax_run
    assert sorted(p.name for p in run.glob("evaluations*.npz")) == [
        "evaluations.npz", "evaluations_more+novel.npz", "evaluations_more.npz", "evaluations_novel.npz"]
    for path in run.glob("evaluations*.npz"):
        history = EvalHistory(path)  # SB3's layout, as train.py writes it
        assert history.timesteps == [256, 512]
        assert [len(row) for row in (*history.results, *history.lengths, *history.successes)] == [4] * 6
        assert all(1 <= length <= 128 for row in history.lengths for length in row)
    evaluations = read_run_evaluations(run)
    assert list(evaluations.series) == VARIANTS and evaluations.core == "rim" and evaluations.seed == 3
    assert all(list(series.steps) == [256, 512] for series in evaluations.series.values())
    config = read_yaml(run / "config.yml")
    assert (config["eval_freq"], config["eval_episodes"], config["eval_deterministic"]) == (256, 4, False)
    assert config["eval_variants"] == VARIANTS[1:]
    assert "--eval-variants more novel more+novel" in config["command"]
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert list(metrics["eval_success_rates"]) == VARIANTS and metrics["n_episodes"] == 4
    assert metrics["success_rate"] == evaluations.series["train"].success_rate[-1]
    assert metrics["eval_s"] > 0 and metrics["steps_per_s_after_compile"] > 0


def test_eval_variants_mean_what_train_py_means() -> None:
    """train.py's names and ``all``; the JAX trainer's default (None) is all, ``none`` is none."""
    from rimrl.jax.train import resolve_variants

    everything = {"more": "rimrl/Pickup-More-v0", "novel": "rimrl/Pickup-Novel-v0",
                  "more+novel": "rimrl/Pickup-MoreNovel-v0"}
    assert resolve_variants(ENV, None) == resolve_variants(ENV, ["all"]) == everything
    assert resolve_variants(ENV, ["none"]) == resolve_variants(ENV, []) == {}
    assert resolve_variants("rimrl/PickupInstructed-Novel-v0", ["novel", "train"]) == {
        "novel": "rimrl/PickupInstructed-Novel-v0", "train": "rimrl/PickupInstructed-Train-v0"}
    with pytest.raises(ValueError, match="unknown variant 'none'"):
        resolve_variants(ENV, ["none", "more"])


def test_bad_arguments_are_refused_before_anything_is_made(tmp_path: Path, capsys) -> None:
    assert main(["--env", "CartPole-v1", "-f", str(tmp_path), "-q"]) == 2
    assert main(["-n", "10", "-f", str(tmp_path), "-q"]) == 2
    assert "distractor suites only" in capsys.readouterr().err
    assert main(["--eval-variants", "bogus", "-f", str(tmp_path), "-q"]) == 2
    assert "unknown variant 'bogus'" in capsys.readouterr().err
    for bad in (["--eval-variants", "all", "more"], ["--eval-freq", "-1"], ["--eval-episodes", "0"]):
        assert main([*bad, "-f", str(tmp_path), "-q"]) == 2
    assert not any(tmp_path.iterdir())


def test_the_study_trains_with_the_jax_backend(tmp_path: Path, monkeypatch) -> None:
    """``benchmarks/study.py --backend jax``: JAX training, then the study's own evaluation (torch,
    the gymnasium suite) and tables; train.py-only options are refused."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from benchmarks import study

    out = tmp_path / "jax-study"
    argv = ["--backend", "jax", "--cores", "lstm", "--seeds", "0", "-n", "1024", "--episodes", "2",
            "--eval-n-envs", "2", "--reps", "20", "--workers", "1", "-q", "--out", str(out)]
    assert study.main(argv) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["settings"]["backend"] == "jax"
    config = (out / "rimrl-Pickup-Train-v0" / "lstm" / "seed0" / "config.yml").read_text()
    assert "backend: jax" in config
    assert "(trained in JAX)" in (out / "results.md").read_text()
    with pytest.raises(SystemExit) as refused:
        study.main([*argv, "--save-freq", "512"])
    assert refused.value.code == 2


def test_what_the_jax_side_cannot_express_is_refused() -> None:
    from rimrl.jax.ppo import PPOSettings
    from rimrl.jax.train import ppo_settings

    with pytest.raises(ValueError, match="whole sequences"):
        PPOSettings(n_envs=8, n_steps=128, batch_size=200)
    with pytest.raises(ValueError, match="schedule"):
        ppo_settings("CartPoleNoVel-v1", "lstm")  # its preset decays the learning rate
    env = make_env(ENV, n_envs=1)
    separate = make_agent(env, core="gru", seed=0, **{"policy_kwargs.shared_lstm": False,
                                                      "policy_kwargs.enable_critic_lstm": True})
    with pytest.raises(ValueError, match="one shared core"):
        policy_from_torch(separate.policy)
    cartpole = make_agent(make_env("CartPole-v1", n_envs=1), core="gru", seed=0)
    with pytest.raises(ValueError, match="MiniGrid dict observation"):
        policy_from_torch(cartpole.policy)
    env.close()


@pytest.mark.parametrize("sequence_length", [None, 8])
def test_training_sequences_replay_the_rollout_exactly(sequence_length: int | None) -> None:
    """Whole columns or sequences of 8 steps, each replayed from the core state the rollout recorded
    at its first step: with a zero learning rate the replayed log-probabilities are the rollout's
    (ratio 1, no clipping), although episodes cross the sequence boundaries (a wrong start state
    would change a RIM's outputs there)."""
    from rimrl.jax.envs import make_pickup
    from rimrl.jax.ppo import PPOSettings, init_runner, make_update

    policy, params = policy_from_torch(make_agent(make_env(ENV, n_envs=1), core="rim", seed=0).policy, "index")
    settings = PPOSettings(n_envs=4, n_steps=32, batch_size=32, n_epochs=1, learning_rate=0.0,
                           sequence_length=sequence_length)
    assert settings.sequences_per_minibatch == (1 if sequence_length is None else 4)
    env = make_pickup(ENV)
    runner = init_runner(policy, params, env, settings, jax.random.PRNGKey(0))
    _, metrics = make_update(policy, env, settings)(runner)
    assert not np.asarray(metrics["done"])[:-1].all(axis=0).any()  # episodes run on across step boundaries
    assert float(metrics["approx_kl"]) < 1e-8
    assert float(metrics["clip_fraction"]) == 0.0


def test_sequence_lengths_that_do_not_tile_the_rollout_are_refused() -> None:
    from rimrl.jax.ppo import PPOSettings

    with pytest.raises(ValueError, match="must divide n_steps"):
        PPOSettings(n_envs=8, n_steps=128, batch_size=256, sequence_length=48)
    with pytest.raises(ValueError, match="whole sequences"):
        PPOSettings(n_envs=8, n_steps=128, batch_size=200, sequence_length=8)
    assert PPOSettings(sequence_length=16).n_sequences == 8 * 128 // 16
