"""The training driver: determinism, resume, several seeds, logs, and clear errors."""

import json

import jax
import numpy as np
import pytest

from scorefn import rl

SMALL = dict(total_steps=4096, eval_every=1024, progress=False, num_envs=4, num_steps=64,
             num_epochs=2, minibatch_size=128)


def test_same_seed_same_learning_curve():
    a = rl.train("CartPole-v1", "ppo", seed=3, **SMALL)
    b = rl.train("CartPole-v1", "ppo", seed=3, **SMALL)
    assert [r["eval_mean"] for r in a.history] == [r["eval_mean"] for r in b.history]
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    c = rl.train("CartPole-v1", "ppo", seed=4, **SMALL)
    assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.params),
                                                         jax.tree.leaves(c.params)))


def test_resume_equals_uninterrupted(tmp_path):
    path = str(tmp_path / "run.pkl")
    full = rl.train("CartPole-v1", "ppo", seed=1, **SMALL)
    rl.train("CartPole-v1", "ppo", seed=1, checkpoint=path, **{**SMALL, "total_steps": 2048})
    resumed = rl.train("CartPole-v1", "ppo", seed=1, checkpoint=path, resume=True, **SMALL)
    assert [r["env_steps"] for r in resumed.history] == [r["env_steps"] for r in full.history]
    assert [r["eval_mean"] for r in resumed.history] == [r["eval_mean"] for r in full.history]
    for x, y in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
        np.testing.assert_array_equal(x, y)
    loaded = rl.load_checkpoint(path)
    assert rl.evaluate(loaded, episodes=5) == rl.evaluate("CartPole-v1", loaded.params,
                                                          policy=loaded.policy, episodes=5)
    with pytest.raises(ValueError, match="resume it with the same"):
        rl.train("CartPole-v1", "a2c", seed=1, checkpoint=path, resume=True, total_steps=4096,
                 progress=False)


def test_several_seeds_train_at_once():
    result = rl.train("CartPole-v1", "ppo", seeds=[0, 1, 2], **SMALL)
    assert len(result.history[-1]["eval_mean"]) == 3
    assert jax.tree.leaves(result.params)[0].shape[0] == 3
    single = rl.train("CartPole-v1", "ppo", seed=1, **SMALL)
    # seed 1 inside the batch learns what seed 1 alone learns (up to float reassociation)
    np.testing.assert_allclose(result.history[-1]["eval_mean"][1], single.history[-1]["eval_mean"],
                               rtol=0.2)


def test_logs_csv_jsonl_and_learning_curve(tmp_path):
    rl.train("CartPole-v1", "a2c", seed=0, total_steps=2000, eval_every=400, progress=False,
             log_dir=str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {"env_steps", "wall_s", "eval_mean", "value_loss"} <= set(rows[0])
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 6
    assert (tmp_path / "learning_curve.png").stat().st_size > 10_000


def test_unknown_env_and_algorithm_list_the_known_ones():
    with pytest.raises(ValueError, match="unknown environment 'CartPole-v9'.*CartPole-v1"):
        rl.train("CartPole-v9", "ppo", progress=False)
    with pytest.raises(ValueError, match="unknown algorithm 'dqn'; known: a2c, npg, ppo, reinforce, trpo"):
        rl.train("CartPole-v1", "dqn", progress=False)
    with pytest.raises(ValueError, match=r"unknown hyperparameter\(s\) \['lr'\]"):
        rl.train("CartPole-v1", "ppo", lr=1e-3, progress=False)


def test_action_space_policy_mismatch():
    cartpole = rl.make("CartPole-v1")
    discrete_policy = rl.ActorCritic(cartpole.action_space)
    params = discrete_policy.init(jax.random.key(0), (3,))  # Pendulum's observation shape
    message = r"actions have shape \(\) but Pendulum-v1's action space needs \(1,\)"
    with pytest.raises(ValueError, match=message):
        rl.evaluate("Pendulum-v1", params, policy=discrete_policy)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    path = str(tmp_path / "run.pkl")
    rl.train("CartPole-v1", "a2c", seed=0, total_steps=800, eval_every=400, progress=False,
             checkpoint=path)
    with pytest.raises(FloatingPointError, match="NaN/inf.*last good checkpoint.*800 env steps"):
        rl.train("CartPole-v1", "a2c", seed=0, total_steps=2000, eval_every=400, progress=False,
                 checkpoint=path, resume=True, learning_rate=float("nan"))
    assert rl.load_checkpoint(path).env_steps == 800
