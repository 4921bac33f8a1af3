"""PPO's options: learning-rate annealing (CleanRL's anneal_lr: the schedule, through optax,
and its place in rl.train) and advantages recomputed with the current critic, before each
epoch or per minibatch of whole segments (brax's)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorefn import rl
from scorefn.rl import defaults, ppo


def _config(**overrides):
    # 1 env × 4 steps in minibatches of 4, 2 epochs: 2 optimiser steps per update
    fields = dict(num_envs=1, num_steps=4, minibatch_size=4, num_epochs=2, learning_rate=0.1,
                  anneal_lr=True, total_updates=3)
    return ppo.Config(**{**fields, **overrides})


def test_the_learning_rate_falls_linearly_per_update_to_zero():
    config = _config()
    assert ppo.optimizer_steps_per_update(config) == 2
    # Adam's step under a constant gradient is the learning rate itself (m̂/√v̂ = 1).
    optimizer = ppo.optimizer(config)
    params = {"w": jnp.zeros(())}
    state = optimizer.init(params)
    steps = []
    for _ in range(8):
        update, state = optimizer.update({"w": jnp.ones(())}, state, params)
        steps.append(-float(update["w"]))
    expected = 0.1 * np.array([1, 1, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(steps, expected, rtol=1e-4, atol=1e-9)
    # The twin: annealed per optimiser step instead of per update, as count / total steps.
    per_step = 0.1 * np.maximum(1 - np.arange(8) / 6, 0)
    assert not np.allclose(steps, per_step, rtol=1e-3)
    # Without anneal_lr the rate stays.
    assert ppo.learning_rate(_config(anneal_lr=False)) == 0.1


def test_annealing_needs_its_length_and_refuses_target_kl():
    with pytest.raises(ValueError, match="anneal_lr needs total_updates >= 1"):
        ppo.optimizer(_config(total_updates=0))
    with pytest.raises(ValueError, match="target_kl's early stop"):
        _config(target_kl=0.01)


def test_train_anneals_over_its_total_steps_and_a_resume_keeps_them(tmp_path):
    assert defaults.defaults("ppo", "Hopper-v5")["anneal_lr"] is True
    checkpoint = str(tmp_path / "run.ckpt")
    result = rl.train("CartPole-v1", "ppo", 0, 512, checkpoint=checkpoint, progress=False,
                      anneal_lr=True, num_epochs=1)
    # rl-zoo's CartPole PPO: 8 envs × 32 steps, so 512 steps are 2 updates
    assert result.config.total_updates == 2
    with pytest.raises(ValueError, match=r"total_updates=2, now 4"):
        rl.train("CartPole-v1", "ppo", 0, 1024, checkpoint=checkpoint, resume=True,
                 progress=False, anneal_lr=True, num_epochs=1)


def test_recomputed_advantages_use_the_current_critic_and_the_kept_bootstraps():
    """``recompute_advantages``: GAE under the critic now. Under the rollout's own critic it
    is the rollout's GAE; under another, V(s_t) and V(s_{t+1}) within an episode are the new
    critic's, and where an episode was truncated (or the window ends) the recorded V(s')
    stays, its s' not being kept (twin: the new V(s_{t+1}) there gives other advantages)."""
    from scorefn.rl.actor_critic import rollout_data
    from scorefn.rl.returns import gae
    from scorefn.rl.rollout import jax_reset, jax_rollout

    env = rl.make("CartPole-v1")
    policy = rl.ActorCritic(env.action_space, hidden=(8,))
    params = policy.init(jax.random.key(0), env.obs_shape)
    carry = jax_reset(env, jax.random.key(1), 4)
    _, batch, _ = jax_rollout(env, policy, params, carry, jax.random.key(2), 64)
    truncated = batch.truncated.at[10, 0].set(True)  # a truncation, mid-episode
    batch = batch._replace(truncated=truncated, terminated=batch.terminated & ~truncated)
    config = ppo.Config(gamma=0.97, gae_lambda=0.9)
    assert bool(batch.terminated.any())

    same = ppo.fresh_advantages(policy, params["value"], batch, config)
    recorded = rollout_data(batch, config.gamma, config.gae_lambda)
    for name in ("advantage", "target"):
        np.testing.assert_allclose(same[name], recorded[name], rtol=1e-5, atol=1e-5)

    other = policy.init(jax.random.key(3), env.obs_shape)["value"]
    fresh = ppo.fresh_advantages(policy, other, batch, config)
    values = policy.value(other, batch.obs)
    following = jnp.concatenate([values[1:], values[-1:]])

    def expected(bootstrap_at_truncation):
        next_values = np.array(following)
        next_values[-1] = batch.next_value[-1]
        if bootstrap_at_truncation == "recorded":
            next_values[10, 0] = batch.next_value[10, 0]
        return gae(batch.reward, values, jnp.asarray(next_values), batch.terminated,
                   batch.truncated, config.gamma, config.gae_lambda)[0].reshape(-1)

    np.testing.assert_allclose(fresh["advantage"], expected("recorded"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(fresh["advantage"], expected("new"), rtol=1e-5, atol=1e-5)
    assert not np.allclose(fresh["advantage"], recorded["advantage"], atol=1e-3)


def test_ppo_with_recomputed_advantages_trains_otherwise_from_its_second_epoch():
    base = dict(seed=0, total_steps=512, progress=False, num_epochs=2)
    plain = rl.train("CartPole-v1", "ppo", **base)
    fresh = rl.train("CartPole-v1", "ppo", recompute_advantages=True, **base)
    assert fresh.config.recompute_advantages and np.isfinite(fresh.history[-1]["eval_mean"])
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(plain.params),
                                                     jax.tree.leaves(fresh.params)))
    first_epoch = dict(base, num_epochs=1)  # one epoch: the rollout's critic, the same update
    for a, b in zip(jax.tree.leaves(rl.train("CartPole-v1", "ppo", **first_epoch).params),
                    jax.tree.leaves(rl.train("CartPole-v1", "ppo", recompute_advantages=True,
                                             **first_epoch).params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _cut(x, horizon, num_envs):
    """(T·N,) in time-major order → (K·N, H), segment k of environment n at row k·N + n."""
    x = np.asarray(x).reshape(-1, horizon, num_envs)
    return x.transpose(0, 2, 1).reshape(-1, horizon)


def test_per_minibatch_advantages_are_the_truncated_gae_under_the_critic_being_trained():
    """With ``gae_horizon`` H, ``recompute_advantages`` computes GAE per segment from the
    loss's own values: the same as the truncated GAE of the whole rollout under that critic
    (``fresh_advantages``), cut into segments; truncations, mid-segment and at a segment's
    end, keep the recorded V(s'). Twin: bootstrapping every segment's end from the recorded
    V(s'), the rollout's critic, gives other advantages."""
    from scorefn.rl.actor_critic import rollout_data
    from scorefn.rl.rollout import jax_reset, jax_rollout

    env = rl.make("CartPole-v1")
    policy = rl.ActorCritic(env.action_space, hidden=(8,))
    params = policy.init(jax.random.key(0), env.obs_shape)
    steps, num_envs, horizon = 64, 4, 8
    _, batch, _ = jax_rollout(env, policy, params, jax_reset(env, jax.random.key(1), num_envs),
                              jax.random.key(2), steps)
    truncated = batch.truncated.at[10, 0].set(True).at[15, 1].set(True)
    batch = batch._replace(truncated=truncated, terminated=batch.terminated & ~truncated)
    assert bool(batch.terminated.any())
    config = ppo.Config(num_envs=num_envs, num_steps=steps, minibatch_size=32, gamma=0.97,
                        gae_lambda=0.9, gae_horizon=horizon, recompute_advantages=True)
    data = ppo.segments(batch, horizon)
    assert data["obs"].shape == (steps // horizon * num_envs, horizon) + env.obs_shape
    assert int(data["end_kept"].sum()) == (steps // horizon - 1) * num_envs

    def per_segment(value_params, data=data):
        return ppo.segment_advantages(policy, value_params,
                                      policy.value(value_params, data["obs"]), data, config)

    # the rollout's critic: the rollout's truncated GAE
    advantage, target = per_segment(params["value"])
    recorded = rollout_data(batch, config.gamma, config.gae_lambda, horizon)
    np.testing.assert_allclose(advantage, _cut(recorded["advantage"], horizon, num_envs),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target, _cut(recorded["target"], horizon, num_envs),
                               rtol=1e-5, atol=1e-5)
    # another critic: the rollout's GAE under it
    other = policy.init(jax.random.key(3), env.obs_shape)["value"]
    advantage, target = per_segment(other)
    fresh = ppo.fresh_advantages(policy, other, batch, config)
    np.testing.assert_allclose(advantage, _cut(fresh["advantage"], horizon, num_envs),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(target, _cut(fresh["target"], horizon, num_envs),
                               rtol=1e-5, atol=1e-5)
    stale_ends, _ = per_segment(other, {**data, "end_kept": jnp.zeros_like(data["end_kept"])})
    assert not np.allclose(stale_ends, advantage, atol=1e-3)


def test_ppo_with_per_minibatch_advantages_is_the_plain_update_in_one_full_epoch():
    """One epoch on the whole batch: the critic is the rollout's throughout, so per-minibatch
    advantages give the update of the rollout's truncated GAE; from the second epoch on the
    critic has moved and the updates differ (twin)."""
    base = dict(seed=0, total_steps=256, progress=False, num_epochs=1, gae_horizon=8,
                minibatch_size=256)  # CartPole's 8 environments × 32 steps
    plain = rl.train("CartPole-v1", "ppo", **base)
    segmented = rl.train("CartPole-v1", "ppo", recompute_advantages=True, **base)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(segmented.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    two = dict(base, num_epochs=2)
    plain = rl.train("CartPole-v1", "ppo", **two)
    segmented = rl.train("CartPole-v1", "ppo", recompute_advantages=True, **two)
    assert np.isfinite(segmented.history[-1]["eval_mean"])
    assert not all(np.allclose(a, b, atol=1e-6) for a, b in zip(
        jax.tree.leaves(plain.params), jax.tree.leaves(segmented.params)))


def test_per_minibatch_advantages_need_whole_segments():
    with pytest.raises(ValueError, match=r"minibatch_size \(30\) must be multiples of gae_"):
        ppo.Config(num_steps=32, minibatch_size=30, gae_horizon=8, recompute_advantages=True)
    with pytest.raises(ValueError, match=r"num_steps \(30\)"):
        ppo.Config(num_steps=30, minibatch_size=32, gae_horizon=8, recompute_advantages=True)
    ppo.Config(num_steps=30, minibatch_size=32, gae_horizon=8)  # before each epoch: any sizes
