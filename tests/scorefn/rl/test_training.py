"""The training driver: determinism, resume, several seeds, logs, and clear errors."""

import json
import os

import checkpoint_files
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rounding_bounds import tanh_mlp_error_bound

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
    path = str(tmp_path / "run.ckpt")
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
    # another learning rate would continue as a different run: refused, naming it
    with pytest.raises(ValueError, match=r"other hyperparameters \(learning_rate="):
        rl.train("CartPole-v1", "ppo", seed=1, checkpoint=path, resume=True,
                 **{**SMALL, "learning_rate": 1e-2})


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
    path = str(tmp_path / "run.ckpt")
    rl.train("CartPole-v1", "a2c", seed=0, total_steps=800, eval_every=400, progress=False,
             checkpoint=path)
    # A resume refuses other hyperparameters: record the diverging learning rate in the
    # checkpoint, so that the resumed run is accepted and diverges in its first chunk.
    checkpoint_files.edit(path, lambda payload: payload["settings"].update(
        learning_rate=1e38))  # the hyperparameters
    with pytest.raises(FloatingPointError, match="NaN/inf after 1,200 env steps.*last good "
                                                 "checkpoint.*800 env steps"):
        rl.train("CartPole-v1", "a2c", seed=0, total_steps=2000, eval_every=400, progress=False,
                 checkpoint=path, resume=True, learning_rate=1e38)
    assert rl.load_checkpoint(path).env_steps == 800


@pytest.mark.parametrize("backend", ["gymnax", "gymnasium"])
def test_next_value_is_the_value_of_the_observation_before_the_reset(backend):
    """Inside an episode V(s'_t) = V(s_{t+1}); at an episode end s_{t+1} is the reset
    observation, and next_value must be the value of the final one instead."""
    from scorefn.rl.rollout import GymnasiumRunner, jax_reset, jax_rollout

    env = rl.make("CartPole-v1", backend, **({"num_envs": 2} if backend == "gymnasium" else {}))
    policy = rl.ActorCritic(env.action_space)
    params = policy.init(jax.random.key(0), env.obs_shape)
    if backend == "gymnax":
        _, batch, _ = jax_rollout(env, policy, params, jax_reset(env, jax.random.key(1), 2),
                                  jax.random.key(2), 200)
    else:
        batch = GymnasiumRunner(env, policy).rollout(params, jax.random.key(2), 200)
    done = np.asarray(batch.terminated | batch.truncated)[:-1]
    following = np.asarray(batch.value)[1:]
    next_value = np.asarray(batch.next_value)[:-1]
    assert done.sum() >= 4  # a random policy ends several episodes in 200 steps
    # Two programs compute V(s_{t+1}); on a GPU one may multiply in TF32 and the other not:
    # each is within the forward-error bound of the exact value at the precision measured.
    obs = np.asarray(batch.obs)[1:]
    bound = 2 * tanh_mlp_error_bound(params["value"], obs[~done])[..., 0]
    assert np.all(np.abs(next_value[~done] - following[~done]) <= bound)
    # not vacuous: an off-by-one next_value, V(s_t), breaks the bound
    assert np.any(np.abs(np.asarray(batch.value)[:-1][~done] - following[~done]) > bound)
    assert np.all(np.abs(next_value[done] - following[done]) > 1e-6)
    recomputed = policy.value(params["value"], jnp.asarray(obs[~done]))
    assert np.all(np.abs(next_value[~done] - recomputed) <= bound)


class _Counter:
    """A JAX environment whose observation counts the steps, (t / 10, 1); each episode is
    truncated when it reaches t = 3 (its final observation (0.3, 1)), never terminated."""

    backend, id, obs_shape, max_episode_steps = "gymnax", "counter", (2,), 3

    def __init__(self):
        from scorefn.rl.envs import Space

        self.action_space = Space(True, num_actions=2)

    def reset(self, key):
        return jnp.array([0.0, 1.0]), jnp.zeros((), jnp.int32)

    def step(self, key, state, action):
        t = state + 1
        final = jnp.stack([t / 10.0, 1.0])
        truncated = t >= 3
        obs = jnp.where(truncated, jnp.array([0.0, 1.0]), final)
        return obs, jnp.where(truncated, 0, t), jnp.float32(1.0), jnp.array(False), truncated, final


def test_a_truncated_step_records_the_value_of_its_final_observation():
    """Truncated: next_value is V of the observation reached, (0.3, 1), not of the reset
    observation that follows it (twin), nor 0; the window's last step continues from s_T."""
    from scorefn.rl.rollout import jax_reset, jax_rollout

    env = _Counter()
    policy = rl.ActorCritic(env.action_space, hidden=(8,))
    params = policy.init(jax.random.key(0), env.obs_shape)
    carry, batch, _ = jax_rollout(env, policy, params, jax_reset(env, jax.random.key(1), 2),
                                  jax.random.key(2), 7)
    truncated = np.asarray(batch.truncated)
    assert truncated[[2, 5]].all() and truncated.sum() == 4
    final, reset = (policy.value(params["value"], jnp.array([[x, 1.0]]))[0] for x in (0.3, 0.0))
    next_value = np.asarray(batch.next_value)
    np.testing.assert_allclose(next_value[truncated], float(final), rtol=1e-5)
    assert abs(float(final) - float(reset)) > 1e-4
    np.testing.assert_allclose(next_value[-1], policy.value(params["value"], carry.obs),
                               rtol=1e-5)


def test_ppo_options_value_clipping_and_kl_early_stop():
    stopped = rl.train("CartPole-v1", "ppo", seed=0, target_kl=1e-9, clip_value=0.2, **SMALL)
    assert all(row["early_stopped"] == 1.0 for row in stopped.history)
    free = rl.train("CartPole-v1", "ppo", seed=0, **SMALL)
    assert all(row["early_stopped"] == 0.0 for row in free.history)


@pytest.mark.parametrize("backend,std,transform", [("gymnax", True, "exp"),
                                                    ("gymnasium", False, "softplus")])
def test_continuous_actions_on_both_paths(backend, std, transform):
    result = rl.train("Pendulum-v1", "ppo", seed=0, total_steps=2048, eval_every=2048,
                      backend=backend, progress=False, num_envs=2, num_steps=512,
                      num_epochs=1, state_dependent_std=std, std_transform=transform)
    assert np.isfinite(result.eval_mean) and -2000 < result.eval_mean < 0
    free = {"exp": "log_std", "softplus": "std_param"}[transform]
    assert (free in result.params["policy"]) == (not std)


def test_gymnasium_run_checkpoints_resumes_and_keeps_the_best(tmp_path):
    """A gymnasium run resumes its learner from the checkpoint (the finished evaluations kept,
    the step count continued), keeps the best evaluation's state beside the last, and
    refuses other hyperparameters or a gymnax checkpoint."""
    ckpt = str(tmp_path / "c.ckpt")
    options = dict(backend="gymnasium", eval_every=1024, eval_episodes=3, progress=False,
                   checkpoint=ckpt, num_epochs=2)
    first = rl.train("CartPole-v1", "ppo", seed=0, total_steps=2048, **options)
    assert len(first.history) == 2 and os.path.exists(rl.best_checkpoint_path(ckpt))
    resumed = rl.train("CartPole-v1", "ppo", seed=0, total_steps=4096, resume=True, **options)
    assert resumed.history[:2] == first.history
    assert [row["env_steps"] for row in resumed.history] == [1024, 2048, 3072, 4096]
    best = rl.load_checkpoint(rl.best_checkpoint_path(ckpt))
    means = [row["eval_mean"] for row in resumed.history]
    assert best.history[-1]["eval_mean"] == max(means)
    assert np.isfinite(rl.evaluate(rl.load_checkpoint(ckpt), episodes=3, backend="gymnasium"))
    with pytest.raises(ValueError, match="other hyperparameters .*num_epochs=2, now 3"):
        rl.train("CartPole-v1", "ppo", seed=0, total_steps=6144, resume=True,
                 **{**options, "num_epochs": 3})
    gymnax_ckpt = str(tmp_path / "g.ckpt")
    rl.train("CartPole-v1", "ppo", seed=0, total_steps=1024, eval_every=1024, progress=False,
             checkpoint=gymnax_ckpt, num_epochs=2)
    with pytest.raises(ValueError, match="holds a gymnax run; this run uses gymnasium"):
        rl.train("CartPole-v1", "ppo", seed=0, total_steps=2048, resume=True,
                 **{**options, "checkpoint": gymnax_ckpt})


def test_backend_resolution():
    assert rl.resolve_backend("CartPole-v1") == "gymnax"
    assert rl.resolve_backend("CliffWalking-v1") == "gymnasium"
    assert rl.resolve_backend("CartPole-v1", "gymnasium") == "gymnasium"
    with pytest.raises(ValueError, match="backend must be"):
        rl.resolve_backend("CartPole-v1", "torch")
    assert rl.best_checkpoint_path("runs/x/checkpoint.ckpt") == "runs/x/checkpoint.best.ckpt"




def test_a_compiled_run_normalises_observations_and_checkpoints_the_statistics(tmp_path):
    """normalize_observations on gymnax (compiled): the statistics take in every rollout's
    observations, travel in the checkpoint (one set per seed), are what evaluation reads, and
    a resume continues them: the same run as uninterrupted."""
    path = str(tmp_path / "run.ckpt")
    options = dict(SMALL, seeds=[0, 1], normalize_observations=True)
    full = rl.train("CartPole-v1", "ppo", **options)
    stats = full.observation_stats
    assert stats["mean"].shape == (2, 4)  # a set per seed
    np.testing.assert_allclose(stats["count"], 4096 + 1e-4)  # each rollout's observations
    assert np.all(np.abs(stats["mean"]) < 1) and np.all(stats["var"] > 0)
    rl.train("CartPole-v1", "ppo", checkpoint=path, **{**options, "total_steps": 2048})
    resumed = rl.train("CartPole-v1", "ppo", checkpoint=path, resume=True, **options)
    assert [r["eval_mean"] for r in resumed.history] == [r["eval_mean"] for r in full.history]
    for name in ("mean", "var", "count"):
        np.testing.assert_array_equal(resumed.observation_stats[name], stats[name])
    loaded = rl.load_checkpoint(path, seed_index=1)
    np.testing.assert_array_equal(loaded.observation_stats["mean"], stats["mean"][1])
    # evaluation reads the statistics: shifted ones make the same policy act otherwise
    shifted = {**loaded.observation_stats, "mean": loaded.observation_stats["mean"] + 3.0}
    assert rl.evaluate(loaded, episodes=5) != rl.evaluate(
        "CartPole-v1", loaded.params, policy=loaded.policy, episodes=5, observation_stats=shifted)
